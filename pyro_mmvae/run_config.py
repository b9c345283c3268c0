"""What a training run is asked for (:class:`TrainConfig`) and how it is resolved against
the model's settings and, when resuming, the checkpoint (:class:`RunHyper`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyro_mmvae.checkpoint import (
    CheckpointError,
    as_stored,
    check_checkpoint_matches,
    check_resume_settings,
)
from pyro_mmvae.engine import LR_SCHEDULES, check_precision, resolve_precision
from pyro_mmvae.engine.networks import DECODER_BATCHING, MEMORY_FORMATS
from pyro_mmvae.settings import GROUP_OF, MODALITIES_PREFIX, check_value
from pyro_mmvae.stages import Stage, as_stages, resolve_stages, stages_to_json


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss or a gradient became NaN or infinite)."""


@dataclass
class TrainConfig:
    """Settings of one training run; ``None`` takes the model preset's default.

    When resuming, ``None`` takes the value the checkpoint was trained with instead; a value
    that contradicts the checkpoint (another seed, batch size, model setting...) is an error.
    """

    model: str = "mmvae"
    dataset: str = "polymnist-mini"
    data_root: str | None = None
    preset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    num_particles: int | None = None
    estimator: str | None = None
    device: str = "auto"
    seed: int | None = None
    out: str | None = None
    resume: bool = False
    stages: Sequence[Any] | None = None
    #: Model settings of the zoo (``beta``, ``alpha``, ``latent_dim``, ...) over the preset.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Network precision: ``"32"``, ``"bf16"``, ``"16"`` or ``"auto"`` (bf16 where the device
    #: has bfloat16 matrix units, else 32; :func:`pyro_mmvae.engine.resolve_precision`). None:
    #: the checkpoint's when resuming, else ``"auto"``.
    precision: str | None = None
    #: ``torch.compile`` the networks.
    compile: bool = False
    #: ``constant``, ``cosine`` or ``linear`` (decay to 0 over the run), stepped per step.
    lr_schedule: str | None = None
    #: Clip the gradients' global 2-norm to this value.
    clip_grad: float | None = None
    #: ``auto`` (by device), ``stacked`` or ``split``: how decoders batch particles/strata.
    decoder_batching: str = "auto"
    #: ``auto`` (by device and network), ``contiguous`` or ``channels_last``: the layout of
    #: the convolution weights and activations (same arithmetic, different speed).
    memory_format: str = "auto"
    #: Write TensorBoard logs into ``RUN_DIR/tensorboard``.
    tensorboard: bool = False
    #: Replace a stale run-folder lock left by a killed run (never a live one).
    break_lock: bool = False
    #: Drop each observed modality of each row with this probability (train and test splits,
    #: seeded by the run's seed; a row keeps one modality), see ``dataset.with_missing``.
    missing_ratio: float | None = None

    def check(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        for name in ("epochs", "batch_size", "num_particles", "lr", "estimator"):
            if getattr(self, name) is not None:  # the settings' own checks and messages
                check_value(name, getattr(self, name))
        for name, value in self.settings.items():
            if name in GROUP_OF or str(name).startswith(MODALITIES_PREFIX):
                check_value(name, value)
        _check_positive("clip_grad", self.clip_grad, float)
        if self.precision is not None and str(self.precision).lower() != "auto":
            check_precision(self.precision)
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose "
                             f"one of {', '.join(LR_SCHEDULES)}")
        if self.decoder_batching not in ("auto", *DECODER_BATCHING):
            raise ValueError(f"unknown decoder batching {self.decoder_batching!r}; choose "
                             f"auto, {', '.join(DECODER_BATCHING)}")
        if self.memory_format not in ("auto", *MEMORY_FORMATS):
            raise ValueError(f"unknown memory format {self.memory_format!r}; choose "
                             f"auto, {', '.join(MEMORY_FORMATS)}")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.missing_ratio is not None:
            check_missing_ratio(self.missing_ratio)
        as_stages(self.stages)  # raises on a malformed schedule


def check_missing_ratio(value: Any) -> float:
    """``value`` as a missing ratio in [0, 1), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"missing_ratio must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any, kind: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    if not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass
class RunHyper:
    """Training hyperparameters after defaults, presets and the checkpoint are merged."""

    preset: str | None
    overrides: dict[str, Any]
    seed: int
    lr: float
    amsgrad: bool
    batch_size: int
    epochs: int
    precision: str
    lr_schedule: str
    clip_grad: float | None
    stages: tuple[Stage, ...] = ()
    missing_ratio: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``hyper`` entry."""
        return {"seed": self.seed, "lr": self.lr, "amsgrad": self.amsgrad,
                "batch_size": self.batch_size, "epochs": self.epochs,
                "precision": self.precision, "lr_schedule": self.lr_schedule,
                "clip_grad": self.clip_grad, "stages": stages_to_json(self.stages),
                "missing_ratio": self.missing_ratio}



#: Settings a resumed run must share with its checkpoint (``--resume`` with another value
#: would silently make the folder describe a different run).
_FIXED_ON_RESUME = ("seed", "batch_size", "precision", "lr_schedule", "clip_grad",
                    "missing_ratio")


def check_resume(config: TrainConfig, resumed: dict[str, Any]) -> None:
    """Raise CheckpointError if ``config`` asks for another model, dataset or setting than
    the run it resumes was trained with."""
    check_checkpoint_matches(resumed, model=config.model, dataset=config.dataset,
                             preset=config.preset)
    saved = {**(resumed.get("settings") or {}), **(resumed.get("hyper") or {})}
    requested = {key: getattr(config, key) for key in _FIXED_ON_RESUME
                 if getattr(config, key) is not None}
    requested.update(config.settings)
    requested.update({k: getattr(config, k) for k in ("num_particles", "estimator")
                      if getattr(config, k) is not None})
    check_resume_settings(saved, requested)


def check_resume_modalities(dataset: Any, saved: dict[str, Any] | None,
                            settings: Any) -> None:
    """Raise CheckpointError if a modality of ``dataset`` would be built otherwise than in the
    run being resumed (``modalities.<name>.likelihood``, ``.nets``, ``.likelihood_scale``,
    ``.vocab_size``, or a global setting that decides them).

    :func:`check_resume` compares the settings named on the command line with the saved ones
    by name; a per-modality override has no saved counterpart when the run used the automatic
    choice, so this compares what each modality resolves to
    (:func:`pyro_mmvae.zoo.modality_choice`) under the checkpoint's settings (``saved``) and
    under this run's (``settings``). A checkpoint without recorded settings is not checked.
    """
    if not saved:
        return
    from pyro_mmvae.zoo import modality_choice

    differ = []
    for name in dataset.modalities:
        old = modality_choice(dataset, name, saved)
        new = modality_choice(dataset, name, settings)
        for key in sorted(set(old) | set(new)):
            if as_stored(old.get(key)) != as_stored(new.get(key)):
                differ.append(f"modalities.{name}.{key} {old.get(key)!r} -> {new.get(key)!r}")
    if differ:
        raise CheckpointError(
            "--resume continues a run with its own modalities, but this command builds them "
            f"differently: {', '.join(differ)}; drop the --set modalities.* flags to resume "
            "the run as it was, or choose a new --out to start a new run with them")


def model_overrides(config: TrainConfig, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """The model settings of the run: the checkpoint's (when resuming), then ``settings``,
    ``num_particles`` and ``estimator`` of ``config``."""
    overrides = dict(resumed["overrides"]) if resumed else {}
    overrides.update(config.settings)
    for key in ("num_particles", "estimator"):
        value = getattr(config, key)
        if value is not None:
            overrides[key] = value
    return overrides


def _pick(config_value: Any, saved: dict[str, Any], key: str, default: Any) -> Any:
    if config_value is not None:
        return config_value
    return saved.get(key, default)


def resolve_hyper(config: TrainConfig, spec: Any, preset: str | None,
                   overrides: dict[str, Any], resumed: dict[str, Any] | None,
                   device: Any = "cpu") -> RunHyper:
    """Config value if given, else the checkpoint's (when resuming), else the preset default;
    precision ``"auto"`` resolved for ``device``."""
    base = dict(spec.train_defaults)
    if resumed:
        base.update(resumed["hyper"])
    missing = [k for k in ("lr", "amsgrad", "batch_size", "epochs") if k not in base]
    if missing:
        raise ValueError(f"model spec train_defaults lacks {', '.join(missing)}")
    epochs = int(_pick(config.epochs, base, "epochs", None))
    stages = as_stages(config.stages if config.stages is not None else base.get("stages"))
    return RunHyper(
        preset=preset,
        overrides=overrides,
        seed=int(_pick(config.seed, base, "seed", 0)),
        lr=float(_pick(config.lr, base, "lr", None)),
        amsgrad=bool(base["amsgrad"]),
        batch_size=int(_pick(config.batch_size, base, "batch_size", None)),
        epochs=epochs,
        # a checkpoint from before "auto" that names no precision was trained in 32
        precision=resolve_precision(_pick(config.precision, base, "precision",
                                          "32" if resumed else "auto"), device),
        lr_schedule=_pick(config.lr_schedule, base, "lr_schedule", "constant"),
        clip_grad=_pick(config.clip_grad, base, "clip_grad", None),
        stages=resolve_stages(stages, epochs),
        missing_ratio=check_missing_ratio(_pick(config.missing_ratio, base, "missing_ratio",
                                                0.0)),
    )
