"""The SVI training loop: device, seeding, progress, per-epoch metrics, checkpoints, exact resume.

:func:`train` fits a model of :mod:`pyro_mmvae.zoo` to a dataset of :mod:`pyro_mmvae.data`
with :class:`pyro.infer.SVI` and Adam, and writes into a run folder::

    RUN_DIR/metrics.jsonl         one JSON line per epoch (train/test loss per datapoint)
    RUN_DIR/checkpoint.pt         everything needed to continue (parameters, Adam, RNG states)
    RUN_DIR/summary.json          final figures (losses, coherence, parameter count, ...)
    RUN_DIR/cross_generation.png  conditional generations of the first test batch

Losses are the negative ELBO (or the objective chosen by ``estimator``) divided by the
number of data points, in nats. Resuming with ``resume=True`` restores parameters,
optimizer moments and every RNG, so ``N`` epochs in one go and ``k`` epochs plus a resumed
``N - k`` give identical parameters on the CPU.

Training stages (:mod:`pyro_mmvae.stages`) freeze groups of parameters for some epochs, e.g.
TELBO's two stages. Set them with ``TrainConfig(stages=["0.5:mods.*.encoder",
"rest:joint_encoder,mods.*.decoder"])`` (CLI: ``--stage``, repeatable) or let the model's
default (``spec.train_defaults["stages"]``) apply; a frozen parameter gets no gradient and no
Adam step, and ``--resume`` continues the schedule.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI
from tqdm.auto import tqdm

from pyro_mmvae import __version__
from pyro_mmvae.checkpoint import (
    CheckpointError,
    atomic_write,
    check_checkpoint_matches,
    load_checkpoint,
    save_checkpoint,
    save_json,
)
from pyro_mmvae.stages import (
    Stage,
    as_stages,
    check_patterns,
    freeze,
    frozen_patterns,
    resolve_stages,
    stages_to_json,
    unfreeze,
)

ESTIMATORS = ("elbo", "iwae", "dreg")
DEVICES = ("auto", "cpu", "cuda")
DATA_ROOT_ENV = "PYRO_MMVAE_DATA_ROOT"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
GRID_NAME = "cross_generation.png"
MAX_TEST_POINTS = 2000
GRID_ROWS = 8

__all__ = [
    "TrainConfig",
    "TrainingError",
    "CheckpointError",
    "train",
    "resolve_device",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "epoch_generator",
    "default_run_dir",
]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


@dataclass
class TrainConfig:
    """Settings of one training run; ``None`` takes the model preset's default.

    When resuming, ``None`` takes the value the checkpoint was trained with instead.
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
    seed: int = 0
    out: str | None = None
    resume: bool = False
    evaluate: bool = True
    stages: Sequence[Any] | None = None
    #: Model settings of the zoo (``beta``, ``alpha``, ``latent_dim``, ...) over the preset.
    settings: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        _check_positive("epochs", self.epochs, int)
        _check_positive("batch_size", self.batch_size, int)
        _check_positive("num_particles", self.num_particles, int)
        _check_positive("lr", self.lr, float)
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}"
            )
        as_stages(self.stages)  # raises on a malformed schedule


def _check_positive(name: str, value: Any, kind: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    if not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass
class _Hyper:
    """Training hyperparameters after defaults, presets and the checkpoint are merged."""

    preset: str | None
    overrides: dict[str, Any]
    lr: float
    amsgrad: bool
    batch_size: int
    epochs: int
    stages: tuple[Stage, ...] = ()


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; ``cuda`` needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but PyTorch sees no CUDA GPU; "
                "use --device cpu (or auto)"
            )
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch (CPU and CUDA) via :func:`pyro.set_rng_seed`."""
    pyro.set_rng_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict[str, Any]:
    """The states of the Python, NumPy, torch and CUDA generators, in a torch.load-safe form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`get_rng_state` (CUDA only when GPUs are present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for the batch order of ``epoch``, independent of global RNG state."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return generator


def default_run_dir(model: str, dataset: str, root: str | os.PathLike = "runs") -> Path:
    """``root/{model}-{dataset}-{YYYYmmdd-HHMMSS}``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{model}-{dataset}-{stamp}"


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _batch_size_of(data: dict[str, torch.Tensor]) -> int:
    return int(next(iter(data.values())).shape[0])


def _load_dataset(name: str, root: str | None, split: str) -> Any:
    from pyro_mmvae.data import load_dataset

    return load_dataset(name, root, split)


def _build_model(name: str, dataset: Any, preset: str | None, **overrides: Any) -> Any:
    from pyro_mmvae.zoo import build_model

    return build_model(name, dataset, preset=preset, **overrides)


# --------------------------------------------------------------------------- setup


def _load_resume_state(config: TrainConfig, path: Path) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None for a fresh run (which must not clobber one)."""
    if not config.resume:
        if path.exists():
            raise ValueError(
                f"{path.parent} already holds a checkpoint; pass --resume to continue that "
                "run, or choose another --out"
            )
        return None
    state = load_checkpoint(path)
    check_checkpoint_matches(
        state, model=config.model, dataset=config.dataset, preset=config.preset
    )
    return state


def _load_datasets(config: TrainConfig) -> tuple[Any, Any]:
    root = config.data_root or os.environ.get(DATA_ROOT_ENV) or None
    train_ds = _load_dataset(config.dataset, root, "train")
    test_ds = _load_dataset(config.dataset, root, "test")
    train_ds.validate()
    test_ds.validate()
    return train_ds, test_ds


def _model_overrides(config: TrainConfig, resumed: dict[str, Any] | None) -> dict[str, Any]:
    overrides = dict(resumed["overrides"]) if resumed else {}
    overrides.update(config.settings)
    for key in ("num_particles", "estimator"):
        value = getattr(config, key)
        if value is not None:
            overrides[key] = value
    return overrides


def _resolve_hyper(
    config: TrainConfig,
    spec: Any,
    preset: str | None,
    overrides: dict[str, Any],
    resumed: dict[str, Any] | None,
) -> _Hyper:
    """Config value if given, else the checkpoint's (when resuming), else the preset default."""
    base = dict(spec.train_defaults)
    if resumed:
        base.update(resumed["hyper"])
    missing = [k for k in ("lr", "amsgrad", "batch_size", "epochs") if k not in base]
    if missing:
        raise ValueError(f"model spec train_defaults lacks {', '.join(missing)}")
    epochs = int(config.epochs if config.epochs is not None else base["epochs"])
    stages = as_stages(config.stages if config.stages is not None else base.get("stages"))
    return _Hyper(
        preset=preset,
        overrides=overrides,
        lr=float(config.lr if config.lr is not None else base["lr"]),
        amsgrad=bool(base["amsgrad"]),
        batch_size=int(config.batch_size if config.batch_size is not None else base["batch_size"]),
        epochs=epochs,
        stages=resolve_stages(stages, epochs),
    )


def _first_batch(dataset: Any, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    data, _ = next(iter(dataset.batches(batch_size, device=device)))
    return data


def _extra_params(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unconstrained values of param-store entries that are not parameters of ``vae``."""
    module_params = {id(p) for p in vae.parameters()}
    return {
        name: value.detach().cpu().clone()
        for name, value in pyro.get_param_store().named_parameters()
        if id(value) not in module_params
    }


def _restore_extra_params(
    vae: torch.nn.Module, extras: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> None:
    """Register ``pyro.param`` sites by tracing guide and model once, then set their values.

    The trace runs in eval mode (no batch-norm statistics change); RNG is restored later.
    """
    vae.eval()
    guide_trace = poutine.trace(vae.guide).get_trace(batch)
    poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(batch)
    vae.train()
    params = dict(pyro.get_param_store().named_parameters())
    for name, value in extras.items():
        if name not in params:
            raise CheckpointError(
                f"checkpoint holds Pyro parameter {name!r} that this model does not create; "
                "it was written by another version of the model"
            )
        with torch.no_grad():
            params[name].copy_(value.to(params[name].device))


def _optim_state_with_lr(optim_state: dict[str, Any], lr: float) -> dict[str, Any]:
    """Per-parameter Adam states with the learning rate replaced (a resume may lower it)."""
    patched = {}
    for name, state in optim_state.items():
        groups = [dict(group, lr=lr) for group in state["param_groups"]]
        patched[name] = dict(state, param_groups=groups)
    return patched


def _restore(
    resumed: dict[str, Any], vae: torch.nn.Module, optim: Any, batch: dict, lr: float
) -> list[dict[str, Any]]:
    """Load parameters, Adam moments and RNG states of a checkpoint; return its history."""
    extras = resumed.get("extra_params") or {}
    if extras:
        _restore_extra_params(vae, extras, batch)
    try:
        vae.load_state_dict(resumed["vae_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            "checkpoint parameters do not fit the model built for this run "
            f"({str(exc).splitlines()[0]}); resume with the same --preset and settings"
        ) from exc
    optim.set_state(_optim_state_with_lr(resumed["optim_state"], lr))
    set_rng_state(resumed["rng_state"])
    return [dict(record) for record in resumed["history"]]


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    """State shared by the epochs of one run."""

    svi: SVI
    elbo: Any
    vae: torch.nn.Module
    optim: Any
    train_ds: Any
    test_ds: Any
    test_subset: Any
    hyper: _Hyper
    config: TrainConfig
    device: torch.device
    run_dir: Path
    progress: bool
    history: list[dict[str, Any]]
    validate_next_step: bool = True

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def run(self) -> None:
        """Train from the epoch after the last one in ``history`` up to ``hyper.epochs``."""
        for epoch in range(len(self.history) + 1, self.hyper.epochs + 1):
            start = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            test_loss = self.test_loss(epoch)
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "seconds": time.perf_counter() - start,
                "time": _now(),
            }
            self.history.append(record)
            _append_jsonl(self.run_dir / METRICS_NAME, record)
            save_checkpoint(self.checkpoint_path, self.checkpoint_state(epoch))
            if self.progress:
                tqdm.write(
                    f"epoch {epoch}/{self.hyper.epochs}  train {train_loss:.3f}  "
                    f"test {test_loss:.3f}  ({record['seconds']:.1f} s)"
                )

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training set; returns the mean loss per data point."""
        batch_size = self.hyper.batch_size
        batches = self.train_ds.batches(
            batch_size,
            shuffle=True,
            generator=epoch_generator(self.config.seed, epoch),
            device=self.device,
        )
        total, count = 0.0, 0
        if hasattr(self.vae, "start_epoch"):
            self.vae.start_epoch(epoch - 1)  # KL warm-up schedules count epochs from 0
        self.apply_stage(epoch)
        steps = math.ceil(len(self.train_ds) / batch_size)
        desc = f"epoch {epoch}/{self.hyper.epochs}"
        with tqdm(total=steps, desc=desc, disable=not self.progress, leave=False) as bar:
            for step, (data, _) in enumerate(batches, start=1):
                loss = self.step(data)
                size = _batch_size_of(data)
                self.check_finite(loss / size, epoch, f"step {step}")
                total, count = total + loss, count + size
                bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
                bar.update()
        return total / count

    def step(self, data: dict[str, torch.Tensor]) -> float:
        """``svi.step`` with Pyro validation on for the first step of the run only."""
        if not self.validate_next_step:
            return self._svi_step(data)
        pyro.enable_validation(True)
        try:
            return self._svi_step(data)
        finally:
            pyro.enable_validation(False)
            self.validate_next_step = False

    def _svi_step(self, data: dict[str, torch.Tensor]) -> float:
        if not self.hyper.stages:
            return float(self.svi.step(data))
        with warnings.catch_warnings():  # pyro.module notes each frozen parameter it skips
            warnings.filterwarnings("ignore", message=".*requires_grad=False")
            return float(self.svi.step(data))

    def test_loss(self, epoch: int) -> float:
        """Mean loss per data point on (at most MAX_TEST_POINTS of) the test set, no grad."""
        total, count = 0.0, 0
        self.vae.eval()
        try:
            with torch.no_grad():
                batches = self.test_subset.batches(self.hyper.batch_size, device=self.device)
                for data, _ in batches:
                    total += float(self.elbo.loss(self.vae.model, self.vae.guide, data))
                    count += _batch_size_of(data)
        finally:
            self.vae.train()
        loss = total / count
        self.check_finite(loss, epoch, "the test-set evaluation")
        return loss

    def check_finite(self, loss: float, epoch: int, where: str) -> None:
        """Raise TrainingError if ``loss`` is NaN or infinite, pointing at the last checkpoint."""
        if math.isfinite(loss):
            return
        if self.history:
            last = self.history[-1]["epoch"]
            hint = (
                f"the last good checkpoint is {self.checkpoint_path} (epoch {last}); "
                "continue it with --resume and a lower --lr"
            )
        else:
            hint = "no checkpoint was written yet; start again with a lower --lr"
        raise TrainingError(f"loss became {loss} at epoch {epoch}, {where}; {hint}")

    def optim_state(self) -> dict[str, Any]:
        """Adam states by parameter name, including those restored from a checkpoint but not
        used since (parameters frozen by the current training stage)."""
        pending = getattr(self.optim, "_state_waiting_to_be_consumed", {})
        return {**pending, **self.optim.get_state()}

    def apply_stage(self, epoch: int) -> None:
        """Freeze the parameters of the stage ``epoch`` belongs to (unfreeze the others)."""
        if self.hyper.stages:
            freeze(self.vae, frozen_patterns(self.hyper.stages, epoch, self.hyper.epochs))

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything that ``--resume`` needs to continue exactly after ``epoch``."""
        return {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "preset": self.hyper.preset,
            "overrides": dict(self.hyper.overrides),
            "hyper": {
                "lr": self.hyper.lr,
                "amsgrad": self.hyper.amsgrad,
                "batch_size": self.hyper.batch_size,
                "epochs": self.hyper.epochs,
                "stages": stages_to_json(self.hyper.stages),
            },
            "config": dataclasses.asdict(self.config),
            "epoch": epoch,
            "vae_state": self.vae.state_dict(),
            "extra_params": _extra_params(self.vae),
            "optim_state": self.optim_state(),
            "rng_state": get_rng_state(),
            "history": [dict(record) for record in self.history],
        }


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- evaluation


def _evaluate(
    vae: torch.nn.Module, train_ds: Any, test_ds: Any, device: torch.device, run_dir: Path
) -> dict[str, Any]:
    """Single-source cross-modal coherence (classifiers trained or loaded from the cache)
    on the test set, and the cross-generation grid of the first test points."""
    from pyro_mmvae.metrics import (
        conditional_coherence,
        get_classifiers,
        save_cross_generation_grid,
    )

    classifiers = get_classifiers(train_ds, test_ds, device=device)
    coherence = conditional_coherence(
        vae, test_ds, classifiers, subset_sizes=(1,), device=device
    )
    with torch.no_grad():
        batch = _first_batch(test_ds, GRID_ROWS, device)
        save_cross_generation_grid(vae, batch, run_dir / GRID_NAME, num_examples=GRID_ROWS)
    return {
        "conditional_coherence": coherence.get("mean_single_source"),
        "coherence_matrix": _jsonable(coherence.get("single_source_matrix")),
        "classifier_accuracy": _jsonable(coherence.get("classifier_accuracy")),
    }


def _jsonable(value: Any) -> Any:
    """Tensors/arrays -> nested lists, numbers -> float, dicts and lists recursively."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# --------------------------------------------------------------------------- entry point


def train(config: TrainConfig, progress: bool = True,
          datasets: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Fit ``config.model`` to ``config.dataset`` with SVI + Adam; return the run summary.

    ``datasets`` = ``(train, test)`` trains on these (e.g. a subset of a dataset) instead of
    loading ``config.dataset`` by name; ``config.dataset`` still names the data in the run
    folder and the checkpoint. Each epoch appends to ``metrics.jsonl`` and rewrites
    ``checkpoint.pt`` atomically; a NaN or infinite loss stops the run with
    :class:`TrainingError` and leaves the last checkpoint intact. The summary is also
    written to ``summary.json``.
    """
    config.check()
    device = resolve_device(config.device)
    run_dir = Path(config.out) if config.out else default_run_dir(config.model, config.dataset)
    resumed = _load_resume_state(config, run_dir / CHECKPOINT_NAME)
    was_validating = pyro.distributions.is_validation_enabled()
    loop = None
    try:
        loop = _setup(config, resumed, device, run_dir, progress, datasets)
        loop.run()
    finally:
        pyro.enable_validation(was_validating)
        if loop is not None:
            unfreeze(loop.vae)
    return _finish(loop)


def _setup(
    config: TrainConfig,
    resumed: dict[str, Any] | None,
    device: torch.device,
    run_dir: Path,
    progress: bool,
    datasets: tuple[Any, Any] | None = None,
) -> _Loop:
    """Seed, load data, build the model and SVI, restore a checkpoint when resuming."""
    seed_everything(config.seed)
    pyro.clear_param_store()
    train_ds, test_ds = _load_datasets(config) if datasets is None else datasets
    overrides = _model_overrides(config, resumed)
    preset = config.preset if config.preset is not None else (resumed or {}).get("preset")
    spec = _build_model(config.model, train_ds, preset, **overrides)
    hyper = _resolve_hyper(config, spec, preset, overrides, resumed)
    if resumed and hyper.epochs < resumed["epoch"]:
        raise ValueError(
            f"the checkpoint has already trained {resumed['epoch']} epochs, more than the "
            f"{hyper.epochs} asked for; pass --epochs {resumed['epoch']} or more"
        )
    vae = spec.vae.to(device)
    check_patterns(vae, hyper.stages)
    vae.train()
    optim = pyro.optim.Adam({"lr": hyper.lr, "amsgrad": hyper.amsgrad})
    svi = SVI(vae.model, vae.guide, optim, loss=spec.elbo)
    history: list[dict[str, Any]] = []
    if resumed:
        batch = _first_batch(train_ds, hyper.batch_size, device)
        history = _restore(resumed, vae, optim, batch, hyper.lr)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(run_dir / METRICS_NAME, history)
    return _Loop(
        svi=svi,
        elbo=spec.elbo,
        vae=vae,
        optim=optim,
        train_ds=train_ds,
        test_ds=test_ds,
        test_subset=_head(test_ds, MAX_TEST_POINTS),
        hyper=hyper,
        config=config,
        device=device,
        run_dir=run_dir,
        progress=progress,
        history=history,
    )


def _head(dataset: Any, size: int) -> Any:
    """The first ``size`` points of ``dataset`` (all of it when it is smaller)."""
    return dataset if len(dataset) <= size else dataset.subset(torch.arange(size))


def _finish(loop: _Loop) -> dict[str, Any]:
    """Evaluate (if asked), then write and return the summary."""
    last = loop.history[-1] if loop.history else {}
    summary: dict[str, Any] = {
        "model": loop.config.model,
        "dataset": loop.config.dataset,
        "preset": loop.hyper.preset,
        "overrides": loop.hyper.overrides,
        "epochs": loop.hyper.epochs,
        "batch_size": loop.hyper.batch_size,
        "lr": loop.hyper.lr,
        "stages": stages_to_json(loop.hyper.stages) or None,
        "final_loss": last.get("train_loss"),
        "final_test_loss": last.get("test_loss"),
        "seconds": sum(record["seconds"] for record in loop.history),
        "device": str(loop.device),
        "seed": loop.config.seed,
        "parameters": sum(p.numel() for p in loop.vae.parameters()),
        "conditional_coherence": None,
        "coherence_matrix": None,
        "classifier_accuracy": None,
        "run_dir": str(loop.run_dir),
        "library_version": __version__,
        "finished": _now(),
    }
    if loop.config.evaluate:
        summary.update(
            _evaluate(loop.vae, loop.train_ds, loop.test_ds, loop.device, loop.run_dir)
        )
    save_json(loop.run_dir / SUMMARY_NAME, summary)
    return summary
