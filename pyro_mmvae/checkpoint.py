"""Checkpoint and JSON files that are written atomically and read back with clear errors.

A checkpoint is a ``dict`` saved with :func:`torch.save`. :func:`save_checkpoint` stamps it
with ``format``, ``version`` and the library version; :func:`load_checkpoint` refuses files
that are missing, unreadable (corrupt or truncated) or of another format, and
:func:`check_checkpoint_matches` refuses a checkpoint of another model or dataset.

Files are written to a temporary file in the target's folder, flushed and fsynced, then
moved over the target with :func:`os.replace`, so a crash mid-write never leaves a
half-written checkpoint behind: the previous one stays intact.

Failures: a full disk or an unwritable folder raises :class:`CheckpointWriteError` (a
:class:`CheckpointError` and an ``OSError``) naming the path; the temporary file is removed
and the previous file is untouched. A writer killed mid-write (``kill -9``) cannot remove its
temporary file, ``.<name>.<pid>@<host>.<random>.tmp``; the next save or load of the same file
removes such leftovers of dead writers of this host (and any older than an hour).

:func:`check_resume_settings` refuses to resume a run with settings other than its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
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


STALE_TMP_AGE_S = 3600.0  # a temporary file untouched this long has no live writer


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to the requested run."""


class CheckpointWriteError(CheckpointError, OSError):
    """A file could not be written (disk full, folder not writable); nothing was replaced.

    ``errno`` and ``filename`` are those of the failed write; ``str()`` is the one-line
    message alone.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(path: Path) -> str:
    """Prefix of this process's temporary files for ``path``: ``.<name>.<pid>@<host>.``.

    Args:
        path: the target file (only its name is used); ``<host>`` is a hash of the host name.
    """
    return f".{path.name}.{os.getpid()}@{_host_tag()}."


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporary files of ``name``: ``.<name>.<pid>@<host>.<random>.tmp``, or the older
    ``.<name>.<random>.tmp`` (no owner recorded)."""
    return re.compile(
        rf"^\.{re.escape(name)}\.(?:(?P<pid>\d+)@(?P<host>[0-9a-f]{{8}})\.)?[A-Za-z0-9_]+\.tmp$"
    )


def remove_stale_temps(path: str | os.PathLike, max_age_s: float = STALE_TMP_AGE_S) -> list[Path]:
    """Remove temporary files that writers of ``path`` left when killed mid-write.

    Only files of :func:`atomic_write`'s own pattern for this file name are candidates; one
    is removed when its writer (PID recorded in the name) is a dead process of this host, or
    when it has not been modified for ``max_age_s`` seconds. Best effort: files that cannot
    be removed are left. Returns the removed paths.

    Args:
        path: the target file whose folder is searched for its temporary files.
        max_age_s: age in seconds (since the last modification) beyond which a temporary
            file is removed whoever wrote it; default :data:`STALE_TMP_AGE_S` (one hour).
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now, host = time.time(), _host_tag()
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = match.group("pid")
        dead = pid is not None and match.group("host") == host and not _pid_alive(int(pid))
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
            if (dead or old) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or one it was raised from or while handling
    (``torch.save`` turns a full disk into a ``RuntimeError`` of its zip writer)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CheckpointError):
            return None
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _write_error(path: Path, error: OSError) -> CheckpointWriteError:
    """A one-line error for a failed write of ``path``."""
    code = error.errno
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        text = (f"cannot write {path}: no space left on device{kept}; free some space "
                "(or choose another --out) and try again")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        text = (f"cannot write {path}: the folder {path.parent} is not writable "
                f"({os.strerror(code)}){kept}; choose a writable --out")
    else:
        reason = os.strerror(code) if code else (str(error) or type(error).__name__)
        text = f"cannot write {path}: {reason}{kept}"
    wrapped = CheckpointWriteError(text)
    wrapped.errno, wrapped.filename = code, str(path)
    return wrapped


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, move it over ``path``.

    The temporary file is removed if anything fails, so no ``.tmp`` file is left behind; an
    ``OSError`` (disk full, folder not writable) becomes :class:`CheckpointWriteError` naming
    ``path``. Leftover temporary files of killed writers are removed first
    (:func:`remove_stale_temps`).

    Args:
        path: the file to write; its folder is created if absent.
        write: a function that writes the whole content to the binary file handle it gets.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointWriteError: when the write fails with an ``OSError``.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
        cause = _os_error(error) if isinstance(error, Exception) else None
        if cause is not None:
            raise _write_error(path, cause) from error
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
    """Write ``obj`` as indented strict JSON to ``path`` atomically (non-finite floats
    become ``null``: :func:`pyro_mmvae.jsonutil.dumps`).

    Args:
        path: the JSON file to write.
        obj: a JSON-serialisable object (dicts, lists, strings, numbers, None).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from pyro_mmvae.jsonutil import dumps

    text = dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save ``state`` to ``path`` atomically, stamped with format tag and versions.

    The saved dict is ``state`` plus ``format``, ``version`` and ``library_version``.

    Args:
        path: the checkpoint file (``<run>/checkpoint.pt``).
        state: the checkpoint's contents, with the keys of :data:`REQUIRED_KEYS` other than
            the three stamped here; values must be loadable with ``weights_only=True``
            (tensors, numbers, strings, lists, dicts).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
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

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint dict, with every key of :data:`REQUIRED_KEYS`.
    """
    path = Path(path)
    remove_stale_temps(path)
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

    Args:
        state: a checkpoint dict from :func:`load_checkpoint`.
        model: the model name this run asks for (e.g. ``"mmvae"``).
        dataset: the dataset name this run asks for (e.g. ``"polymnist-mini"``).
        preset: the preset name this run asks for, or None to accept any.
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


def as_stored(value: Any) -> Any:
    """Settings as JSON stores them: tuples become lists, recursively.

    Args:
        value: any value; lists, tuples and mappings are converted recursively (mapping
            keys become strings), anything else comes back unchanged.
    """
    if isinstance(value, (list, tuple)):
        return [as_stored(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): as_stored(v) for k, v in value.items()}
    return value


def check_resume_settings(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` listing every requested setting that differs from the
    run's saved one.

    ``requested`` holds only what this invocation asks for explicitly (e.g. ``seed``,
    ``batch_size``, model settings from ``--set``); a key the checkpoint does not record
    cannot be compared and is skipped. Tuples and lists compare equal (JSON stores lists),
    and so do ``1`` and ``1.0``.

    Args:
        saved: the settings the run was trained with (from its checkpoint's ``config``).
        requested: the settings this command sets explicitly, by the same keys.
    """
    differ = []
    for key, value in requested.items():
        if key not in saved:
            continue
        old, new = as_stored(saved[key]), as_stored(value)
        if old != new:
            differ.append(f"{key} {old!r} -> {new!r}")
    if differ:
        raise CheckpointError(
            "--resume continues a run with its own settings, but this command asks for "
            f"different ones: {', '.join(differ)}; drop these flags to resume the run as it "
            "was, or choose a new --out to start a new run with them"
        )
