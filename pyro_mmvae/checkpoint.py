"""Checkpoint and JSON files that are written atomically and read back with clear errors.

A checkpoint is a ``dict`` saved with :func:`torch.save`. :func:`save_checkpoint` stamps it
with ``format``, ``version`` and the library version; :func:`load_checkpoint` refuses files
that are missing, unreadable (corrupt or truncated) or of another format, and
:func:`check_checkpoint_matches` refuses a checkpoint of another model or dataset.

Files are written to a temporary file in the target's folder, flushed and fsynced, then
moved over the target with :func:`os.replace`, so a crash mid-write never leaves a
half-written checkpoint behind: the previous one stays intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from pyro_mmvae import __version__

CHECKPOINT_FORMAT = "pyro_mmvae-checkpoint"
CHECKPOINT_VERSION = 2  # 2: one torch optimiser state (the training engine)
REQUIRED_KEYS = (
    "format",
    "version",
    "library_version",
    "model",
    "dataset",
    "epoch",
    "config",
    "vae_state",
    "optim_state",
    "rng_state",
    "history",
)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to the requested run."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, move it over ``path``.

    The temporary file is removed if ``write`` raises, so no ``.tmp`` file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the OS allows fsync on a directory (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save ``state`` to ``path`` atomically, stamped with format tag and versions.

    The saved dict is ``state`` plus ``format``, ``version`` and ``library_version``.
    """
    stamped = dict(state)
    stamped.update(
        format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, library_version=__version__
    )
    return atomic_write(path, lambda handle: torch.save(stamped, handle))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors land on the CPU).

    Raises :class:`CheckpointError` when the file is missing, cannot be read (corrupt or
    truncated), or is not a pyro_mmvae checkpoint of a supported version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; start a new run without --resume, "
            "or point --out at the run folder that holds checkpoint.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} cannot be read: the file is corrupt or truncated "
            f"({type(exc).__name__}: {_first_line(exc)}); delete it and train again, "
            "or restore it from a backup"
        ) from exc
    _check_format(path, state)
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _check_format(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a pyro_mmvae checkpoint (format tag {CHECKPOINT_FORMAT!r} missing)"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')!r}, but this "
            f"pyro_mmvae ({__version__}) reads version {CHECKPOINT_VERSION}; "
            "train again with this version"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}; train again"
        )


def check_checkpoint_matches(
    state: Mapping[str, Any], *, model: str, dataset: str, preset: str | None = None
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` was trained with this model and dataset.

    ``preset`` is checked only when given (``None`` accepts the checkpoint's preset).
    """
    wanted = {"model": model, "dataset": dataset}
    if preset is not None:
        wanted["preset"] = preset
    for key, value in wanted.items():
        stored = state.get(key)
        if stored != value:
            fix = f"pass --{key} {stored}" if stored is not None else f"leave out --{key}"
            raise CheckpointError(
                f"checkpoint is of {key} {stored!r}, but this run asks for {key} {value!r}; "
                f"{fix} to resume it, or choose another --out to start a new run"
            )
