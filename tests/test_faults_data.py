"""Fault injection for the data layer (issue 26): a data file never runs code, every broken
file is one clear line naming it, sizes read from data are bounded before anything that size
is built, absent rows may hold NaN, PolyMNIST splits must hold the same modalities, a damaged
background image is named, and missing-modality masks do not depend on torch's default dtype.

Each test fails on the code before issue 26 and passes after it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_mmvae import cli
from pyro_mmvae.data import FileDataset, MultimodalTensorDataset, load_dataset, write_files
from pyro_mmvae.data.polymnist import PolyMNIST

torch.set_num_threads(1)


class _Touch:
    """A payload: unpickling it calls ``Path.touch(path)``, i.e. runs code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _files(root: Path, n: int = 12, seed: int = 0, masks=None, **arrays) -> Path:
    """A two-split files dataset at ``root``: an 6-d vector ``vec``, tokens ``tok`` (ids < 5),
    labels 0..2; ``arrays`` replace or add modalities (same in both splits)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        data = {"vec": rng.normal(size=(n, 6)).astype(np.float32),
                "tok": rng.integers(0, 5, size=(n, 3))}
        data.update(arrays)
        write_files(root / split, data, labels=np.arange(n) % 3, masks=masks)
    return root


def _train_cli(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", f"files:{root}", "--epochs", "1", "--batch-size", "8",
            "--set", "hidden=[8]", "--set", "latent_dim=2", "--precision", "32",
            "--out", str(tmp_path / "run"), "--no-progress", "--no-evaluate", *extra]


def _assert_clean_error(error: BaseException, names: str) -> None:
    """The library's user-error type, one line, naming ``names``."""
    assert isinstance(error, cli.USER_ERRORS), type(error)
    text = str(error)
    assert names in text, text
    assert "\n" not in text.strip(), text


# ======================================================================= no code from data
@pytest.mark.parametrize("target", ["train/vec.npy", "test/tok.npy", "train/labels.npy",
                                    "train/vec.mask.npy"])
def test_pickle_disguised_as_npy_runs_nothing(tmp_path, capsys, target):
    marker, proof = tmp_path / "MARKER", tmp_path / "PROOF"
    payload = pickle.dumps(_Touch(marker))
    pickle.loads(pickle.dumps(_Touch(proof)))  # the payload is live: unpickling runs code
    assert proof.exists()
    root = _files(tmp_path / "data", masks={"vec": np.ones(12, bool)})
    (root / target).write_bytes(payload)
    with pytest.raises(Exception) as caught:
        load_dataset(f"files:{root}", split=target.split("/")[0])
    _assert_clean_error(caught.value, str(root / target))
    assert "not a .npy" in str(caught.value)
    assert not marker.exists()
    assert cli.main(_train_cli(root, tmp_path)) == 2  # the user's entry point
    err = capsys.readouterr().err
    assert err.startswith("error: ") and target.split("/")[1] in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content", ["payload", "ragged"])
def test_object_array_is_refused_from_its_header(tmp_path, capsys, content):
    marker = tmp_path / "MARKER"
    rows = ([_Touch(marker), _Touch(marker)] if content == "payload"
            else [np.arange(3), np.arange(2)])
    array = np.empty(2, dtype=object)
    array[:] = rows
    root = _files(tmp_path / "data", n=2)
    np.save(root / "train" / "vec.npy", array, allow_pickle=True)
    with pytest.raises(ValueError) as caught:
        load_dataset(f"files:{root}")
    _assert_clean_error(caught.value, str(root / "train" / "vec.npy"))
    assert "object arrays are not supported" in str(caught.value)
    assert not marker.exists()
    assert cli.main(_train_cli(root, tmp_path)) == 2
    assert "object arrays are not supported" in capsys.readouterr().err
    assert not marker.exists()


# ==================================================================== broken files, named
def _break(root: Path, case: str) -> Path:
    """Damage the files dataset at ``root`` as ``case`` says; return the path to name."""
    target = root / "train" / ("labels.npy" if case == "empty-labels" else "vec.npy")
    if case in ("directory", "self-symlink"):
        target.unlink()
    if case == "text":
        target.write_text("a,b,c\n1,2,3\n")
    elif case == "random-bytes":
        target.write_bytes(np.random.default_rng(0).bytes(4000))
    elif case in ("empty", "empty-labels"):
        target.write_bytes(b"")
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif case == "directory":
        target.mkdir()
    elif case == "self-symlink":
        target.symlink_to(target.name)
    elif case == "root-symlink-loop":
        target = root.parent / "loop"
        target.symlink_to("loop")
    return target


CASES = ["text", "random-bytes", "empty", "empty-labels", "truncated", "directory",
         "self-symlink", "root-symlink-loop"]


@pytest.mark.parametrize("case", CASES)
def test_broken_files_are_one_line_naming_the_file(tmp_path, capsys, case):
    root = _files(tmp_path / "data")
    target = _break(root, case)
    dataset = f"files:{target if case == 'root-symlink-loop' else root}"
    with pytest.raises(Exception) as caught:
        load_dataset(dataset, split="train")
    _assert_clean_error(caught.value, str(target))
    argv = _train_cli(root, tmp_path)
    argv[2] = dataset
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and target.name in err and "Traceback" not in err


# ================================================================ bounds before allocation
def test_token_id_beyond_the_vocabulary_cap_is_refused_before_any_model(tmp_path):
    tokens = np.zeros((12, 3), dtype=np.int64)
    tokens[7, 1] = 2**40
    root = _files(tmp_path / "data", tok=tokens)
    with pytest.raises(ValueError, match=r"row 7 .*token id 1099511627776") as caught:
        load_dataset(f"files:{root}")
    _assert_clean_error(caught.value, str(root / "train" / "tok.npy"))
    with pytest.raises(ValueError, match=r"token id 1099511627776.*vocabulary"):
        MultimodalTensorDataset({"tok": torch.from_numpy(tokens)}, torch.zeros(12).long())


def test_token_id_in_an_absent_row_does_not_set_the_vocabulary(tmp_path):
    tokens = np.ones((12, 3), dtype=np.int64)
    tokens[4] = 2**40
    present = np.ones(12, bool)
    present[4] = False
    root = _files(tmp_path / "data", tok=tokens, masks={"tok": present})
    ds = load_dataset(f"files:{root}")
    ds.validate()
    assert ds.vocab_sizes["tok"] == 2
    batch, _ = next(iter(ds.batches(12)))
    assert int(batch["tok"].max()) == 1 and int(ds[4][0]["tok"].max()) == 0


@pytest.mark.parametrize("text", [str(10**12), "1e12", "1", "-3"])
def test_vocab_file_out_of_bounds_is_refused(tmp_path, text):
    root = _files(tmp_path / "data")
    (root / "train" / "tok.vocab").write_text(text + "\n")
    with pytest.raises(ValueError) as caught:
        load_dataset(f"files:{root}")
    _assert_clean_error(caught.value, str(root / "train" / "tok.vocab"))
    with pytest.raises(ValueError, match="vocabulary size"):
        MultimodalTensorDataset({"tok": torch.ones(4, 3).long()}, torch.zeros(4).long(),
                                vocab_sizes={"tok": 10**12})


def test_label_beyond_the_class_cap_is_refused(tmp_path):
    root = _files(tmp_path / "data")
    labels = np.arange(12) % 3
    labels[5] = 10**9
    np.save(root / "test" / "labels.npy", labels)
    with pytest.raises(ValueError, match=r"row 5 .*label 1000000000") as caught:
        load_dataset(f"files:{root}", split="test")
    _assert_clean_error(caught.value, str(root / "test" / "labels.npy"))
    with pytest.raises(ValueError, match=r"row 5 has label 1000000000"):
        MultimodalTensorDataset({"x": torch.zeros(12, 2)}, torch.from_numpy(labels)).validate()


# ============================================================== absent rows may hold NaN
def _nan_absent(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    vec = rng.normal(size=(n, 6)).astype(np.float32)
    present = np.ones(n, bool)
    present[::3] = False
    vec[~present] = np.nan
    return vec, present


def test_files_absent_rows_may_hold_nan_present_rows_may_not(tmp_path, capsys):
    vec, present = _nan_absent()
    root = _files(tmp_path / "data", n=32, vec=vec, masks={"vec": present})
    ds = load_dataset(f"files:{root}")
    ds.validate()  # refused before: "row 0 holds NaN or infinite values"
    for batch, _ in ds.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.isfinite(batch["vec"]).all()
    assert torch.isfinite(ds[0][0]["vec"]).all() and not bool(ds[0][0].mask["vec"])
    assert cli.main(_train_cli(root, tmp_path)) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["final_test_loss"])
    bad = vec.copy()
    bad[1, 2] = np.nan  # a present row
    np.save(root / "test" / "vec.npy", bad)
    with pytest.raises(ValueError, match=r"vec.npy: row 1 holds NaN"):
        load_dataset(f"files:{root}", split="test").validate()


def test_tensor_dataset_absent_rows_may_hold_nan(tmp_path):
    vec, present = _nan_absent()
    ds = MultimodalTensorDataset({"vec": torch.from_numpy(vec), "b": torch.zeros(32, 2)},
                                 torch.zeros(32).long(), masks={"vec": torch.from_numpy(present)})
    ds.validate()
    assert torch.isfinite(ds[0][0]["vec"]).all()
    for batch, _ in ds.batches(8):
        assert torch.isfinite(batch["vec"]).all()
    vec[1, 0] = np.nan
    ds = MultimodalTensorDataset({"vec": torch.from_numpy(vec), "b": torch.zeros(32, 2)},
                                 torch.zeros(32).long(), masks={"vec": torch.from_numpy(present)})
    with pytest.raises(ValueError, match="'vec' contains NaN or infinite values at row 1"):
        ds.validate()


# ====================================================== PolyMNIST splits, backgrounds
def _polymnist(root: Path, modalities: dict[str, int], count: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split, num in modalities.items():
        for m in range(num):
            folder = root / "PolyMNIST" / split / f"m{m}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i}.{i % 10}.png")


@pytest.mark.parametrize("split", ["train", "test"])
def test_polymnist_split_missing_a_modality_folder_is_refused(tmp_path, split):
    _polymnist(tmp_path, {"train": 3, "test": 2})  # test/m2 deleted
    with pytest.raises(ValueError, match=r"test.*m2") as caught:
        PolyMNIST(tmp_path, split, cache=False)
    _assert_clean_error(caught.value, str(tmp_path / "PolyMNIST" / "test"))


def test_polymnist_with_matching_splits_still_loads(tmp_path):
    _polymnist(tmp_path, {"train": 2, "test": 2})
    assert PolyMNIST(tmp_path, "test", cache=False).modalities == ("m0", "m1")


@pytest.mark.parametrize("damage", ["random-bytes", "empty", "truncated"])
def test_make_polymnist_unreadable_background_names_the_file(tmp_path, capsys, damage):
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(backgrounds / "a.png")
    Image.fromarray(pixels, "RGB").save(backgrounds / "b.jpg")
    raw = (backgrounds / "b.jpg").read_bytes()
    (backgrounds / "b.jpg").write_bytes({"random-bytes": os.urandom(2000), "empty": b"",
                                         "truncated": raw[: len(raw) // 3]}[damage])
    argv = ["make-polymnist", "--mnist-root", str(tmp_path / "mnist"), "--backgrounds",
            str(backgrounds), "--modalities", "2", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(backgrounds / "b.jpg") in err
    assert len(err.strip().splitlines()) == 1


# ============================================================ masks and the default dtype
def test_with_missing_masks_do_not_depend_on_the_default_dtype(tmp_path):
    root = _files(tmp_path / "data", n=200)
    files = load_dataset(f"files:{root}")
    tensors = MultimodalTensorDataset({"a": torch.zeros(200, 2), "b": torch.zeros(200, 3)},
                                      torch.zeros(200).long())
    assert isinstance(files, FileDataset)
    before = [ds.with_missing(0.4, 5).presence() for ds in (files, tensors)]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        after = [ds.with_missing(0.4, 5).presence() for ds in (files, tensors)]
    finally:
        torch.set_default_dtype(saved)
    assert torch.get_default_dtype() == saved
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)


# ================================================ host -> accelerator copies (issue 27, 3)
class _Spy:
    """Records every ``Tensor.to(device)``: (source, target, dtype, non_blocking). A copy out
    of the ``meta`` device (which has no data) gives zeros on the CPU."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str, torch.dtype, bool]] = []
        real = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            target = args[0] if args else kwargs.get("device")
            if isinstance(target, str | torch.device):
                target = torch.device(target)
                self.calls.append((tensor.device.type, target.type, tensor.dtype,
                                   bool(kwargs.get("non_blocking", False))))
                if tensor.device.type == "meta" and target.type == "cpu":
                    return torch.zeros(tensor.shape, dtype=tensor.dtype)
            return real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)


def _mixed_files(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_files(root / split, {"img": rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8),
                                   "tok": rng.integers(0, 5, (n, 3)).astype(np.int32),
                                   "vec": rng.normal(size=(n, 2))},  # float64
                    labels=np.arange(n) % 2, masks={"vec": np.arange(n) % 3 > 0})
    return root


def test_files_batches_cross_in_the_stored_dtype_and_convert_on_the_device(tmp_path,
                                                                            monkeypatch):
    ds = load_dataset(f"files:{_mixed_files(tmp_path / 'data')}")
    reference = next(iter(ds.batches(10)))[0]
    spy = _Spy(monkeypatch)
    batch, labels = next(iter(ds.batches(10, device="meta")))
    crossed = {dtype for _, target, dtype, _ in spy.calls if target == "meta"}
    assert torch.uint8 in crossed and torch.int32 in crossed  # converted after the copy
    assert torch.float64 not in crossed and not any(blocking for *_, blocking in spy.calls)
    assert batch["img"].dtype == torch.float32 and batch["img"].device.type == "meta"
    assert batch["tok"].dtype == torch.int64 and batch["vec"].dtype == torch.float32
    assert labels.device.type == "meta" and batch.mask["vec"].device.type == "meta"
    assert reference["img"].dtype == torch.float32 and reference["tok"].dtype == torch.int64


def test_tensor_batches_copy_asynchronously_only_towards_cuda(monkeypatch):
    ds = MultimodalTensorDataset({"img": torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
                                  "vec": torch.zeros(6, 3)}, torch.zeros(6).long())
    spy = _Spy(monkeypatch)
    batch, _ = next(iter(ds.batches(6, device="meta")))  # host -> another device
    assert batch["img"].dtype == torch.float32
    assert (("cpu", "meta", torch.uint8, False) in spy.calls
            and not any(blocking for *_, blocking in spy.calls))
    spy.calls.clear()
    on_device = ds.to("meta")
    batch, labels = next(iter(on_device.batches(6, device="cpu")))  # device -> host
    towards_cpu = [call for call in spy.calls if call[:2] == ("meta", "cpu")]
    assert len(towards_cpu) == 3 and not any(blocking for *_, blocking in towards_cpu)
    assert labels.device.type == "cpu" and batch["img"].device.type == "cpu"


def test_to_device_is_non_blocking_only_from_host_to_cuda():
    from pyro_mmvae.data.base import to_device

    class Fake:
        def __init__(self, device: str) -> None:
            self.device, self.calls = torch.device(device), []

        def to(self, device, non_blocking=False):
            self.calls.append((torch.device(device).type, non_blocking))
            return self

    cases = [("cpu", "cuda", True), ("cuda", "cpu", False), ("cuda:0", "cuda:1", False),
             ("meta", "cpu", False), ("cpu", "meta", False)]
    for source, target, expected in cases:
        fake = Fake(source)
        assert to_device(fake, torch.device(target)) is fake
        assert fake.calls == [(torch.device(target).type, expected)], (source, target)
    same = Fake("cpu")
    assert to_device(same, torch.device("cpu")) is same and same.calls == []


def test_pinned_gathers_only_for_cuda_and_match_the_plain_read(tmp_path, monkeypatch):
    from pyro_mmvae.data import base

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not base.pinned_for(torch.device("cuda")) and not base.pinned_for(
        torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert base.pinned_for(torch.device("cuda")) and not base.pinned_for(torch.device("cpu"))
    pinned = []
    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):  # no CUDA here: record, allocate plainly
        pinned.append(pin_memory)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    ds = load_dataset(f"files:{_mixed_files(tmp_path / 'data')}")
    rows = np.array([7, 2, 9, 0])
    plain, gathered = ds._read(rows), ds._read(rows, pin=True)
    assert pinned == [True] * 3
    assert all(torch.equal(plain[m], gathered[m]) and plain[m].dtype == gathered[m].dtype
               for m in plain)
    assert plain["img"].dtype == torch.uint8 and (plain["vec"][[2, 3]] == 0).all()  # absent
    moved = []
    monkeypatch.setattr(base, "to_device", lambda x, device: moved.append(device) or x)
    x = torch.arange(12, dtype=torch.uint8).reshape(6, 2)
    out = base.gather_rows(x, torch.tensor([4, 1]), torch.device("cuda"))
    assert out.dtype == torch.uint8 and out.tolist() == [[8, 9], [2, 3]]
    assert pinned[-1] and len(pinned) == 4 and moved == [torch.device("cuda")]
