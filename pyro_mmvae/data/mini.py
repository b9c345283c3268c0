"""``polymnist-mini``: a PolyMNIST-style dataset built in memory with no files or internet.

Digits come from scikit-learn's bundled ``load_digits()`` (1797 8x8 images, 16 grey levels),
upscaled to 20x20 inside a 28x28 canvas (MNIST's digit box), then composited exactly like
PolyMNIST (Sutter et al. 2021) over random 28x28 crops of one procedural background per modality.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pyro_mmvae.data.backgrounds import procedural_backgrounds
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.polymnist import composite, random_crop_corners

MINI_SIZES = {"train": 6000, "test": 1000}
_SPLIT_CODES = {"train": 0, "test": 1}
TEST_FRACTION = 0.2
DIGIT_BOX = 20
CANVAS = 28
BACKGROUND_SIZE = 256


def _bundled_digits_file() -> Path | None:
    """Path of scikit-learn's ``datasets/data/digits.csv.gz``, found without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()`` as float images (1797, 8, 8) in 0..16 and int64 labels.

    Reads the CSV that ``load_digits`` reads (64 pixels + label per row) directly, which avoids the
    seconds-long ``import sklearn``; falls back to ``load_digits()`` if the file is not there.
    """
    path = _bundled_digits_file()
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    if images.shape != (1797, 8, 8) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"unexpected scikit-learn digits data: images of shape {images.shape}.")
    return images, labels


@functools.lru_cache(maxsize=1)
def mnist_like_digits() -> np.ndarray:
    """All 1797 digits as MNIST-like uint8 images (1797, 28, 28) in 0..255.

    Each 8x8 image is scaled to 0..255 (x * 255 / 16), upscaled bilinearly to 20x20 and centred in
    a black 28x28 canvas (a 4-pixel margin, as MNIST's 20x20 digit box).
    """
    images, _ = _sklearn_digits()
    small = torch.from_numpy(images * (255.0 / 16.0)).unsqueeze(1)
    large = F.interpolate(small, size=(DIGIT_BOX, DIGIT_BOX), mode="bilinear", align_corners=False)
    margin = (CANVAS - DIGIT_BOX) // 2
    canvas = np.zeros((len(images), CANVAS, CANVAS), dtype=np.uint8)
    box = large.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    canvas[:, margin : margin + DIGIT_BOX, margin : margin + DIGIT_BOX] = box
    return canvas


@functools.lru_cache(maxsize=8)
def mini_source_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 80/20 split of the 1797 ``load_digits`` indices: (train, test), sorted.

    Each class is shuffled with ``default_rng(SeedSequence([seed, 1797]))`` and its first
    ``round(0.2 * n_class)`` members go to the test split, so no test digit is seen in training.

    Args:
        seed: seed of the per-class shuffles (the same seed gives the same split; memoised).

    Returns:
        ``(train, test)``: sorted, read-only int64 index arrays into ``load_digits()``.
    """
    _, labels = _sklearn_digits()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), len(labels)]))
    train, test = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    train_idx.flags.writeable = False
    test_idx.flags.writeable = False
    return train_idx, test_idx


def _draw_within_class(
    labels: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For every tuple label pick a source digit of that class from ``pool``: each class's pool
    is cycled through in fresh random orders, so every source is used about equally often."""
    sources = np.empty(len(labels), dtype=np.int64)
    for label in range(10):
        slots = np.flatnonzero(labels == label)
        members = pool[pool_labels == label]
        rounds = -(-len(slots) // len(members))
        order = np.concatenate([rng.permutation(members) for _ in range(rounds)])
        sources[slots] = order[: len(slots)]
    return sources


@functools.lru_cache(maxsize=16)
def _build_mini(
    split: str, num_modalities: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (M, N, 3, 28, 28) uint8, labels (N,) and source indices (M, N) of one split."""
    train_idx, test_idx = mini_source_split(seed)
    pool = train_idx if split == "train" else test_idx
    _, all_labels = _sklearn_digits()
    digits = mnist_like_digits()
    count = MINI_SIZES[split]
    code = _SPLIT_CODES[split]
    label_rng = np.random.default_rng(np.random.SeedSequence([seed, code, 1_000_003]))
    labels = label_rng.permutation(np.repeat(np.arange(10), count // 10))
    backgrounds = procedural_backgrounds(num_modalities, size=BACKGROUND_SIZE, seed=seed)
    images = np.empty((num_modalities, count, 3, CANVAS, CANVAS), dtype=np.uint8)
    sources = np.empty((num_modalities, count), dtype=np.int64)
    for m, background in enumerate(backgrounds):
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, m]))
        sources[m] = _draw_within_class(labels, pool, all_labels[pool], rng)
        ys, xs = random_crop_corners(rng, count, *background.shape[:2])
        images[m] = composite(digits[sources[m]], background, ys, xs).transpose(0, 3, 1, 2)
    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(sources)


def polymnist_mini(
    split: str = "train", num_modalities: int = 5, seed: int = 0
) -> MultimodalTensorDataset:
    """The offline default dataset ``"polymnist-mini"``: 6000 train / 1000 test tuples.

    Modality ``m{i}`` shows a ``load_digits`` digit (MNIST-like, see :func:`mnist_like_digits`)
    over a random crop of procedural background i, colours inverted under the digit. Tuple labels
    are balanced (600 / 100 per class); each modality draws its own source digit of that class,
    so a tuple shares only the label. Train and test draw from disjoint source digits
    (:func:`mini_source_split`). Built once per (split, num_modalities, seed) and memoised; the
    returned dataset has ``source_indices`` (modality -> indices into ``load_digits()``).
    The stored tensors are shared between calls: do not modify them in place.

    Args:
        split: ``"train"`` (6000 tuples) or ``"test"`` (1000 tuples).
        num_modalities: M, the number of modalities ``m0 .. m{M-1}``, each uint8
            ``(N, 3, 28, 28)`` (returned by the batches as float32 in [0, 1]); default 5.
        seed: seed of the source split, the backgrounds, the labels and the crops.
    """
    if split not in MINI_SIZES:
        raise ValueError(f"unknown split {split!r} for polymnist-mini; use 'train' or 'test'.")
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int):
        raise ValueError(f"num_modalities must be an int, got {num_modalities!r}.")
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}.")
    images, labels, sources = _build_mini(split, num_modalities, int(seed))
    names = [f"m{m}" for m in range(num_modalities)]
    dataset = MultimodalTensorDataset(
        dict(zip(names, images, strict=True)), labels, name="polymnist-mini"
    )
    dataset.source_indices = dict(zip(names, sources, strict=True))
    return dataset
