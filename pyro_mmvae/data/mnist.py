"""MNIST from the original IDX files (LeCun et al. 1998), gzip-compressed or raw.

IDX layout: a big-endian header ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the row-major payload.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    """Return the file's bytes, gunzipped when it is a gzip file (by magic, not by name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path} is a corrupt or truncated gzip file ({error}); download it again."
        ) from error


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared dtype and shape.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a bad magic number or
    a payload whose size does not match the header (truncated or corrupt file).

    Args:
        path: the IDX file, gzip-compressed (recognised by its content) or raw.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    buffer = _read_bytes(path)
    if len(buffer) < 4:
        raise ValueError(f"{path} is too short ({len(buffer)} bytes) to be an IDX file.")
    zero0, zero1, code, ndim = buffer[:4]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path} is not an IDX file: bad magic number 0x{buffer[:4].hex()} (expected "
            "0x0000 followed by a dtype code and the number of dimensions)."
        )
    header_size = 4 + 4 * ndim
    if len(buffer) < header_size:
        raise ValueError(f"{path} is truncated inside its IDX header.")
    shape = tuple(int(s) for s in np.frombuffer(buffer, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(buffer) - header_size
    if actual != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes of "
            f"data) but the file holds {actual} bytes; download it again."
        )
    array = np.frombuffer(buffer, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_mnist_file(root: str | Path, stem: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``root`` or torchvision's ``root/MNIST/raw``.

    Args:
        root: the folder given by the user (also searched: ``root/MNIST/raw``,
            ``root/raw``).
        stem: the file name without ``.gz``, e.g. ``"train-images-idx3-ubyte"`` (the dotted
            form ``train-images.idx3-ubyte`` of some mirrors is found too).
    """
    root = Path(root)
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    for folder in folders:
        dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"MNIST file {stem}(.gz) not found; looked in {looked}. Pass the folder that holds the "
        "four MNIST IDX files (e.g. torchvision's download root)."
    )


def load_mnist(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load an MNIST split: uint8 images (N, 28, 28) and int64 labels (N,).

    ``split`` is ``"train"`` (60000 images) or ``"test"`` (10000, the t10k files).

    Args:
        root: the folder holding the four IDX files (raw or ``.gz``), or torchvision's MNIST
            download root (see :func:`find_mnist_file`).
        split: ``"train"`` or ``"test"``.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"unknown MNIST split {split!r}; use one of {sorted(MNIST_FILES)}.")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"MNIST root folder {root} does not exist.")
    image_stem, label_stem = MNIST_FILES[split]
    images = read_idx(find_mnist_file(root, image_stem))
    labels = read_idx(find_mnist_file(root, label_stem))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"MNIST {split} images must be uint8 (N, H, W), got {images.shape}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"MNIST {split}: {images.shape[0]} images but labels of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"MNIST {split} labels must lie in 0..9.")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
