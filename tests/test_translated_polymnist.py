"""Translated PolyMNIST: digits shrunk to 0.75 and placed at random positions, seeded."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_mmvae.cli import main
from pyro_mmvae.data import make_polymnist
from pyro_mmvae.data.polymnist import place_digits, shrink_digits

torch.set_num_threads(1)
N, MODALITIES = 30, 2


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def square_digits(num: int) -> np.ndarray:
    """MNIST-like images: a solid 20x20 square in the 4-pixel-margin digit box."""
    digits = np.zeros((num, 28, 28), dtype=np.uint8)
    digits[:, 4:24, 4:24] = 255
    return digits


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mnist")
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", square_digits(N))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(N) % 10)
    return folder


def make(mnist: Path, out: Path, seed: int = 0, translate: bool = True) -> Path:
    return make_polymnist(mnist, "procedural", MODALITIES, seed, out=out, translate=translate,
                          splits=("test",))


def pixels(root: Path, m: int, index: int) -> np.ndarray:
    (path,) = (root / "test" / f"m{m}").glob(f"{index}.*.png")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_shrink_and_place():
    small = shrink_digits(square_digits(2))
    assert small.shape == (2, 21, 21) and small.dtype == np.uint8
    on = np.argwhere(small[0] > 128)
    assert 14 <= np.ptp(on[:, 0]) + 1 <= 16  # the 20-pixel square becomes ~15 pixels
    placed = place_digits(small, np.array([0, 7]), np.array([7, 0]))
    assert placed.shape == (2, 28, 28)
    assert np.array_equal(placed[0, 0:21, 7:28], small[0]) and placed[0, 21:].max() == 0
    assert np.array_equal(placed[1, 7:28, 0:21], small[1]) and placed[1, :7].max() == 0
    with pytest.raises(ValueError, match="positions"):
        place_digits(small, np.array([8, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="digit_scale"):
        shrink_digits(square_digits(1), 1.5)


def test_translated_layout_reproducibility_and_moving_digits(mnist, tmp_path):
    first = make(mnist, tmp_path / "a")
    again = make(mnist, tmp_path / "b")
    other = make(mnist, tmp_path / "c", seed=1)
    plain = make(mnist, tmp_path / "p", translate=False)
    for m in range(MODALITIES):
        names = sorted(p.name for p in (first / "test" / f"m{m}").glob("*.png"))
        assert len(names) == N
    assert tree_bytes(first) == tree_bytes(again)  # seeded: byte-identical
    assert tree_bytes(first) != tree_bytes(other)
    info = json.loads((first / "test" / "generator.json").read_text())
    assert info["translated"] == {"digit_scale": 0.75}

    # Same seed: same permutations and background crops as plain PolyMNIST, so the crop is
    # recoverable from the plain image (whose digit is the known centred square) and the
    # translated digit is wherever the translated image differs from the crop.
    shrunk = shrink_digits(square_digits(1))[0] > 128
    centred = square_digits(1)[0] > 128
    corners = set()
    for m in range(MODALITIES):
        for i in range(N):
            p, t = pixels(plain, m, i), pixels(first, m, i)
            crop = np.where(centred[..., None], 255 - p, p)
            mask = (t != crop).all(-1)
            assert np.array_equal(t, np.where(mask[..., None], 255 - crop, crop))
            ys, xs = np.nonzero(mask)
            offset = (ys.min() - np.argwhere(shrunk)[:, 0].min(),
                      xs.min() - np.argwhere(shrunk)[:, 1].min())
            assert 0 <= offset[0] <= 7 and 0 <= offset[1] <= 7
            placed = place_digits(shrunk[None].astype(np.uint8), *map(np.array, ([offset[0]],
                                                                                 [offset[1]])))
            assert np.array_equal(mask, placed[0] > 0)
            corners.add(offset)
    assert len(corners) > 10  # the digit's bounding box moves


def test_cli_translated_flag(mnist, tmp_path):
    code = main(["make-polymnist", "--mnist-root", str(mnist), "--backgrounds", "procedural",
                 "--modalities", "2", "--out", str(tmp_path / "cli"), "--splits", "test",
                 "--translated"])
    assert code == 0
    assert tree_bytes(tmp_path / "cli" / "PolyMNIST") == tree_bytes(make(mnist, tmp_path / "d"))
