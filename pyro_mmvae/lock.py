"""An exclusive lock on a run folder, so that two runs never write into the same ``--out``.

``pyro-mmvae train`` holds it while it trains, and ``pyro-mmvae evaluate`` while it evaluates
(:func:`pyro_mmvae.metrics.evaluate.evaluate_run`): a second training or evaluation of a run
in use is refused at once, naming the owner.

The lock is the file ``RUN_DIR/.lock``, created with ``O_CREAT | O_EXCL`` and holding JSON
``{"pid", "host", "started", "command"}`` of its owner. While the owner runs it also holds an
``fcntl.flock`` on that file; the kernel drops the flock when the process dies, however it
dies. A second acquirer therefore sees one of:

* the file exists and its flock is held: a live run owns the folder -> :class:`RunLockedError`;
* the file exists, no flock, the owner's PID is dead on this host: a stale lock, left by a
  killed run -> :class:`StaleRunLockError` telling how to remove it; with ``break_stale=True``
  (the CLI's ``--break-lock``) it is replaced, under the old file's flock so that two
  breakers cannot both win;
* the owner is on another host: never judged stale (its PIDs mean nothing here) ->
  :class:`RunLockedError`.

A lock is never taken over silently. Usage::

    with RunLock(run_dir, command="pyro-mmvae train ..."):
        ...  # train, write checkpoints
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL and the PID check only
    fcntl = None

LOCK_NAME = ".lock"
_READ_RETRIES = 20  # a just-created lock file may be empty for a moment: re-read it
_READ_PAUSE_S = 0.01


_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # locks held by this process


def _forget_after_fork() -> None:
    """In a forked child: close the inherited lock files. The flock belongs to the parent's
    run and must end with it, not linger in workers (data loaders, decoding pools)."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)  # the flock stays: the parent's descriptor still holds it
            except OSError:
                pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class RunLockedError(ValueError):
    """The run folder is locked by another run (alive, or on another host).

    A ``ValueError``, so the CLI reports it in one line with exit status 2.

    Args:
        message: the one-line error message (names the folder and the owner).
        owner: the lock file's JSON record ``{"pid", "host", "started", "command"}`` (None:
            unreadable); kept as the attribute ``owner`` (``{}`` when None).
    """

    def __init__(self, message: str, owner: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.owner = owner or {}


class StaleRunLockError(RunLockedError):
    """The run folder's lock was left by a process of this host that no longer runs.

    Args:
        message: the one-line error message (tells how to remove the lock).
        owner: the dead owner's JSON record, as for :class:`RunLockedError`.
    """


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as alive).

    Args:
        pid: a process id; 0 and negative ids are never alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _describe(owner: dict[str, Any]) -> str:
    parts = [f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')!r}"]
    if owner.get("started"):
        parts.append(f"since {owner['started']}")
    if owner.get("command"):
        parts.append(f"running {owner['command']!r}")
    return ", ".join(parts)


class RunLock:
    """Exclusive lock on ``run_dir`` (the file ``run_dir/.lock``).

    Args:
        run_dir: the run folder; created if missing.
        command: what the owner runs, stored in the lock for the error messages
            (default: ``sys.argv`` joined).
        break_stale: replace a stale lock (dead owner on this host) instead of raising
            :class:`StaleRunLockError` (the CLI's ``--break-lock``).

    :meth:`acquire` raises :class:`RunLockedError` when the folder is locked,
    :class:`StaleRunLockError` for a stale lock without ``break_stale``, and
    ``PermissionError`` when the folder is not writable and
    :class:`~pyro_mmvae.checkpoint.CheckpointWriteError` (an ``OSError``) naming the lock file
    when it cannot be created otherwise (disk full). Not re-entrant.
    """

    def __init__(self, run_dir: str | os.PathLike, command: str | None = None,
                 break_stale: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = " ".join(sys.argv) if command is None else str(command)
        self.break_stale = bool(break_stale)
        self.broken: dict[str, Any] | None = None  # the stale owner replaced, if any
        self._fd: int | None = None

    # ------------------------------------------------------------------------------ public
    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise; returns ``self``."""
        if self._fd is not None:
            raise ValueError(f"{self.path} is already held by this RunLock")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._unwritable(error) from error
        while True:
            fd = self._try_create()
            if fd is not None:
                self._fd = fd
                _HELD.add(self)
                return self
            self._judge_existing()  # raises, or removes a stale lock: then try again

    def release(self) -> None:
        """Remove the lock file and drop the flock (no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(self)
        try:
            if _same_file(self.path, fd):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # also drops the flock

    def owner(self) -> dict[str, Any] | None:
        """The JSON record of the lock file now in place (None if there is none)."""
        return _read_owner(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # ------------------------------------------------------------------------------ internals
    def _record(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                "command": self.command}

    def _try_create(self) -> int | None:
        """Create the lock file exclusively and flock it; None if it already exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
        except OSError as error:
            raise self._unwritable(error) from error
        try:
            os.write(fd, (json.dumps(self._record()) + "\n").encode())
            os.fsync(fd)
            if fcntl is not None:
                # blocking: a concurrent acquirer may hold it for a moment while it reads
                # this file's owner (and then reports the folder as locked)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException as error:
            os.close(fd)
            try:
                self.path.unlink()
            except OSError:
                pass
            if isinstance(error, OSError):
                raise self._unwritable(error) from error
            raise
        return fd

    def _judge_existing(self) -> None:
        """The lock file exists: raise, or (stale + ``break_stale``) remove it and return."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return  # released meanwhile: try to create again
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                        raise
                    owner = _read_owner(self.path, wait=True) or {}
                    raise RunLockedError(self._locked_message(owner), owner) from None
            if not _same_file(self.path, fd):
                return  # replaced meanwhile (another breaker won): look again
            owner = _read_owner(self.path, wait=True)
            if owner is None:
                raise RunLockedError(
                    f"run folder {self.run_dir} has a lock file {self.path} without a readable "
                    "owner (a run starting right now, or not a pyro_mmvae lock); if no run uses "
                    "this folder, delete it", None)
            if owner.get("host") != socket.gethostname():
                raise RunLockedError(
                    self._locked_message(owner) + "; locks of other hosts are never judged "
                    f"stale: if that run has ended, delete {self.path}", owner)
            pid = owner.get("pid")
            if isinstance(pid, int) and pid_alive(pid) and fcntl is None:
                raise RunLockedError(self._locked_message(owner), owner)
            if isinstance(pid, int) and pid_alive(pid) and pid != os.getpid():
                # alive but not holding the flock: a reused PID, or a filesystem without
                # flock; do not guess
                raise RunLockedError(
                    self._locked_message(owner) + f" (if that process is not a pyro_mmvae "
                    f"run, delete {self.path})", owner)
            if not self.break_stale:
                raise StaleRunLockError(
                    f"run folder {self.run_dir} has a stale lock: {_describe(owner)}, which no "
                    f"longer runs (killed?). If no other run uses this folder, delete "
                    f"{self.path} or pass --break-lock, then start again", owner)
            self.path.unlink()  # under the old file's flock: exactly one breaker gets here
            self.broken = owner
        finally:
            os.close(fd)

    def _locked_message(self, owner: dict[str, Any]) -> str:
        return (f"run folder {self.run_dir} is in use by another run ({_describe(owner)}); "
                "wait for it to finish or choose another --out")

    def _unwritable(self, error: OSError) -> OSError:
        """A one-line error for a failed creation of the folder or the lock file: a
        ``PermissionError`` for an unwritable folder, else (a full disk, a file where the
        folder should be) :class:`~pyro_mmvae.checkpoint.CheckpointWriteError` naming the
        path; nothing is left behind either way."""
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionError(
                f"cannot lock run folder {self.run_dir}: it is not writable "
                f"({os.strerror(error.errno)}); choose a writable --out")
        from pyro_mmvae.checkpoint import CheckpointWriteError  # torch: only on this path

        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = ("no space left on device; free some space (or choose another --out) "
                      "and try again")
        else:
            reason = (os.strerror(error.errno) if error.errno
                      else str(error) or type(error).__name__)
        wrapped = CheckpointWriteError(f"cannot create the lock file {self.path} of run "
                                       f"folder {self.run_dir}: {reason}")
        wrapped.errno, wrapped.filename = error.errno, str(self.path)
        return wrapped


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_owner(path: Path, wait: bool = False) -> dict[str, Any] | None:
    """The JSON in ``path`` (None if missing or unreadable); with ``wait``, re-read a file
    that is still empty for a moment (its creator writes right after creating it)."""
    for attempt in range(_READ_RETRIES if wait else 1):
        try:
            text = path.read_text()
        except OSError:
            return None
        if text.strip():
            try:
                owner = json.loads(text)
            except ValueError:
                return None
            return owner if isinstance(owner, dict) else None
        if attempt + 1 < _READ_RETRIES and wait:
            time.sleep(_READ_PAUSE_S)
    return None
