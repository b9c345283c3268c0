"""A run folder as an object: create it, lock it, write its records, restore its model.

::

    RUN_DIR/metrics.jsonl         one JSON line per epoch (train/test loss per data point)
    RUN_DIR/checkpoint.pt         everything needed to continue (parameters, optimiser, RNGs)
    RUN_DIR/summary.json          final figures of the training run
    RUN_DIR/eval.json, *.png      written by evaluation (:mod:`pyro_mmvae.metrics.evaluate`)
    RUN_DIR/tensorboard/          with ``--tensorboard``

Training (:mod:`pyro_mmvae.train`) and evaluation both go through this module; neither
imports the other. :func:`load_run` is the one place that knows how a trained model is
rebuilt from its folder: the model zoo builds the model the checkpoint names (model, preset,
settings), then the parameters are loaded.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    save_json,
)
from pyro_mmvae.jsonutil import dumps
from pyro_mmvae.lock import RunLock

#: Environment variable naming the default data root.
DATA_ROOT_ENV = "PYRO_MMVAE_DATA_ROOT"
#: Parameters, optimiser, schedule and RNG states (written atomically after every epoch).
CHECKPOINT_NAME = "checkpoint.pt"
#: One JSON line per epoch.
METRICS_NAME = "metrics.jsonl"
#: The run's final figures.
SUMMARY_NAME = "summary.json"


def default_run_dir(model: str, dataset: str, root: str | os.PathLike = "runs") -> Path:
    """``root/{model}-{dataset}-{YYYYmmdd-HHMMSS}`` (``files:DIR`` as ``files-{DIR's name}``).

    Args:
        model: the model's name, e.g. ``"mmvae"``.
        dataset: the dataset's name, e.g. ``"polymnist-mini"`` or ``"files:/data/pairs"``.
        root: the folder that holds the runs (default ``runs`` in the working directory).

    Returns:
        The folder's path, stamped with the local time (nothing is created).
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if dataset.startswith("files:"):
        from pyro_mmvae.data.files import files_dataset_name  # clear errors for loops, typos

        dataset = "files-" + (Path(files_dataset_name(dataset)[len("files:"):]).name or "data")
    return Path(root) / f"{model}-{dataset}-{stamp}"


def resolve_data_root(explicit: str | None = None) -> str | None:
    """``explicit``, else ``$PYRO_MMVAE_DATA_ROOT``, else None (the dataset's own default).

    Args:
        explicit: the ``--data-root`` given, or None (an empty string counts as None).
    """
    return explicit or os.environ.get(DATA_ROOT_ENV) or None


def load_datasets(name: str, root: str | None = None, missing_ratio: float = 0.0,
                  seed: int = 0) -> tuple[Any, Any]:
    """The validated train and test splits of dataset ``name`` (see :mod:`pyro_mmvae.data`),
    with modalities dropped at random when ``missing_ratio > 0`` (:func:`apply_missing`).

    Args:
        name: a registered dataset name, or ``files:DIR`` for your own files.
        root: the data root (None: :func:`resolve_data_root`'s fallbacks).
        missing_ratio: probability in ``[0, 1)`` of dropping each observed (modality, row)
            entry; 0 keeps every entry.
        seed: the run's seed, which the drops are drawn from.

    Returns:
        ``(train, test)`` datasets.
    """
    from pyro_mmvae.data import load_dataset

    root = resolve_data_root(root)
    splits = load_dataset(name, root, "train"), load_dataset(name, root, "test")
    for split in splits:
        split.validate()
    return apply_missing(splits, missing_ratio, seed)


def apply_missing(splits: tuple[Any, Any], missing_ratio: float, seed: int) -> tuple[Any, Any]:
    """``(train, test)`` with ``with_missing(missing_ratio, seed)`` and ``(..., seed + 1)``
    (the run's seed: resuming and evaluating a run drop the same entries); unchanged at 0.

    Args:
        splits: the ``(train, test)`` datasets.
        missing_ratio: probability in ``[0, 1)`` of dropping each observed (modality, row)
            entry; 0 (or None) returns ``splits`` unchanged.
        seed: the run's seed.

    Raises:
        ValueError: when a split has no ``with_missing`` method.
    """
    if not missing_ratio:
        return splits
    train, test = splits
    for split in splits:
        if not hasattr(split, "with_missing"):
            raise ValueError(f"dataset {getattr(split, 'name', split)!r} cannot drop "
                             "modalities (it has no with_missing method)")
    return train.with_missing(missing_ratio, seed), test.with_missing(missing_ratio, seed + 1)


class RunFolder:
    """The files of one run under ``path`` (created on :meth:`start`).

    Args:
        path: the run folder (``--out``); nothing is created or read on construction.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def checkpoint_path(self) -> Path:
        """``RUN_DIR/checkpoint.pt``."""
        return self.path / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        """``RUN_DIR/metrics.jsonl``."""
        return self.path / METRICS_NAME

    @property
    def summary_path(self) -> Path:
        """``RUN_DIR/summary.json``."""
        return self.path / SUMMARY_NAME

    def start(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from (``resume``), or None for a fresh run, which must
        not clobber an existing one.

        Args:
            resume: True to continue the run from its checkpoint (``--resume``); False for a
                fresh run, refused with ValueError when the folder already holds one.

        Raises:
            CheckpointError: when resuming and the checkpoint is missing or unreadable.
        """
        if not resume:
            if self.checkpoint_path.exists():
                raise ValueError(
                    f"{self.path} already holds a checkpoint; pass --resume to continue that "
                    "run, or choose another --out"
                )
            return None
        return load_checkpoint(self.checkpoint_path)

    def create(self) -> None:
        """Make the folder; an unwritable location is a clear error before any training."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionError(f"cannot create run folder {self.path}: {exc.strerror}") from exc
        if not os.access(self.path, os.W_OK):
            raise PermissionError(f"run folder {self.path} is not writable; choose another --out")

    @contextlib.contextmanager
    def locked(self, enabled: bool = True, command: str = "", break_stale: bool = False
               ) -> Iterator[None]:
        """Hold the folder's lock (:class:`~pyro_mmvae.lock.RunLock`) inside the block: a
        second run on the same folder fails at once with a clear error.

        Args:
            enabled: False runs the block without a lock (e.g. ranks other than 0).
            command: what this run does, stored in the lock for others' error messages
                (empty: ``sys.argv`` joined).
            break_stale: replace a lock left by a dead process of this host
                (``--break-lock``) instead of raising
                :class:`~pyro_mmvae.lock.StaleRunLockError`.
        """
        if not enabled:
            yield
            return
        with RunLock(self.path, command=command or None, break_stale=break_stale):
            yield

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``records`` (atomically).

        Args:
            records: one JSON-serialisable dict per epoch (``epoch``, ``train_loss``,
                ``test_loss`` per data point in nats, ``seconds``, ``time``).
        """
        text = "".join(dumps(record) + "\n" for record in records)
        atomic_write(self.metrics_path, lambda handle: handle.write(text.encode("utf-8")))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl``.

        Args:
            record: one epoch's JSON-serialisable record, as in :meth:`write_metrics`.
        """
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(dumps(record) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically.

        Args:
            state: the checkpoint dict (see :func:`pyro_mmvae.checkpoint.save_checkpoint`).
        """
        save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any]:
        """Read ``checkpoint.pt`` (clear errors for missing, corrupt or foreign files)."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"no run folder at {self.path}; pass the --out folder of "
                                    "a `pyro-mmvae train` run")
        return load_checkpoint(self.checkpoint_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically.

        Args:
            summary: the run's final figures, a JSON-serialisable dict.
        """
        save_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict (empty when the run has none yet)."""
        if not self.summary_path.is_file():
            return {}
        return json.loads(self.summary_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- restoring


def trace_programs(vae: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """Run the guide and the model replayed on it once; the model's trace is returned.

    Creates every ``pyro.param`` site the programs use in the active param store. Runs in
    eval mode, so no batch-norm statistics change.

    Args:
        vae: the model, with Pyro ``model(batch)`` and ``guide(batch)`` methods.
        batch: a small batch, dict of modality name -> tensor ``(B, *event_shape)`` on the
            model's device (its values do not matter, only the shapes).

    Returns:
        The :class:`pyro.poutine.Trace` of the ``pyro.param`` sites both programs touched.
    """
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad(), poutine.trace(param_only=True) as params:
            guide_trace = poutine.trace(vae.guide).get_trace(batch)
            poutine.replay(vae.model, trace=guide_trace)(batch)
    finally:
        vae.train(was_training)
    return params.trace


def extra_params(vae: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unconstrained tensors of the ``pyro.param`` sites of ``vae``'s programs that are
    not parameters of ``vae`` itself, by site name (in the active param store).

    Args:
        vae: the model, as in :func:`trace_programs`.
        batch: a small batch to run the programs on, as in :func:`trace_programs`.
    """
    own = {id(p) for p in vae.parameters()}
    found = {}
    for name, site in trace_programs(vae, batch).nodes.items():
        value = site["value"].unconstrained()
        if id(value) not in own and not _is_module_parameter(vae, name):
            found[name] = value
    return dict(sorted(found.items()))


def _is_module_parameter(vae: nn.Module, site: str) -> bool:
    """Whether param site ``site`` is ``pyro.module``'s copy of one of ``vae``'s own
    parameters (``"<module name>$$$<parameter name>"``). Pyro's param store keeps a
    contiguous copy of a channels-last convolution weight, so such a site is not the
    parameter itself; the module's ``state_dict`` holds it (and names it without the
    instance's name, which differs from one process to the next)."""
    _, sep, rest = site.partition("$$$")
    return bool(sep) and rest in dict(vae.named_parameters())


def restore_parameters(vae: nn.Module, state: dict[str, Any],
                       batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load the module parameters and the extra ``pyro.param`` values of a checkpoint;
    return the extra parameters (created in the active param store).

    Args:
        vae: the freshly built model, changed in place.
        state: the checkpoint dict: ``vae_state`` and, optionally, ``extra_params``
            (site name -> unconstrained tensor).
        batch: a small batch to create the ``pyro.param`` sites with
            (:func:`trace_programs`).

    Raises:
        CheckpointError: when the parameters do not fit the model as built.
    """
    extras = extra_params(vae, batch) if state.get("extra_params") else {}
    for name, value in (state.get("extra_params") or {}).items():
        if name not in extras and _is_module_parameter(vae, name):
            continue  # written by an earlier version: the state_dict below restores it
        if name not in extras:
            raise CheckpointError(
                f"checkpoint holds Pyro parameter {name!r} that this model does not create; "
                "it was written by another version of the model"
            )
        with torch.no_grad():
            extras[name].copy_(value.to(extras[name].device))
    try:
        vae.load_state_dict(state["vae_state"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"the checkpoint's parameters do not fit model {state.get('model')!r} as this "
            f"version builds it with preset {state.get('preset')!r} and settings "
            f"{dict(state.get('overrides') or {})} ({detail[:300]}); resume with the same "
            "--preset and settings"
        ) from exc
    return extras


@dataclass
class LoadedRun:
    """A trained model restored from its run folder, with its data.

    Attributes:
        folder: the run folder.
        vae: the model, in eval mode on the requested device.
        elbo: its objective (a :class:`pyro.infer.ELBO`), as the zoo builds it.
        train_ds: the training split, missing modalities as in training.
        test_ds: the test split, likewise.
        state: the checkpoint dict (tensors on the CPU).
    """

    folder: RunFolder
    vae: nn.Module
    elbo: Any
    train_ds: Any
    test_ds: Any
    state: dict[str, Any]


def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
             data_root: str | None = None, datasets: tuple[Any, Any] | None = None
             ) -> LoadedRun:
    """Rebuild the model of a run folder (eval mode, on ``device``) and load its datasets.

    The datasets come from the checkpoint's dataset name and data root (``data_root`` or
    ``$PYRO_MMVAE_DATA_ROOT`` override it), unless ``datasets`` gives the (train, test) pair
    already loaded (as the run saw them, missing modalities included), which saves reading
    them again. Extra ``pyro.param`` values (if the model has any) are created in the active
    param store.

    Args:
        run_dir: the run folder (the ``--out`` of ``pyro-mmvae train``).
        device: where to put the model (a :class:`torch.device` or its name).
        data_root: the data root, overriding the one the run was trained with (None: the
            checkpoint's, then ``$PYRO_MMVAE_DATA_ROOT``).
        datasets: the ``(train, test)`` pair already loaded, or None to load it.

    Raises:
        FileNotFoundError: when ``run_dir`` is not a folder.
        CheckpointError: when the checkpoint is missing, unreadable or does not fit.
    """
    from pyro_mmvae.engine.networks import set_memory_format
    from pyro_mmvae.zoo import build_model

    folder = RunFolder(run_dir)
    state = folder.load_checkpoint()
    config = state.get("config") or {}
    hyper = state.get("hyper") or {}
    if datasets is not None:
        train_ds, test_ds = datasets
    else:
        train_ds, test_ds = load_datasets(state["dataset"],
                                          data_root or config.get("data_root"),
                                          hyper.get("missing_ratio") or 0.0,
                                          hyper.get("seed", 0))
    # every resolved setting the run trained with (checkpoints since they hold them), so a
    # later change of a default never changes a saved run; older ones: their overrides
    settings = dict(state.get("settings") or state.get("overrides") or {})
    spec = build_model(state["model"], train_ds, state.get("preset"), **settings)
    vae = spec.vae.to(device)
    batch = next(iter(train_ds.batches(2, device=device)))[0]
    restore_parameters(vae, state, batch)
    set_memory_format(vae, "auto", device)  # evaluation decodes fastest in the device's layout
    vae.eval()
    return LoadedRun(folder, vae, spec.elbo, train_ds, test_ds, state)
