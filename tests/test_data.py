"""Tests of the data layer: IDX reader, PolyMNIST generator and loader, mini dataset, batching."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_mmvae.data import (
    DATASETS,
    MultimodalTensorDataset,
    PolyMNIST,
    default_data_root,
    load_backgrounds,
    load_dataset,
    load_mnist,
    make_polymnist,
    mini_source_split,
    polymnist_mini,
    procedural_backgrounds,
    read_idx,
)

torch.set_num_threads(1)

MNIST_DIR = (
    Path(os.environ["PYRO_MMVAE_DATA_ROOT"]) / "mnist"
    if os.environ.get("PYRO_MMVAE_DATA_ROOT")
    else Path(__file__).resolve().parents[2] / "shared/data/mnist"
)
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn load_digits
FAKE_SIZES = {"train": 80, "test": 40}
LIMIT = 50
NUM_MODALITIES = 5
# Pixel values around the > 128 threshold, so off-by-one binarisation fails the tests.
DIGIT_VALUES = np.array([0, 60, 127, 128, 129, 200, 255], dtype=np.uint8)


# ------------------------------------------------------------------------------ helpers
def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8 or int32) as an IDX file."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def fake_mnist(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a tiny MNIST (80 train, 40 test) as IDX files; return the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        n = FAKE_SIZES[split]
        images = rng.choice(DIGIT_VALUES, size=(n, 28, 28))
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)  # raw, not gzip
        arrays[split] = (images, labels.astype(np.int64))
    return arrays


def png_labels(folder: Path) -> list[int]:
    """Labels of ``{idx}.{label}.png`` files ordered by idx."""
    names = sorted(os.listdir(folder), key=lambda n: int(n.split(".")[0]))
    return [int(n.split(".")[1]) for n in names]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def find_composite_source(
    image: np.ndarray, candidates: np.ndarray, digits: np.ndarray, background: np.ndarray
) -> int | None:
    """Brute force: the candidate digit j and crop (y, x) with image == crop off the digit and
    255 - crop on it (digit > 128). Returns j, or None when nothing matches."""
    height, width = background.shape[:2]
    for j in candidates:
        on = digits[j] > 128
        for y in range(height - 27):
            for x in range(width - 27):
                crop = background[y : y + 28, x : x + 28].astype(np.int16)
                expected = np.where(on[..., None], 255 - crop, crop)
                if np.array_equal(expected, image):
                    return int(j)
    return None


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Fake MNIST, six noise backgrounds, and PolyMNIST made three times (seeds 0, 0, 1)."""
    base = tmp_path_factory.mktemp("polymnist")
    mnist = fake_mnist(base / "mnist")
    rng = np.random.default_rng(1)
    backgrounds = base / "backgrounds"
    backgrounds.mkdir()
    for k in range(6):
        size = (31 + k, 36)  # (H, W): small, so brute-force crop search is cheap
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(
            backgrounds / f"bg{k}.png"
        )
    (backgrounds / "notes.txt").write_text("not an image")
    outs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        outs[key] = make_polymnist(
            base / "mnist", backgrounds, NUM_MODALITIES, seed, out=base / key, limit=LIMIT
        )
    return {"base": base, "mnist": mnist, "backgrounds": backgrounds, "outs": outs}


# ------------------------------------------------------------------------------ IDX / MNIST
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="the verified MNIST files are not present")
def test_real_mnist_shapes_and_test_class_counts():
    images, labels = load_mnist(MNIST_DIR, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.bincount().tolist() == TEST_CLASS_COUNTS
    train_labels = read_idx(next(MNIST_DIR.glob("train-labels-idx1-ubyte*")))
    assert train_labels.shape == (60000,)
    assert train_labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_read_idx_roundtrip_raw_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 7
    for compress in (False, True):
        path = write_idx(tmp_path / f"a{compress}.idx", array, compress=compress)
        loaded = read_idx(path)
        assert loaded.dtype == np.int32 and np.array_equal(loaded, array)


def test_read_idx_rejects_truncated_and_corrupt_files(tmp_path):
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    full = write_idx(tmp_path / "full", images).read_bytes()
    (tmp_path / "truncated").write_bytes(full[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "truncated")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + full[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(full)[:-50])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "broken.gz")
    (tmp_path / "tiny").write_bytes(b"\x00")
    with pytest.raises(ValueError):
        read_idx(tmp_path / "tiny")


def test_load_mnist_missing_file_and_torchvision_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    arrays = fake_mnist(tmp_path / "MNIST" / "raw")
    images, labels = load_mnist(tmp_path, "test")  # found in root/MNIST/raw
    assert np.array_equal(images.numpy(), arrays["test"][0])
    assert np.array_equal(labels.numpy(), arrays["test"][1])
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as error:
        load_mnist(tmp_path, "test")
    assert str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


# ------------------------------------------------------------------------------ generator
def test_make_polymnist_layout_and_labels(generated):
    root = generated["outs"]["a"]
    assert root.name == "PolyMNIST"
    for split in ("train", "test"):
        source_labels = generated["mnist"][split][1][:LIMIT]
        for m in range(NUM_MODALITIES):
            folder = root / split / f"m{m}"
            labels = png_labels(folder)
            assert len(labels) == min(LIMIT, FAKE_SIZES[split])
            assert labels == source_labels.tolist()  # idx = index in split, label after it
            assert sorted(labels) == sorted(source_labels.tolist())
        assert not (root / split / f"m{NUM_MODALITIES}").exists()


def test_make_polymnist_is_reproducible(generated):
    outs = generated["outs"]
    first, second, other = (tree_bytes(outs[k]) for k in ("a", "b", "c"))
    assert len(first) == NUM_MODALITIES * (LIMIT + FAKE_SIZES["test"])
    assert first == second  # same seed: byte-identical files
    assert first.keys() == other.keys()  # same names (labels), different pixels
    assert sum(first[k] != other[k] for k in first) > 0.9 * len(first)


def test_make_polymnist_composites_inverted_crops_of_same_class(generated):
    images, labels = generated["mnist"]["train"]
    images, labels = images[:LIMIT], labels[:LIMIT]
    backgrounds = load_backgrounds(generated["backgrounds"])
    assert len(backgrounds) == 6  # notes.txt is skipped
    root = generated["outs"]["a"] / "train"
    sources = {}
    for m in (0, 3):
        folder = root / f"m{m}"
        for i in range(12):
            image = read_png(folder / f"{i}.{labels[i]}.png").astype(np.int16)
            candidates = np.flatnonzero(labels == labels[i])
            source = find_composite_source(image, candidates, images, backgrounds[m])
            assert source is not None, f"m{m}/{i} is not an inverted crop of background {m}"
            sources[m, i] = source
    # independent within-class shuffles: the modalities do not all show the same source digit
    assert any(sources[0, i] != sources[3, i] for i in range(12))


def test_make_polymnist_procedural_and_errors(generated, tmp_path):
    mnist = generated["base"] / "mnist"
    root = make_polymnist(mnist, "procedural", 3, 0, out=tmp_path / "p", splits=("test",), limit=20)
    assert sorted(p.name for p in (root / "test").iterdir() if p.is_dir()) == ["m0", "m1", "m2"]
    assert len(list((root / "test" / "m2").glob("*.png"))) == 20
    assert not (root / "train").exists()
    with pytest.raises(ValueError, match="background"):
        make_polymnist(mnist, generated["backgrounds"], 7, out=tmp_path / "q", limit=5)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_polymnist(mnist, "procedural", 3, out=tmp_path / "p", splits=("test",), limit=5)
    make_polymnist(
        mnist, "procedural", 2, out=tmp_path / "p", splits=("test",), limit=5, overwrite=True
    )
    assert len(list((root / "test" / "m0").glob("*.png"))) == 5
    assert not (root / "test" / "m2").exists()  # a stale modality would join the tuples
    assert PolyMNIST(root, "test").modalities == ("m0", "m1")
    with pytest.raises(ValueError, match="seed"):
        make_polymnist(mnist, "procedural", 2, -1, out=tmp_path / "r", limit=5)


def test_procedural_backgrounds_are_distinct_and_seeded():
    first = procedural_backgrounds(4, size=64, seed=3)
    again = procedural_backgrounds(6, size=64, seed=3)
    other = procedural_backgrounds(4, size=64, seed=4)
    assert all(b.shape == (64, 64, 3) and b.dtype == np.uint8 for b in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert not np.array_equal(first[0], other[0])
    means = np.array([b.reshape(-1, 3).mean(0) for b in first])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[np.triu_indices(4, 1)].min() > 20  # clearly different colours
    assert all(b.std() > 10 for b in first)  # textured, not flat


# ------------------------------------------------------------------------------ loader
def test_polymnist_loader_reads_pairs_and_caches(generated, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(generated["outs"]["a"].parent, root)
    dataset = PolyMNIST(root, "train")
    labels = generated["mnist"]["train"][1][:LIMIT]
    assert dataset.name == "polymnist"
    assert dataset.modalities == tuple(f"m{m}" for m in range(NUM_MODALITIES))
    assert dataset.event_shapes["m4"] == (3, 28, 28) and len(dataset) == LIMIT
    assert dataset.data["m0"].dtype == torch.uint8
    assert dataset.labels.tolist() == labels.tolist()
    for m in (0, 4):
        png = read_png(root / "PolyMNIST" / "train" / f"m{m}" / f"7.{labels[7]}.png")
        assert np.array_equal(dataset.data[f"m{m}"][7].permute(1, 2, 0).numpy(), png)
    x, y = dataset[7]
    assert y == labels[7] and x["m2"].dtype == torch.float32 and float(x["m2"].max()) <= 1
    assert (root / "PolyMNIST" / "train.cache.pt").is_file()

    cached = PolyMNIST(root / "PolyMNIST", "train")  # the PolyMNIST folder itself as root
    uncached = PolyMNIST(root, "train", cache=False)
    for m in dataset.modalities:
        assert torch.equal(cached.data[m], dataset.data[m])
        assert torch.equal(uncached.data[m], dataset.data[m])
    subset = PolyMNIST(root, "test", modalities=[0, 2])
    assert subset.modalities == ("m0", "m2") and len(subset) == FAKE_SIZES["test"]

    # the cache follows the file list: drop the last index from every modality
    last = LIMIT - 1
    for m in range(NUM_MODALITIES):
        (root / "PolyMNIST" / "train" / f"m{m}" / f"{last}.{labels[last]}.png").unlink()
    assert len(PolyMNIST(root, "train")) == LIMIT - 1


def test_polymnist_cache_falls_back_to_user_cache(generated, tmp_path, monkeypatch):
    import tempfile

    root = tmp_path / "readonly"
    shutil.copytree(generated["outs"]["a"].parent, root)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # the data folder refuses new files
        if Path(dir).resolve() == (root / "PolyMNIST").resolve():
            raise PermissionError("read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    first = PolyMNIST(root, "test")
    assert not (root / "PolyMNIST" / "test.cache.pt").exists()
    caches = list((tmp_path / "user-cache" / "pyro_mmvae").rglob("*-test.cache.pt"))
    assert len(caches) == 1
    second = PolyMNIST(root, "test")
    assert all(torch.equal(first.data[m], second.data[m]) for m in first.modalities)


def test_polymnist_loader_rejects_mismatched_folders(generated, tmp_path):
    split = tmp_path / "train"
    shutil.copytree(generated["outs"]["a"] / "train", split)  # root with train/ directly
    labels = generated["mnist"]["train"][1][:LIMIT]
    first = split / "m1" / f"0.{labels[0]}.png"
    wrong = (labels[0] + 1) % 10
    first.rename(split / "m1" / f"0.{wrong}.png")
    with pytest.raises(ValueError, match="label"):
        PolyMNIST(tmp_path, "train", cache=False)
    (split / "m1" / f"0.{wrong}.png").unlink()
    with pytest.raises(ValueError, match="pair"):
        PolyMNIST(tmp_path, "train", cache=False)
    with pytest.raises(ValueError, match="modalities"):
        PolyMNIST(generated["outs"]["a"], "train", modalities=[9])


# ------------------------------------------------------------------------------ registry
def test_registry_errors_and_default_root(generated, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="polymnist-mini"):
        load_dataset("mnist-svhn")
    monkeypatch.delenv("PYRO_MMVAE_DATA_ROOT", raising=False)
    assert default_data_root() is None
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("polymnist")
    with pytest.raises(FileNotFoundError, match="pyro-mmvae make-polymnist --mnist-root"):
        load_dataset("polymnist", root=tmp_path)
    monkeypatch.setenv("PYRO_MMVAE_DATA_ROOT", str(generated["outs"]["a"].parent))
    assert default_data_root() == generated["outs"]["a"].parent
    assert len(load_dataset("polymnist", split="test")) == FAKE_SIZES["test"]
    assert DATASETS == ("polymnist-mini", "polymnist", "captions-mini")


# ------------------------------------------------------------------------------ mini
def test_polymnist_mini_shapes_balance_and_determinism():
    train, test = polymnist_mini("train"), load_dataset("polymnist-mini", split="test")
    assert train.name == "polymnist-mini" and len(train) == 6000 and len(test) == 1000
    assert train.modalities == ("m0", "m1", "m2", "m3", "m4")
    assert all(x.dtype == torch.uint8 and x.shape == (6000, 3, 28, 28) for x in train.data.values())
    assert train.labels.bincount().tolist() == [600] * 10
    assert test.labels.bincount().tolist() == [100] * 10
    train.validate()
    again = polymnist_mini("train")
    assert all(torch.equal(again.data[m], train.data[m]) for m in train.modalities)
    other = polymnist_mini("train", num_modalities=2, seed=1)
    assert other.modalities == ("m0", "m1") and not torch.equal(other.data["m0"], train.data["m0"])
    # modalities look different: distinct mean colours per modality
    means = torch.stack([x.float().mean((0, 2, 3)) for x in train.data.values()])
    assert torch.cdist(means, means)[torch.triu_indices(5, 5, 1).unbind()].min() > 10


def test_polymnist_mini_rebuild_is_deterministic():
    from pyro_mmvae.data.mini import _build_mini

    before = polymnist_mini("test", num_modalities=3, seed=5)
    _build_mini.cache_clear()
    after = polymnist_mini("test", num_modalities=3, seed=5)
    assert all(torch.equal(before.data[m], after.data[m]) for m in before.modalities)
    assert torch.equal(before.labels, after.labels)


def test_polymnist_mini_train_test_sources_disjoint():
    train_idx, test_idx = mini_source_split(0)
    assert len(set(train_idx) & set(test_idx)) == 0 and len(train_idx) + len(test_idx) == 1797
    from pyro_mmvae.data.mini import _sklearn_digits

    digit_images, digit_labels = _sklearn_digits()  # load_digits() read without sklearn import
    assert digit_images.shape == (1797, 8, 8) and digit_images.max() == 16
    assert np.bincount(digit_labels).tolist() == DIGITS_CLASS_COUNTS
    train, test = polymnist_mini("train"), polymnist_mini("test")
    used_train = torch.cat(list(train.source_indices.values())).unique().numpy()
    used_test = torch.cat(list(test.source_indices.values())).unique().numpy()
    assert set(used_train) <= set(train_idx) and set(used_test) <= set(test_idx)
    for m, sources in train.source_indices.items():  # each source digit has the tuple's label
        assert np.array_equal(digit_labels[sources.numpy()], train.labels.numpy()), m
    shared = (train.source_indices["m0"] == train.source_indices["m1"]).float().mean()
    assert shared < 0.1  # tuples share the label, not the digit image


# ------------------------------------------------------------------------------ base
def toy_dataset(n: int = 23) -> MultimodalTensorDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    features = torch.arange(n, dtype=torch.float32).unsqueeze(1) / n
    return MultimodalTensorDataset({"img": images, "vec": features}, torch.arange(n), "toy")


def test_batches_cover_every_index_once_and_are_seeded():
    dataset = toy_dataset()
    seen = []
    for batch, labels in dataset.batches(
        5, shuffle=True, generator=torch.Generator().manual_seed(0)
    ):
        assert batch["img"].dtype == torch.float32
        assert torch.allclose(batch["img"][:, 0, 0, 0] * 255, labels.float())
        assert torch.allclose(batch["vec"][:, 0] * len(dataset), labels.float())
        seen.append(labels)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(len(dataset)))
    assert order.tolist() != list(range(len(dataset)))

    def epoch(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in dataset.batches(4, shuffle=True, generator=g)]).tolist()

    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    sizes = [len(y) for _, y in dataset.batches(5, drop_last=True)]
    assert sizes == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="batch_size"):
        next(dataset.batches(0))


def test_getitem_subset_and_shapes():
    dataset = toy_dataset()
    x, y = dataset[3]
    assert y == 3 and torch.allclose(x["img"], torch.full((1, 2, 2), 3 / 255))
    assert dataset.event_shapes == {"img": torch.Size([1, 2, 2]), "vec": torch.Size([1])}
    part = dataset.subset([4, 1])
    assert part.labels.tolist() == [4, 1] and part.name == "toy"
    mask = dataset.labels % 2 == 0
    assert dataset.subset(mask).labels.tolist() == list(range(0, 23, 2))
    with pytest.raises(IndexError):
        dataset[23]


def test_validate_and_constructor_errors():
    bad = torch.rand(4, 3, 2, 2)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'m1'.*NaN"):
        MultimodalTensorDataset(
            {"m0": torch.rand(4, 3, 2, 2), "m1": bad}, torch.zeros(4, dtype=torch.long)
        ).validate()
    with pytest.raises(ValueError, match=r"'m0'.*\[0, 1\]"):
        MultimodalTensorDataset(
            {"m0": torch.rand(4, 3, 2, 2) * 2}, torch.zeros(4, dtype=torch.long)
        ).validate()
    with pytest.raises(ValueError, match="'m1' has 3"):
        MultimodalTensorDataset(
            {"m0": torch.rand(4, 3, 2, 2), "m1": torch.rand(3, 3, 2, 2)},
            torch.zeros(4, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="empty"):
        MultimodalTensorDataset(
            {"m0": torch.rand(0, 3)}, torch.zeros(0, dtype=torch.long)
        ).validate()
    with pytest.raises(ValueError, match="non-empty"):
        MultimodalTensorDataset({}, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        MultimodalTensorDataset({"m0": torch.rand(4, 3)}, torch.rand(4))
    MultimodalTensorDataset(
        {"m0": torch.rand(4, 3, 2, 2)}, torch.zeros(4, dtype=torch.long)
    ).validate()
