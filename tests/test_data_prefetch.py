"""Background prefetch of ``files:`` batches (issue 27, item 3) and mask fills on the data's
device (issue 27, the ``data/base.py`` row).

Prefetched batches are the batches without prefetch (same order, same RNG use, last partial
batch included); an error in the thread is raised by the consumer; an early ``break`` or a
dropped iterator leaves no thread behind; the next batch is read while the consumer holds
the current one (checked on the order of events, not on wall time).
"""

from __future__ import annotations

import gc
import itertools
import threading

import numpy as np
import pytest
import torch

from pyro_mmvae.data import FileDataset, MultimodalTensorDataset, load_dataset, write_files
from pyro_mmvae.data.base import _check_masks
from pyro_mmvae.data.prefetch import THREAD_NAME, Prefetcher
from pyro_mmvae.train import epoch_generator

torch.set_num_threads(1)

#: Generous: only reached when something is broken (the events come in milliseconds).
WAIT_S = 20.0


def _files(root, n: int = 23) -> FileDataset:
    """A files dataset with every stored kind: uint8 images, int32 tokens, float64 vectors
    with a partial mask, labels."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_files(root / split,
                    {"img": rng.integers(0, 256, (n, 1, 3, 3), dtype=np.uint8),
                     "tok": rng.integers(0, 9, (n, 4)).astype(np.int32),
                     "vec": rng.normal(size=(n, 2))},
                    labels=np.arange(n) % 4, masks={"vec": np.arange(n) % 3 > 0})
    return load_dataset(f"files:{root}")


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _no_prefetch_thread_left() -> bool:
    gc.collect()
    for _ in range(int(WAIT_S / 0.01)):  # close() joins; this only absorbs slow schedulers
        if not _prefetch_threads():
            return True
        threading.Event().wait(0.01)
    return False


def _epoch(ds, **kwargs) -> list:
    """The batches of one epoch as plain data, and whether a prefetch thread was running."""
    out, threaded = [], False
    for batch, labels in ds.batches(**kwargs):
        threaded = threaded or bool(_prefetch_threads())
        mask = getattr(batch, "mask", None)
        out.append(({m: x.clone() for m, x in batch.items()},
                    None if mask is None else {m: v.clone() for m, v in mask.items()},
                    labels.clone()))
    return out, threaded


def _assert_same(one: list, other: list) -> None:
    assert len(one) == len(other)
    for (data, mask, labels), (data2, mask2, labels2) in zip(one, other, strict=True):
        assert data.keys() == data2.keys()
        for m in data:
            assert data[m].dtype == data2[m].dtype and torch.equal(data[m], data2[m]), m
        assert (mask is None) == (mask2 is None)
        if mask is not None:
            assert all(torch.equal(mask[m], mask2[m]) for m in mask)
        assert torch.equal(labels, labels2)


# ============================================================================ same batches
def test_prefetched_files_batches_equal_plain_ones_over_epochs(tmp_path):
    ds = _files(tmp_path)
    views = {"all": ds, "subset": ds.subset(torch.arange(20, 2, -1)),
             "missing": ds.with_missing(0.4, seed=1)}
    for name, view in views.items():
        for epoch in (1, 2, 3):
            for drop_last in (False, True):
                kwargs = {"batch_size": 5, "shuffle": True, "drop_last": drop_last}
                plain, threaded = _epoch(view, generator=epoch_generator(7, epoch),
                                         prefetch=False, **kwargs)
                assert not threaded
                fetched, threaded = _epoch(view, generator=epoch_generator(7, epoch), **kwargs)
                assert threaded, "files datasets prefetch by default"
                _assert_same(plain, fetched)
                sizes = [len(labels) for *_, labels in fetched]
                expected = len(view) // 5 * [5] + ([] if drop_last or not len(view) % 5
                                                   else [len(view) % 5])
                assert sizes == expected, (name, sizes)
    assert _no_prefetch_thread_left()


def test_prefetch_draws_the_order_from_the_global_rng_as_before(tmp_path):
    """Without a generator the shuffle uses torch's global RNG: drawn on the caller's
    thread before the prefetch starts, so the order and the RNG state after an epoch are
    those of a plain epoch."""
    ds = _files(tmp_path)
    torch.manual_seed(3)
    plain, _ = _epoch(ds, batch_size=4, shuffle=True, prefetch=False)
    after_plain = torch.get_rng_state()
    torch.manual_seed(3)
    fetched, threaded = _epoch(ds, batch_size=4, shuffle=True, prefetch=True)
    assert threaded
    _assert_same(plain, fetched)
    assert torch.equal(after_plain, torch.get_rng_state())


def test_tensor_datasets_prefetch_only_when_asked(tmp_path):
    data = {"img": torch.randint(0, 256, (11, 1, 2, 2), dtype=torch.uint8),
            "vec": torch.randn(11, 3)}
    ds = MultimodalTensorDataset(data, torch.arange(11) % 2,
                                 masks={"vec": torch.arange(11) % 2 == 0})
    plain, threaded = _epoch(ds, batch_size=3, shuffle=True, generator=epoch_generator(1, 1))
    assert not threaded, "in-memory tensors: nothing to overlap, no thread by default"
    fetched, threaded = _epoch(ds, batch_size=3, shuffle=True,
                               generator=epoch_generator(1, 1), prefetch=True)
    assert threaded
    _assert_same(plain, fetched)
    assert _no_prefetch_thread_left()


# ================================================================================= errors
def test_an_error_while_reading_ahead_surfaces_in_the_consumer(tmp_path, monkeypatch):
    ds = _files(tmp_path)
    real_read, threads = FileDataset._read, []

    def read(self, rows, pin=False):
        threads.append(threading.current_thread().name)
        if len(threads) == 3:
            raise ValueError(f"{self.folder}/img.npy: cannot be read (Input/output error)")
        return real_read(self, rows, pin=pin)

    monkeypatch.setattr(FileDataset, "_read", read)
    received = []
    with pytest.raises(ValueError, match=r"img\.npy: cannot be read \(Input/output error\)"):
        for batch, _ in ds.batches(5):
            received.append(batch)
    assert len(received) == 2  # where the plain read fails too
    assert set(threads) == {THREAD_NAME}  # read on the prefetch thread, raised here
    assert _no_prefetch_thread_left()


# =============================================================================== no leaks
def test_breaking_out_early_leaves_no_prefetch_thread(tmp_path):
    ds = _files(tmp_path, n=60)
    for _ in ds.batches(2, shuffle=True, generator=epoch_generator(0, 1)):
        assert _prefetch_threads(), "a prefetch thread reads ahead"
        threading.Event().wait(0.2)  # the thread fills its queue and blocks on it
        break
    assert _no_prefetch_thread_left()
    # the common `next(iter(...))` idiom, and an iterator dropped half-way
    batch, labels = next(iter(ds.batches(3)))
    assert len(labels) == 3 and _no_prefetch_thread_left()
    batches = ds.batches(3)
    next(batches)
    del batches
    assert _no_prefetch_thread_left()


def test_a_dropped_prefetcher_stops_its_thread():
    items = Prefetcher(itertools.count())  # endless: only closing stops it
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    assert _prefetch_threads()
    del items
    assert _no_prefetch_thread_left()
    items = Prefetcher(range(3))
    assert list(items) == [0, 1, 2] and _no_prefetch_thread_left()
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(range(3), depth=0)


# ================================================================================ overlap
def test_the_next_batch_is_read_while_the_consumer_holds_this_one(tmp_path, monkeypatch):
    """Event order, not wall time: the consumer, holding batch 0, waits for the read of
    batch 1 to start; with prefetch it starts (on the thread) without being asked, without
    prefetch it cannot start until the consumer asks for batch 1."""
    ds = _files(tmp_path)
    real_read = FileDataset._read
    events: list[tuple[str, int]] = []
    second_read = threading.Event()

    def read(self, rows, pin=False):
        reads = sum(kind == "read" for kind, _ in events)
        events.append(("read", reads))
        if reads == 1:
            second_read.set()
        return real_read(self, rows, pin=pin)

    monkeypatch.setattr(FileDataset, "_read", read)
    batches = ds.batches(5)
    next(batches)
    events.append(("holding", 0))
    # returns as soon as the thread starts reading batch 1, which nobody has asked for yet
    assert second_read.wait(WAIT_S), "batch 1 was not read while batch 0 was in use"
    assert events[0] == ("read", 0) and ("read", 1) in events
    batches.close()
    assert _no_prefetch_thread_left()

    events.clear()
    second_read.clear()
    batches = ds.batches(5, prefetch=False)
    next(batches)
    assert not second_read.wait(0.3) and events == [("read", 0)]
    next(batches)
    assert events == [("read", 0), ("read", 1)]


def test_the_thread_makes_a_cuda_target_its_current_device(monkeypatch):
    """Pinned buffers allocated on the thread belong to the run's GPU, not GPU 0 (as
    DataLoader's pin thread does); emulated: no GPU here."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda index: calls.append((index, threading.current_thread().name)))
    assert list(Prefetcher(range(2), device=torch.device("cuda"))) == [0, 1]
    assert list(Prefetcher(range(2), device=torch.device("cuda:3"))) == [0, 1]
    assert list(Prefetcher(range(2), device=torch.device("cpu"))) == [0, 1]
    assert calls == [(1, THREAD_NAME), (3, THREAD_NAME)]


# ============================================================ mask fills on the data's device
def test_a_partial_mask_set_is_filled_on_the_datas_device():
    """``meta`` stands for an accelerator: before the fix the missing mask was CPU ones and
    stacking it with the given (meta) mask failed."""
    data = {"a": torch.empty(4, 3, device="meta"), "b": torch.empty(4, 2, device="meta")}
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    ds = MultimodalTensorDataset(data, labels,
                                 masks={"a": torch.zeros(4, dtype=torch.bool, device="meta")})
    assert {m: v.device.type for m, v in ds.masks.items()} == {"a": "meta", "b": "meta"}
    masks = _check_masks({"a": torch.tensor([True, False])}, ("a", "b"), 2,
                         device=torch.device("meta"))
    assert {m: v.device.type for m, v in masks.items()} == {"a": "meta", "b": "meta"}
    # the check of rows that observe nothing: needed only when every modality has a mask
    masks = {"a": torch.tensor([True, False, False]), "b": torch.tensor([False, True, False])}
    with pytest.raises(ValueError, match="1 row.* observe no modality.*row 2"):
        _check_masks(masks, ("a", "b"), 3)
    filled = _check_masks({"a": torch.tensor([False, False, False])}, ("a", "b"), 3)
    assert filled["b"].all() and not filled["a"].any()  # b observes every row: none empty
