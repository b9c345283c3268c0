"""The training loop: epochs of engine steps, per-epoch metrics, checkpoints, exact resume.

:func:`train` fits a model of :mod:`pyro_mmvae.zoo` to a dataset of :mod:`pyro_mmvae.data`
and writes a run folder (:mod:`pyro_mmvae.runs`). Each step is
``elbo.differentiable_loss(vae.model, vae.guide, batch)``, ``backward`` and one torch Adam
step (:class:`pyro_mmvae.engine.TrainStep`), optionally with network mixed precision
(``precision``), ``torch.compile`` (``compile``), gradient clipping, a learning-rate schedule
and, under ``torchrun``, data-parallel training over several processes.

Losses are the negative ELBO (or the objective chosen by ``estimator``) divided by the
number of data points, in nats. Resuming with ``resume=True`` restores parameters,
optimiser moments, the schedule and every RNG, so ``N`` epochs in one go and ``k`` epochs
plus a resumed ``N - k`` give identical parameters on the CPU.

Training stages (:mod:`pyro_mmvae.stages`) freeze groups of parameters for some epochs, e.g.
TELBO's two stages. Set them with ``TrainConfig(stages=["0.5:mods.*.encoder",
"rest:joint_encoder,mods.*.decoder"])`` (CLI: ``--stage``, repeatable) or let the model's
default (``spec.train_defaults["stages"]``) apply; a frozen parameter gets no gradient and no
Adam step, and ``--resume`` continues the schedule.

The trainer does not evaluate: ``pyro-mmvae train`` runs the evaluation of
:mod:`pyro_mmvae.metrics.evaluate` on the run folder afterwards. Training runs in a private
Pyro param store (:meth:`pyro.params.param_store.ParamStoreDict.scope`), so the user's own
``pyro.param`` values and other models are left alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions
import torch
from tqdm.auto import tqdm

from pyro_mmvae import __version__
from pyro_mmvae.checkpoint import (
    CheckpointError,
)
from pyro_mmvae.engine import (
    NonFiniteError,
    ProcessGroup,
    TrainStep,
    build_lr_schedule,
    build_optimizer,
    compile_networks,
    enable_deterministic,
    init_process_group,
    network_precision,
)
from pyro_mmvae.engine.device import resolve_device
from pyro_mmvae.engine.distributed import all_gather_object, all_reduce_sum, local_device, shard
from pyro_mmvae.engine.networks import set_decoder_batching, set_memory_format
from pyro_mmvae.engine.optim import restore_lr
from pyro_mmvae.engine.rng import (
    epoch_generator,
    get_rng_state,
    rank_seed,
    seed_everything,
    set_rng_state,
)
from pyro_mmvae.engine.tensorboard import TensorBoardLog
from pyro_mmvae.run_config import (
    RunHyper,
    RunSpec,
    TrainConfig,
    TrainingError,
    resolve_run,
)
from pyro_mmvae.runs import (
    CHECKPOINT_NAME,
    DATA_ROOT_ENV,
    METRICS_NAME,
    SUMMARY_NAME,
    RunFolder,
    apply_missing,
    default_run_dir,
    extra_params,
    load_datasets,
    restore_parameters,
)
from pyro_mmvae.stages import (
    check_patterns,
    freeze,
    frozen_patterns,
    stages_to_json,
    unfreeze,
)

MAX_TEST_POINTS = 2000
TENSORBOARD_NAME = "tensorboard"
#: Sync-free steps (:meth:`~pyro_mmvae.engine.TrainStep.queue`, on accelerators) between two
#: reads of their losses: one host sync per window instead of one per step, and a non-finite
#: step stops the run at most this many steps later (it changed no parameter itself).
CHECK_EVERY = 50

__all__ = [
    "CHECKPOINT_NAME",
    "DATA_ROOT_ENV",
    "METRICS_NAME",
    "SUMMARY_NAME",
    "CheckpointError",
    "RunSpec",
    "TrainConfig",
    "TrainingError",
    "default_run_dir",
    "epoch_generator",
    "get_rng_state",
    "resolve_device",
    "seed_everything",
    "resolve_run",
    "set_rng_state",
    "train",
]


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _batch_size_of(data: dict[str, torch.Tensor]) -> int:
    return int(next(iter(data.values())).shape[0])


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    """State shared by the epochs of one run."""

    step: TrainStep
    vae: torch.nn.Module
    elbo: Any
    settings: Any
    train_ds: Any
    test_subset: Any
    hyper: RunHyper
    config: TrainConfig
    device: torch.device
    group: ProcessGroup
    folder: RunFolder
    progress: bool
    history: list[dict[str, Any]]
    extras: dict[str, torch.Tensor]
    tensorboard: TensorBoardLog | None = None
    validate_next_step: bool = True
    #: What ``decoder_batching`` and ``memory_format`` chose (``auto`` resolved).
    layout: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_ds) / self.hyper.batch_size)

    def run(self) -> None:
        """Train from the epoch after the last one in ``history`` up to ``hyper.epochs``."""
        for epoch in range(len(self.history) + 1, self.hyper.epochs + 1):
            start = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            bad = self.step.non_finite_parameters()
            if bad:  # never evaluate or checkpoint a corrupt model
                raise TrainingError(f"parameter {', '.join(bad[:5])} became non-finite (NaN or "
                                    f"inf) at epoch {epoch}, in its last step; "
                                    f"{self.restart_hint()}")
            test_loss = self.test_loss(epoch)
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "seconds": time.perf_counter() - start,
                "time": _now(),
            }
            self.history.append(record)
            state = self.checkpoint_state(epoch)  # every rank joins the RNG gather
            if self.group.is_main:
                self.folder.append_metrics(record)
                self.folder.save_checkpoint(state)
                if self.tensorboard is not None:
                    self.tensorboard.epoch(epoch, record, self.vae)
            if self.group.is_main:  # one line per epoch, progress bars or not
                tqdm.write(
                    f"epoch {epoch}/{self.hyper.epochs}  train {train_loss:.3f}  "
                    f"test {test_loss:.3f}  ({record['seconds']:.1f} s)"
                )

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training set; returns the mean loss per data point."""
        batches = self.train_ds.batches(
            self.hyper.batch_size,
            shuffle=True,
            generator=epoch_generator(self.hyper.seed, epoch),
            device=self.device,
        )
        total, count = 0.0, 0
        queued: list[torch.Tensor] = []  # sync-free steps not read yet
        queued_from = 0  # the step number of queued[0]
        if hasattr(self.vae, "start_epoch"):
            self.vae.start_epoch(epoch - 1)  # KL warm-up schedules count epochs from 0
        self.apply_stage(epoch)
        desc = f"epoch {epoch}/{self.hyper.epochs}"
        show = self.progress and self.group.is_main
        first_step = (epoch - 1) * self.steps_per_epoch
        with tqdm(total=self.steps_per_epoch, desc=desc, disable=not show, leave=False) as bar:
            for step, (data, _) in enumerate(batches, start=1):
                size = _batch_size_of(data)
                if size < self.group.world_size:
                    continue  # a last batch too small to shard: every rank skips it
                if self.step.sync_free and not self.validate_next_step \
                        and self.tensorboard is None:
                    queued_from = queued_from if queued else step
                    with warnings.catch_warnings():  # as train_step
                        warnings.filterwarnings("ignore", message=".*requires_grad=False")
                        queued.append(self.step.queue(data))
                    count += size
                    if len(queued) >= CHECK_EVERY:
                        total += self.read_queued(queued, epoch, queued_from)
                        bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
                    bar.update()
                    continue
                loss = self.train_step(data, epoch, step)
                total, count = total + loss, count + size
                if self.tensorboard is not None:
                    lr = self.step.optimizer.param_groups[0]["lr"]
                    self.tensorboard.step(first_step + step, loss / size, lr)
                bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
                bar.update()
        total += self.read_queued(queued, epoch, queued_from)
        return total / count

    def read_queued(self, queued: list[torch.Tensor], epoch: int, first: int) -> float:
        """The summed loss of the sync-free steps ``queued`` (numbered from ``first``), read
        in one transfer; empties ``queued``. A non-finite one stops the run (TrainingError)."""
        try:
            return sum(self.step.check(queued))
        except NonFiniteError as error:
            raise TrainingError(f"{error} at epoch {epoch}, step {first + error.index}; "
                                f"{self.restart_hint()}") from error
        finally:
            queued.clear()

    def train_step(self, data: dict[str, torch.Tensor], epoch: int, step: int) -> float:
        """One engine step, with Pyro validation on for the first step of the run only."""
        validate = self.validate_next_step
        if validate:
            pyro.enable_validation(True)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*requires_grad=False")
                return self.step(data)
        except NonFiniteError as error:
            raise TrainingError(f"{error} at epoch {epoch}, step {step}; "
                                f"{self.restart_hint()}") from error
        finally:
            if validate:
                pyro.enable_validation(False)
                self.validate_next_step = False

    def test_loss(self, epoch: int) -> float:
        """Mean loss per data point on (at most MAX_TEST_POINTS of) the test set, no grad.

        The ranks' sums are added on the group's device (NCCL takes CUDA tensors only)."""
        total, count = 0.0, 0
        self.vae.eval()
        try:
            with torch.no_grad(), network_precision(self.hyper.precision, self.device):
                for data, _ in self.test_subset.batches(self.hyper.batch_size,
                                                        device=self.device):
                    if _batch_size_of(data) < self.group.world_size:
                        continue
                    local = shard(data, self.group)
                    total += float(self.elbo.loss(self.vae.model, self.vae.guide, local))
                    count += _batch_size_of(local)
        finally:
            self.vae.train()
        totals = torch.tensor([total, count], dtype=torch.float64, device=self.group.device)
        total, count = all_reduce_sum(totals, self.group).tolist()
        loss = total / count
        if not math.isfinite(loss):
            raise TrainingError(f"the test loss became {loss} at epoch {epoch}; "
                                f"{self.restart_hint()}")
        return loss

    def restart_hint(self) -> str:
        """Where to continue from after a non-finite value."""
        if self.history:
            last = self.history[-1]["epoch"]
            return (f"the last good checkpoint is {self.folder.checkpoint_path} (epoch "
                    f"{last}); continue it with --resume and a lower --lr")
        return "no checkpoint was written yet; start again with a lower --lr"

    def apply_stage(self, epoch: int) -> None:
        """Freeze the parameters of the stage ``epoch`` belongs to (unfreeze the others)."""
        if self.hyper.stages:
            freeze(self.vae, frozen_patterns(self.hyper.stages, epoch, self.hyper.epochs))
            self.step.refresh()

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything that ``--resume`` needs to continue exactly after ``epoch``."""
        rng_states = all_gather_object(get_rng_state(), self.group)
        step = self.step
        return {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "preset": self.hyper.preset,
            "overrides": dict(self.hyper.overrides),
            "hyper": self.hyper.to_json(),
            "config": dataclasses.asdict(self.config),
            "epoch": epoch,
            "world_size": self.group.world_size,
            "settings": dict(self.settings),
            "vae_state": self.vae.state_dict(),
            "extra_params": {k: v.detach().cpu().clone() for k, v in self.extras.items()},
            "optim_state": step.optimizer.state_dict(),
            "scheduler_state": None if step.scheduler is None else step.scheduler.state_dict(),
            "scaler_state": None if step.scaler is None else step.scaler.state_dict(),
            "rng_state": rng_states[0],
            "rank_rng_states": rng_states,
            "history": [dict(record) for record in self.history],
        }


# --------------------------------------------------------------------------- entry point


def train(config: TrainConfig, progress: bool = True,
          datasets: tuple[Any, Any] | None = None,
          on_start: Callable[[RunSpec], None] | None = None) -> dict[str, Any]:
    """Fit ``config.model`` to ``config.dataset``; return the run summary.

    ``datasets`` = ``(train, test)`` trains on these (e.g. a subset of a dataset) instead of
    loading ``config.dataset`` by name; ``config.dataset`` still names the data in the run
    folder and the checkpoint. The configuration is resolved and validated completely
    (:func:`pyro_mmvae.run_config.resolve_run`) and the model built before the run folder
    is created, so a mistake leaves nothing on disk. Each epoch appends to ``metrics.jsonl``
    and rewrites ``checkpoint.pt`` atomically; a NaN or infinite loss or gradient stops the
    run with :class:`TrainingError` before any parameter changes and leaves the last
    checkpoint intact. The summary (with the whole resolved spec under ``spec``) is also
    written to ``summary.json``. Under ``torchrun`` every process calls this; rank 0 writes
    the folder. ``on_start(spec)`` is called once the run is resolved and checked, just
    before the folder is created (the CLI prints the folder's name there).

    Args:
        config: what the run asks for (model, dataset, options; ``resume`` to continue the
            run in ``config.out``).
        progress: show tqdm progress bars and per-epoch lines (rank 0 only).
        datasets: ``(train, test)`` to train on, or None to load ``config.dataset``.
        on_start: called with the resolved :class:`~pyro_mmvae.run_config.RunSpec` before
            the folder is created (rank 0 only); None: nothing is called.

    Returns:
        The summary: headline figures (``final_loss``, ``final_test_loss`` per data point in
        nats, ``seconds``, ``run_dir``, ...) and the whole ``spec``.
    """
    from pyro_mmvae.zoo import build_from_settings

    config.check()
    if config.out is None:
        config = dataclasses.replace(config, out=str(default_run_dir(config.model,
                                                                     config.dataset)))
    device = resolve_device(config.device)
    if config.deterministic:  # process-wide, before any CUDA work
        enable_deterministic()
    group = init_process_group(device)
    device = local_device(device, group)
    folder = RunFolder(config.out)
    resumed = folder.start(config.resume)  # reads the checkpoint; writes nothing
    if datasets is None:
        datasets = load_datasets(config.dataset, config.data_root)
    spec = resolve_run(config, resumed, datasets=datasets, device=device,
                       processes=group.world_size)  # everything checked: nothing written yet
    config = dataclasses.replace(config, dataset=spec.dataset)
    seed_everything(spec.seed)
    model = build_from_settings(spec.model, datasets[0], spec.settings, spec.preset)
    check_patterns(model.vae, spec.stages)  # checked on the meta model too, where it builds
    if on_start is not None and group.is_main:
        on_start(spec)
    if group.is_main:
        folder.create()
    was_validating = pyro.distributions.is_validation_enabled()
    loop = None
    lock = folder.locked(group.is_main, break_stale=config.break_lock)
    with lock, pyro.get_param_store().scope():
        try:
            loop = _setup(spec, config, model, resumed, datasets, device, group, folder,
                          progress)
            loop.run()
        finally:
            pyro.enable_validation(was_validating)
            if loop is not None:
                unfreeze(loop.vae)
                set_pyro_registration(loop.vae, True)
                if loop.tensorboard is not None:
                    loop.tensorboard.close()
        summary = _summary(loop)
        if group.is_main:
            folder.write_summary(summary)
    return summary


def set_pyro_registration(vae: torch.nn.Module, enabled: bool) -> None:
    """Turn the models' ``pyro.module`` call on or off (the engine optimises the module's
    parameters directly; registering ~70 tensors with Pyro on every step is wasted work)."""
    if hasattr(vae, "pyro_register"):
        vae.pyro_register = enabled


def _setup(spec: RunSpec, config: TrainConfig, model: Any, resumed: dict[str, Any] | None,
           datasets: tuple[Any, Any], device: torch.device, group: ProcessGroup,
           folder: RunFolder, progress: bool) -> _Loop:
    """The engine around the built ``model`` of ``spec``: missing modalities, the model on
    the device, its optimiser and schedule, a checkpoint's state restored when resuming."""
    train_ds, test_ds = apply_missing(datasets, spec.missing_ratio, spec.seed)
    if device.type == "cuda":  # in-memory data lives on the GPU: no per-step host copies
        train_ds, test_ds = train_ds.to(device), test_ds.to(device)
    vae = model.vae.to(device)
    set_decoder_batching(vae, spec.decoder_batching, device)
    memory_formats = set_memory_format(vae, spec.memory_format, device)
    vae.train()
    batch = next(iter(train_ds.batches(min(spec.batch_size, len(train_ds)), device=device)))[0]
    if resumed:
        extras = restore_parameters(vae, resumed, batch)
    else:
        extras = extra_params(vae, batch)
    if extras and group.distributed:
        raise ValueError("data-parallel training averages the gradients of module "
                         f"parameters only; this model also has pyro.param sites "
                         f"{sorted(extras)}: make them nn.Parameters of the module")
    set_pyro_registration(vae, False)
    params = [*vae.named_parameters(), *extras.items()]
    optimizer = build_optimizer([p for _, p in params], spec.lr, spec.amsgrad, device)
    scheduler = build_lr_schedule(optimizer, spec.lr_schedule,
                                  spec.epochs * math.ceil(len(train_ds) / spec.batch_size))
    if spec.compile:
        compile_networks(vae)
    step = TrainStep(vae, model.elbo, params, optimizer, device, precision=spec.precision,
                     clip_grad=spec.clip_grad, scheduler=scheduler, group=group)
    history: list[dict[str, Any]] = []
    if resumed:
        history = _restore_engine(resumed, step, spec.lr, group)
    else:
        seed_everything(rank_seed(spec.seed, group.rank))
    if group.is_main:
        folder.write_metrics(history)
    tensorboard = (TensorBoardLog(folder.path / TENSORBOARD_NAME)
                   if spec.tensorboard and group.is_main else None)
    return _Loop(step=step, vae=vae, elbo=model.elbo, settings=spec.settings,
                 train_ds=train_ds, test_subset=test_ds.head(MAX_TEST_POINTS), hyper=spec,
                 config=config, device=device, group=group, folder=folder,
                 progress=progress, history=history, extras=extras, tensorboard=tensorboard,
                 layout={"decoder_batching": sorted({
                     getattr(m, "decoder_batching", "stacked")
                     for m in getattr(vae, "mods", {}).values()}),
                         "memory_format": memory_formats})


def _restore_engine(resumed: dict[str, Any], step: TrainStep, lr: float,
                    group: ProcessGroup) -> list[dict[str, Any]]:
    """Load the optimiser (with the learning rate of this run), schedule, loss scaler and
    RNG states of a checkpoint; return its history."""
    try:
        step.optimizer.load_state_dict(resumed["optim_state"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's optimiser state does not fit this model "
                              f"({exc}); it was written by another version") from exc
    restore_lr(step.optimizer, step.scheduler, lr, resumed.get("scheduler_state"))
    if step.scaler is not None and resumed.get("scaler_state"):
        step.scaler.load_state_dict(resumed["scaler_state"])
    states = resumed.get("rank_rng_states") or [resumed["rng_state"]]
    set_rng_state(states[group.rank])
    return [dict(record) for record in resumed["history"]]


def _summary(loop: _Loop | None) -> dict[str, Any]:
    """The run summary of a finished loop; ``spec`` is the whole resolved run
    (:meth:`pyro_mmvae.run_config.RunSpec.to_json`), the entries before it its headlines."""
    if loop is None:
        return {}
    last = loop.history[-1] if loop.history else {}
    spec: RunSpec = loop.hyper
    return {
        "model": spec.model,
        "dataset": spec.dataset,
        "preset": spec.preset,
        "overrides": dict(spec.overrides),
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "lr_schedule": spec.lr_schedule,
        "clip_grad": spec.clip_grad,
        "precision": spec.precision,
        "compile": spec.compile,
        **loop.layout,
        "stages": stages_to_json(spec.stages) or None,
        "final_loss": last.get("train_loss"),
        "final_test_loss": last.get("test_loss"),
        "seconds": sum(record["seconds"] for record in loop.history),
        "device": str(loop.device),
        "processes": loop.group.world_size,
        "seed": spec.seed,
        "missing_ratio": spec.missing_ratio,
        "parameters": sum(p.numel() for p in loop.vae.parameters()),
        "run_dir": str(loop.folder.path),
        "library_version": __version__,
        "finished": _now(),
        "spec": spec.to_json(),
    }
