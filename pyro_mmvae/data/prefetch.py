"""Background prefetch of the next batch: read batch ``i + 1`` while the model trains on ``i``.

A :class:`Prefetcher` runs one daemon thread that pulls items from a source iterator (the
*host* part of making a batch: reading rows from memory-mapped files, gathering them into
pinned memory) into a bounded queue of ``DEPTH`` items, so at most ``DEPTH + 1`` batches
are ahead of the consumer (``DEPTH`` waiting, one being read). The consumer gets the items in
the source's order, unchanged: a prefetched epoch is bit-identical to a plain one. Nothing
random happens in the thread; the shuffle is drawn by the caller before the thread starts.

Device copies stay on the consumer's thread (:func:`~pyro_mmvae.data.base.to_device`): the
thread only touches host memory, so no CUDA stream is shared between threads and no
``record_stream``/``wait_stream`` bookkeeping is needed. An asynchronous host -> CUDA copy
from a pinned buffer issued by the consumer already overlaps with the kernels queued before
it; the thread adds the overlap of the file read with the training step.

An exception in the thread (a damaged file, a read error) is raised again by the consumer at
the item where it happened, unchanged (type, message and cause). The thread stops when the
iterator is exhausted, :meth:`Prefetcher.close`\\ d, or garbage-collected, e.g. after an early
``break`` out of ``for batch in ds.batches(...)``: the batch generator's ``finally`` closes
it, the thread finishes the read in progress (if any) and exits; ``close`` waits for that.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

#: Items a prefetch thread may hold ready ahead of the consumer (plus one being read).
DEPTH = 1
#: Name of the prefetch threads (``threading.enumerate()`` shows them).
THREAD_NAME = "pyro_mmvae-prefetch"
#: Seconds between checks of the stop flag while the queue is full.
_POLL_S = 0.05

_ITEM, _END, _ERROR = "item", "end", "error"


def _put(out: queue.Queue, stop: threading.Event, message: tuple[str, Any]) -> bool:
    """Put ``message`` into ``out``, waiting while it is full; False once ``stop`` is set."""
    while not stop.is_set():
        try:
            out.put(message, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator[Any], out: queue.Queue, stop: threading.Event,
             setup: Callable[[], None] | None) -> None:
    """The thread's body: ``source``'s items into ``out`` until exhausted or stopped; then
    ``(END, None)``, or ``(ERROR, exception)`` if reading raised. Holds no reference to the
    :class:`Prefetcher`, so dropping it stops the thread."""
    try:
        if setup is not None:
            setup()
        while not stop.is_set():
            try:
                item = next(source)
            except StopIteration:
                _put(out, stop, (_END, None))
                return
            if not _put(out, stop, (_ITEM, item)):
                return
            del item
    except BaseException as error:  # handed to the consumer, raised again there
        _put(out, stop, (_ERROR, error))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _device_setup(device: torch.device | None) -> Callable[[], None] | None:
    """For a CUDA ``device``: make it the thread's current device (a pinned allocation in a
    fresh thread would otherwise set up a context on GPU 0, as ``DataLoader``'s pin thread
    avoids); None otherwise."""
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return lambda: torch.cuda.set_device(index)


class Prefetcher(Iterator[T], Generic[T]):
    """Iterate over ``source`` with its items read ahead by one background thread.

    Args:
        source: the items (read on the thread, in order; nothing else may iterate it).
        depth: items held ready ahead of the consumer (``DEPTH``), at least 1.
        device: the device the items are bound for; a CUDA device becomes the thread's
            current device (pinned allocations there).

    Items come out in ``source``'s order; an exception raised by ``source`` is raised by
    ``next`` at its place. :meth:`close` (also called on exhaustion, on an error and by the
    garbage collector) stops the thread and waits for it.
    """

    def __init__(self, source: Iterable[T], depth: int = DEPTH,
                 device: torch.device | None = None) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"prefetch depth must be a positive int, got {depth!r}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, name=THREAD_NAME, daemon=True,
            args=(iter(source), self._queue, self._stop, _device_setup(device)))
        self._thread.start()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value
        self.close()
        if kind == _ERROR:
            try:
                raise value
            finally:
                del value  # no frame -> exception -> traceback -> frame cycle
        raise StopIteration

    def close(self) -> None:
        """Stop the thread, drop the items it read ahead and wait for it to exit (it finishes
        the item it is reading, if any). Idempotent."""
        self._done = True
        self._stop.set()
        while True:  # free a producer blocked on a full queue, and the buffers held
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # e.g. at interpreter shutdown: nothing left to stop
            pass


def maybe_prefetch(source: Iterable[T], prefetch: bool,
                   device: torch.device | None = None) -> Iterator[T]:
    """``source`` read ahead by a :class:`Prefetcher` when ``prefetch``, else as it is.
    The caller closes what it gets (``close`` if present) when it stops early.

    Args:
        source: the items, e.g. the host parts of the batches of an epoch.
        prefetch: read ahead on a background thread; False returns ``iter(source)``.
        device: the device the items are bound for (see :class:`Prefetcher`); None: none.
    """
    return Prefetcher(source, device=device) if prefetch else iter(source)


def close_iterator(items: Iterator[Any]) -> None:
    """Close ``items`` if it can be closed (a :class:`Prefetcher`, a generator).

    Args:
        items: an iterator, e.g. from :func:`maybe_prefetch`; one without ``close`` is left
            as it is.
    """
    close = getattr(items, "close", None)
    if close is not None:
        close()
