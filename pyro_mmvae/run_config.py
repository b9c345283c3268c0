"""What a training run is asked for (:class:`TrainConfig`) and what it is, resolved once
(:class:`RunSpec`).

:func:`resolve_run` is the one place where a run's configuration is decided. Each value
comes from the first source that gives it::

    flag (TrainConfig field) | --set (TrainConfig.settings)     # two given: they must agree
      > the checkpoint, when resuming
      > preset > model-on-dataset > model > dataset > library defaults (pyro_mmvae.zoo)

and the result is validated completely (settings, seed, preset, stage patterns, a resumed
run's fixed settings, and sizes against the device's memory) **before** the trainer creates
any folder or file. :func:`pyro_mmvae.train.train` consumes the spec, ``summary.json`` records
it in full (``spec``), the checkpoint stores it (``hyper``), and ``--resume`` compares the
spec it resolves with the stored one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_mmvae.checkpoint import (
    CheckpointError,
    as_stored,
    check_checkpoint_matches,
    check_resume_settings,
)
from pyro_mmvae.engine import LR_SCHEDULES, check_precision, resolve_precision
from pyro_mmvae.engine.networks import DECODER_BATCHING, MEMORY_FORMATS
from pyro_mmvae.settings import GROUP_OF, GROUPS, MODALITIES_PREFIX, Settings, check_value
from pyro_mmvae.stages import (
    Stage,
    as_stages,
    check_patterns,
    resolve_stages,
    stages_to_json,
)

#: Seeds seed Python, NumPy and torch at once; NumPy takes ``0 <= seed < 2**32``.
SEED_LIMIT = 2**32
#: Training settings that also have a flag of their own (``TrainConfig`` field -> CLI flag):
#: giving both with different values is an error.
FLAG_SETTINGS: dict[str, str] = {
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "num_particles": "--num-particles", "estimator": "--estimator", "stages": "--stage",
}
#: Settings of the ``optim`` group: the spec holds them at its top level (resolved).
OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(GROUPS["optim"]))
#: Spec entries a resumed run may change: more epochs, another learning rate, where and how
#: fast it runs. Every other entry must equal the checkpoint's.
CHANGEABLE_ON_RESUME = ("epochs", "lr", "device", "out", "data_root", "compile",
                        "decoder_batching", "memory_format", "tensorboard",
                        "deterministic")
#: Settings that decide a model's size (named when a model cannot fit in memory).
SIZE_SETTINGS = ("latent_dim", "private_dim", "hidden", "joint_features", "modalities")
#: Bytes per fp32 value; a trained parameter keeps its value, gradient and Adam's two
#: moments (three with amsgrad).
FP32_BYTES = 4


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss or a gradient became NaN or infinite)."""


@dataclass
class TrainConfig:
    """Settings of one training run; ``None`` takes the model preset's default.

    When resuming, ``None`` takes the value the checkpoint was trained with instead; a value
    that contradicts the checkpoint (another seed, batch size, model setting...) is an error.
    """

    #: Model name of the zoo (``--model``), e.g. ``"mmvae"``, ``"mmvae_plus"``, ``"mopoe"``.
    model: str = "mmvae"
    #: Dataset name (``--dataset``): a registered one such as ``"polymnist"``, or
    #: ``"files:DIR"`` for your own files.
    dataset: str = "polymnist-mini"
    #: Folder of the dataset's files (``--data-root``); None: ``$PYRO_MMVAE_DATA_ROOT``,
    #: else the dataset's own default (the checkpoint's when resuming).
    data_root: str | None = None
    #: Preset name (``--preset``, :mod:`pyro_mmvae.presets`); None: the model's defaults
    #: (the checkpoint's preset when resuming).
    preset: str | None = None
    #: Passes over the training set (int > 0); None: the preset's or model's default.
    epochs: int | None = None
    #: Data points per optimiser step (int > 0); None: the default.
    batch_size: int | None = None
    #: Adam learning rate (float > 0); None: the default.
    lr: float | None = None
    #: K, latent samples per data point (int > 0); None: the default.
    num_particles: int | None = None
    #: ``"elbo"``, ``"iwae"`` or ``"dreg"``; None: the default.
    estimator: str | None = None
    #: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    device: str = "auto"
    #: Seed of every generator, an int in ``[0, 2**32)``; None: 0 (the checkpoint's when
    #: resuming).
    seed: int | None = None
    #: Run folder; None: ``runs/{model}-{dataset}-{timestamp}``.
    out: str | None = None
    #: Continue the run in ``out`` from its checkpoint instead of starting a new one.
    resume: bool = False
    #: Training stages (``--stage``): strings ``"EPOCHS:PATTERNS"``,
    #: :class:`~pyro_mmvae.stages.Stage` objects or ``(epochs, patterns)`` pairs; None: the
    #: model's default (the checkpoint's when resuming).
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
    #: Deterministic kernels (:func:`pyro_mmvae.engine.enable_deterministic`): on a GPU the same
    #: seed then gives the same parameters run after run, at some speed; the CPU is
    #: deterministic already.
    deterministic: bool = False
    #: Replace a stale run-folder lock left by a killed run (never a live one).
    break_lock: bool = False
    #: Drop each observed modality of each row with this probability (train and test splits,
    #: seeded by the run's seed; a row keeps one modality), see ``dataset.with_missing``.
    missing_ratio: float | None = None

    def check(self) -> None:
        """Raise ValueError naming the first setting that is out of range, or a setting
        given both as a field (flag) and in ``settings`` (``--set``) with another value."""
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
        if self.seed is not None:
            check_seed(self.seed)
        if self.missing_ratio is not None:
            check_missing_ratio(self.missing_ratio)
        as_stages(self.stages)  # raises on a malformed schedule
        check_flag_conflicts(self)


def check_seed(value: Any) -> int:
    """``value`` as a seed (an int in ``[0, 2**32)``: NumPy's range), else ValueError.

    Args:
        value: the seed to check (a bool is refused).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"seed (--seed) must be an integer in [0, 2**32), got {value!r}")
    return value


def check_missing_ratio(value: Any) -> float:
    """``value`` as a missing ratio in [0, 1), else ValueError.

    Args:
        value: the probability of dropping each observed (modality, row) entry (an int or a
            float; a bool is refused).

    Returns:
        ``value`` as a float.
    """
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


def _normalised(name: str, value: Any) -> Any:
    """``value`` of training setting ``name`` as the spec stores it (for comparisons)."""
    if name == "stages":
        return as_stored(stages_to_json(as_stages(value)))
    return as_stored(check_value(name, value))


def check_flag_conflicts(config: TrainConfig) -> None:
    """Raise ValueError for a setting given both by its flag and by ``--set`` with two
    different values (``--batch-size 16 --set batch_size=7``); equal values are accepted.

    Args:
        config: the run's configuration; its :data:`FLAG_SETTINGS` fields are compared with
            the same names in ``config.settings``.
    """
    for name, flag in FLAG_SETTINGS.items():
        value = getattr(config, name)
        if value is None or name not in config.settings:
            continue
        other = config.settings[name]
        if _normalised(name, value) != _normalised(name, other):
            raise ValueError(f"{name} is given twice with different values: {flag} {value!r} "
                             f"and --set {name}={other!r}; give it once")


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run consumes, resolved and validated (:func:`resolve_run`).

    ``settings`` are the zoo's full settings of the model
    (:class:`~pyro_mmvae.settings.Settings`), with the ``optim`` group holding the values
    below (``stages`` resolved to epochs); ``overrides`` are the model settings asked for
    explicitly (``--set``, the ``--num-particles``/``--estimator`` flags, the checkpoint's
    when resuming), from which :func:`pyro_mmvae.runs.load_run` rebuilds the model.
    ``precision`` is resolved (never ``"auto"``); ``device`` is the torch device the run
    trains on.
    """

    #: Model name of the zoo.
    model: str
    #: Dataset name (``files:DIR`` with an absolute path).
    dataset: str
    #: Data root as asked for (None: the environment's or dataset's default).
    data_root: str | None
    #: Preset name, or None (the model's defaults).
    preset: str | None
    #: Model settings asked for explicitly, by name (rebuilds the model on load).
    overrides: Mapping[str, Any]
    #: The model's full settings, the ``optim`` group as resolved below.
    settings: Settings
    #: Seed of the run, in ``[0, 2**32)``.
    seed: int
    #: Adam learning rate.
    lr: float
    #: Whether Adam uses AMSGrad.
    amsgrad: bool
    #: Data points per optimiser step (the global batch over all processes).
    batch_size: int
    #: Passes over the training set.
    epochs: int
    #: Network precision, resolved: ``"32"``, ``"bf16"`` or ``"16"``.
    precision: str
    #: ``"constant"``, ``"cosine"`` or ``"linear"``.
    lr_schedule: str
    #: Bound on the gradients' global 2-norm; None: no clipping.
    clip_grad: float | None
    #: Training stages, lengths in epochs; ``()``: none.
    stages: tuple[Stage, ...]
    #: Probability in ``[0, 1)`` of dropping each observed (modality, row) entry.
    missing_ratio: float
    #: K, latent samples per data point.
    num_particles: int
    #: ``"elbo"``, ``"iwae"`` or ``"dreg"``.
    estimator: str
    #: Data-parallel world size (1 without torchrun).
    processes: int
    #: The torch device the run trains on, e.g. ``"cpu"`` or ``"cuda:0"``.
    device: str
    #: The run folder.
    out: str
    #: Whether the networks are compiled with ``torch.compile``.
    compile: bool
    #: ``"auto"``, ``"stacked"`` or ``"split"`` (as asked; resolved per device).
    decoder_batching: str
    #: ``"auto"``, ``"contiguous"`` or ``"channels_last"`` (as asked).
    memory_format: str
    #: Whether TensorBoard logs are written.
    tensorboard: bool
    #: Whether deterministic kernels are on (``--deterministic``).
    deterministic: bool = False

    def to_json(self) -> dict[str, Any]:
        """The whole spec as plain JSON values (``summary.json``'s ``spec``, the
        checkpoint's ``hyper``): settings in full, stages as ``[[epochs, [patterns]]]``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "stages":
                value = stages_to_json(value)
            elif f.name == "settings":
                value = dict(value)
            out[f.name] = as_stored(value)
        return out


#: The name of the trainer's hyperparameters before the spec held them all.
RunHyper = RunSpec


def model_overrides(config: TrainConfig, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """The model settings of the run: the checkpoint's (when resuming), then ``settings``,
    ``num_particles`` and ``estimator`` of ``config``.

    Args:
        config: the run's configuration.
        resumed: the checkpoint being resumed (its ``overrides`` come first), or None.

    Returns:
        ``{setting name: value}``, with ``stages`` as JSON lists.
    """
    overrides = dict(resumed["overrides"]) if resumed else {}
    overrides.update(config.settings)
    for key in ("num_particles", "estimator"):
        value = getattr(config, key)
        if value is not None:
            overrides[key] = value
    if overrides.get("stages") is not None:  # Stage objects as the checkpoint stores them
        overrides["stages"] = stages_to_json(as_stages(overrides["stages"]))
    return overrides


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def resolve_run(config: TrainConfig, resumed: dict[str, Any] | None = None, *,
                datasets: tuple[Any, Any] | None = None,
                device: torch.device | str | None = None,
                processes: int = 1) -> RunSpec:
    """The :class:`RunSpec` of ``config``, resuming ``resumed`` (a loaded checkpoint) if given.

    ``datasets`` = ``(train, test)`` as the run will see them (loaded by name when None: the
    model's shapes and modalities depend on them); ``device`` the torch device (resolved
    from ``config.device`` when None); ``processes`` the data-parallel world size. Creates
    nothing on disk. Raises ValueError (or :class:`~pyro_mmvae.checkpoint.CheckpointError`
    for a checkpoint the request contradicts) naming the option at fault.

    Args:
        config: what the run asks for.
        resumed: the loaded checkpoint of the run to continue, or None for a new run.
        datasets: ``(train, test)`` as the run will see them, or None to load them by name.
        device: the training device, or None to resolve ``config.device``.
        processes: the data-parallel world size (1 without torchrun); a resumed run must
            have the checkpoint's.
    """
    from pyro_mmvae.data.files import PREFIX as FILES_PREFIX
    from pyro_mmvae.data.files import files_dataset_name
    from pyro_mmvae.engine.device import resolve_device
    from pyro_mmvae.runs import default_run_dir, load_datasets
    from pyro_mmvae.zoo import resolve_settings

    config.check()
    if config.dataset.startswith(FILES_PREFIX):  # the run folder records an absolute path
        config = dataclasses.replace(config, dataset=files_dataset_name(config.dataset))
    device = torch.device(device) if device is not None else resolve_device(config.device)
    if resumed is not None:
        check_checkpoint_matches(resumed, model=config.model, dataset=config.dataset,
                                 preset=config.preset)
        if resumed.get("world_size", 1) != processes:
            raise CheckpointError(
                f"the checkpoint was trained by {resumed.get('world_size', 1)} process(es); "
                f"resume it with the same number (this run has {processes})")
    stored = dict((resumed or {}).get("hyper") or {})
    if datasets is None:
        datasets = load_datasets(config.dataset, config.data_root)
    train_ds = datasets[0]

    preset = config.preset if config.preset is not None else (resumed or {}).get("preset")
    overrides = model_overrides(config, resumed)
    settings = resolve_settings(config.model, preset, getattr(train_ds, "name", None),
                                **overrides)
    explicit = config.settings

    def optim(key: str) -> Any:  # flag > --set > checkpoint > preset and defaults
        given = _first(getattr(config, key, None),
                       settings[key] if key in explicit else None)
        return _first(given, stored.get(key), settings[key])

    epochs = int(optim("epochs"))
    stages = _resolve_stages(config, settings, stored, epochs)
    if resumed is None:
        precision = resolve_precision(config.precision or "auto", device)
    elif config.precision is None or str(config.precision).lower() == "auto":
        # a resumed run keeps the precision it chose; one from before "auto" names none: 32
        precision = check_precision(stored.get("precision", "32"))
    else:
        precision = check_precision(config.precision)
    settings = settings.replace(
        lr=float(optim("lr")), amsgrad=bool(optim("amsgrad")),
        batch_size=int(optim("batch_size")), epochs=epochs,
        stages=tuple((s.epochs, s.frozen) for s in stages) or None)
    spec = RunSpec(
        model=config.model,
        dataset=config.dataset,
        data_root=config.data_root,
        preset=preset,
        overrides=dict(overrides),
        settings=settings,
        seed=check_seed(_first(config.seed, stored.get("seed"), 0)),
        lr=settings["lr"],
        amsgrad=settings["amsgrad"],
        batch_size=settings["batch_size"],
        epochs=epochs,
        precision=precision,
        lr_schedule=_first(config.lr_schedule, stored.get("lr_schedule"), "constant"),
        clip_grad=_first(config.clip_grad, stored.get("clip_grad")),
        stages=stages,
        missing_ratio=check_missing_ratio(_first(config.missing_ratio,
                                                 stored.get("missing_ratio"), 0.0)),
        num_particles=settings["num_particles"],
        estimator=settings["estimator"],
        processes=processes,
        device=str(device),
        out=str(config.out or default_run_dir(config.model, config.dataset)),
        compile=bool(config.compile),
        decoder_batching=config.decoder_batching,
        memory_format=config.memory_format,
        tensorboard=bool(config.tensorboard),
        deterministic=bool(config.deterministic),
    )
    if resumed is not None:
        check_resume(spec, resumed, train_ds)
    check_model(spec, train_ds, device)
    return spec


def _resolve_stages(config: TrainConfig, settings: Settings, stored: Mapping[str, Any],
                    epochs: int) -> tuple[Stage, ...]:
    """The schedule in epochs: ``--stage`` (or ``--set stages``), else the checkpoint's,
    else the model's default. A resumed run that names the schedule again keeps the stored
    boundaries when the schedule resolves to them at the checkpoint's length."""
    asked = _first(config.stages, config.settings.get("stages"))
    if asked is None:
        return resolve_stages(as_stages(stored["stages"] if "stages" in stored
                                        else settings["stages"]), epochs)
    stages = resolve_stages(as_stages(asked), epochs)
    if "stages" in stored and "epochs" in stored:
        at_stored = resolve_stages(as_stages(asked), int(stored["epochs"]))
        if as_stored(stages_to_json(at_stored)) == as_stored(stored["stages"]):
            return at_stored
    return stages


def check_resume(spec: RunSpec, resumed: Mapping[str, Any], dataset: Any = None) -> None:
    """Raise :class:`~pyro_mmvae.checkpoint.CheckpointError` listing every entry of ``spec``
    that differs from the run it resumes (stages and model settings included), and
    ValueError for fewer epochs than the checkpoint has trained.

    Only :data:`CHANGEABLE_ON_RESUME` may change. A checkpoint of an older version stores
    fewer entries; those it lacks cannot be compared and are skipped. Per-modality choices
    are compared as built (:func:`check_resume_modalities`), so spelling out the automatic
    choice is no change.

    Args:
        spec: the resolved spec of this invocation.
        resumed: the checkpoint being resumed (its ``hyper``, ``settings`` and ``epoch``).
        dataset: the training split, to compare per-modality choices
            (:func:`check_resume_modalities`); None skips that comparison.
    """
    stored = dict(resumed.get("hyper") or {})
    saved = {k: v for k, v in (resumed.get("settings") or {}).items()
             if k not in OPTIM_KEYS and k != "modalities"}
    saved.update({k: v for k, v in stored.items()
                  if k not in CHANGEABLE_ON_RESUME and k not in ("settings", "overrides")})
    new = {k: v for k, v in spec.settings.items() if k not in OPTIM_KEYS and k != "modalities"}
    new.update({k: v for k, v in spec.to_json().items()
                if k not in CHANGEABLE_ON_RESUME and k not in ("settings", "overrides")})
    check_resume_settings(saved, new)
    if dataset is not None:
        check_resume_modalities(dataset, resumed.get("settings"), spec.settings)
    trained = int(resumed.get("epoch", 0))
    if spec.epochs < trained:
        raise ValueError(
            f"the checkpoint has already trained {trained} epochs, more than the "
            f"{spec.epochs} asked for; pass --epochs {trained} or more"
        )


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

    Args:
        dataset: the training split (its ``modalities``, kinds and shapes).
        saved: the checkpoint's ``settings`` by name, or None (nothing is checked).
        settings: this run's settings (a :class:`~pyro_mmvae.settings.Settings` or a
            mapping by name).
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


# --------------------------------------------------------------------------- sizes


def memory_limit(device: torch.device | str) -> int:
    """Bytes of memory a run on ``device`` can use at most: the GPU's total memory for a CUDA
    device, else the machine's physical memory (``SC_PAGE_SIZE * SC_PHYS_PAGES``).

    Args:
        device: the training device (a :class:`torch.device` or its name); 2**40 where the
            physical memory cannot be read.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf: assume a large machine
        return 2**40


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} PB"


def check_model(spec: RunSpec, dataset: Any, device: torch.device | str = "cpu") -> None:
    """Raise ValueError, naming the options, if the model of ``spec`` or one training step
    clearly cannot fit in the memory of ``device`` (:func:`memory_limit`), or if a stage
    pattern matches no parameter — all before any tensor of the model is allocated.

    The model is built on PyTorch's ``meta`` device (shapes, no storage) to count its
    parameters; each costs its value, gradient and Adam's moments in fp32. One step decodes
    at least ``batch x num_particles`` values of every modality's likelihood parameters
    (a lower bound: the networks' activations and MMVAE's cross-decodings come on top). A
    model the meta device cannot build (e.g. a user's builder that reads tensors) is not
    sized here.

    Args:
        spec: the resolved run (model, preset, settings, batch size, K, stages).
        dataset: the training split (modalities, event shapes, length).
        device: the training device whose memory bounds the run.
    """
    from pyro_mmvae.zoo import build_from_settings

    limit = memory_limit(device)
    where = f"the {_bytes(limit)} of memory of this machine ({torch.device(device)})"
    vae = None
    try:
        with torch.device("meta"):
            vae = build_from_settings(spec.model, dataset, spec.settings, spec.preset).vae
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - not buildable on meta: sized by the real build
        vae = None
    if vae is not None:
        count = sum(p.numel() for p in vae.parameters()) + sum(b.numel() for b in vae.buffers())
        need = count * FP32_BYTES * (4 + int(spec.amsgrad))
        if need > limit:
            named = [f"{k}={as_stored(spec.overrides[k])!r}" for k in SIZE_SETTINGS
                     if k in spec.overrides]
            named += [f"{k}={as_stored(v)!r}" for k, v in spec.overrides.items()
                      if str(k).startswith(MODALITIES_PREFIX)]
            lower = ("lower " + ", ".join(named) if named else
                     "lower latent_dim or hidden (or the dataset's sizes: vocabularies, shapes)")
            raise ValueError(
                f"the model would have {count:.3g} parameters, {_bytes(need)} with their "
                f"gradients and Adam's moments: more than {where}; {lower}")
        check_patterns(vae, spec.stages)
    values = 0
    mods = getattr(vae, "mods", None) if vae is not None else None
    for name in dataset.modalities:
        shape = torch.Size(dataset.event_shapes[name])
        mod = mods[name] if mods is not None and name in mods else None
        if mod is not None and hasattr(mod, "param_shape"):
            shape = torch.Size(mod.param_shape)
        values += shape.numel()
    points = min(spec.batch_size, len(dataset)) * spec.num_particles
    need = points * values * FP32_BYTES
    if need > limit:
        raise ValueError(
            f"one training step decodes at least {points:,} latents (batch_size "
            f"{min(spec.batch_size, len(dataset))} x num_particles {spec.num_particles}) into "
            f"{values:,} values each, {_bytes(need)}: more than {where}; lower "
            "num_particles (--num-particles) or batch_size (--batch-size)")
