"""An image–caption benchmark: a digit image and a short caption naming the digit.

Each tuple is a grey 1x28x28 digit and a caption of :data:`CAPTION_LENGTH` token ids: the
digit's English word (``"seven"``) at a random position among random filler words (``"a
small ink mark on paper ..."``). The caption names the class, and nothing else in it does;
the filler is noise the decoder must model. Token ids: 0..9 are the digit words ``zero`` ..
``nine``, then the filler words (:data:`VOCABULARY`).

* ``pyro-mmvae make-captions --mnist-root DIR --out OUT --seed S`` writes it from MNIST in the
  files format (:mod:`pyro_mmvae.data.files`): ``OUT/{train,test}/image.npy`` (uint8),
  ``caption.npy`` (int64), ``caption.vocab``, ``labels.npy``, and ``OUT/vocabulary.txt``;
  train with ``--dataset files:OUT``.
* ``captions-mini`` (``load_dataset("captions-mini")``) is built in memory from
  scikit-learn's digits, like ``polymnist-mini``: 6000 train / 1000 test tuples.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.files import write_files
from pyro_mmvae.data.mini import (
    MINI_SIZES,
    _draw_within_class,
    _sklearn_digits,
    mini_source_split,
    mnist_like_digits,
)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILLER_WORDS = ("a", "the", "this", "is", "small", "large", "ink", "mark", "on", "paper",
                "written", "by", "hand", "digit", "shows", "number", "picture", "of", "here",
                "grey")
#: Token id -> word.
VOCABULARY: tuple[str, ...] = DIGIT_WORDS + FILLER_WORDS
CAPTION_LENGTH = 8
_SPLIT_CODES = {"train": 0, "test": 1}


def make_captions_for(labels: np.ndarray, rng: np.random.Generator,
                      length: int = CAPTION_LENGTH) -> np.ndarray:
    """Captions (N, length) int64: filler ids drawn uniformly, the digit's word id at one
    uniformly drawn position.

    Args:
        labels: digit classes ``(N,)`` in 0..9 (a 1-D integer array).
        rng: the NumPy generator the filler words and positions are drawn from.
        length: tokens per caption L (default :data:`CAPTION_LENGTH`, 8).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError("caption labels must be digits 0..9 in a 1-D array")
    n = len(labels)
    captions = rng.integers(len(DIGIT_WORDS), len(VOCABULARY), size=(n, length))
    position = rng.integers(0, length, size=n)
    captions[np.arange(n), position] = labels
    return captions.astype(np.int64)


def decode_caption(tokens) -> str:
    """The words of a caption's token ids.

    Args:
        tokens: token ids ``(L,)`` over :data:`VOCABULARY` (a list, array or tensor).

    Returns:
        The words joined by single spaces.
    """
    return " ".join(VOCABULARY[int(t)] for t in tokens)


@functools.lru_cache(maxsize=4)
def _build_captions_mini(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    train_idx, test_idx = mini_source_split(seed)
    pool = train_idx if split == "train" else test_idx
    _, all_labels = _sklearn_digits()
    count, code = MINI_SIZES[split], _SPLIT_CODES[split]
    rng = np.random.default_rng(np.random.SeedSequence([seed, code, 7_000_001]))
    labels = rng.permutation(np.repeat(np.arange(10), count // 10))
    sources = _draw_within_class(labels, pool, all_labels[pool], rng)
    images = mnist_like_digits()[sources][:, None]
    captions = make_captions_for(labels, rng)
    return (torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(captions),
            torch.from_numpy(labels))


def captions_mini(split: str = "train", seed: int = 0) -> MultimodalTensorDataset:
    """``captions-mini``: modality ``image`` (1x28x28 uint8, scikit-learn digits upscaled as
    in ``polymnist-mini``) and ``caption`` (8 token ids over :data:`VOCABULARY`), 6000 train /
    1000 test tuples with balanced labels; train and test use disjoint source digits.

    Args:
        split: ``"train"`` (6000 tuples) or ``"test"`` (1000 tuples).
        seed: seed of the train/test source split (:func:`~pyro_mmvae.data.mini.mini_source_split`),
            the labels, the source digits and the captions.
    """
    if split not in MINI_SIZES:
        raise ValueError(f"unknown split {split!r} for captions-mini; use 'train' or 'test'.")
    images, captions, labels = _build_captions_mini(split, int(seed))
    return MultimodalTensorDataset({"image": images, "caption": captions}, labels,
                                   name="captions-mini",
                                   vocab_sizes={"caption": len(VOCABULARY)})


def make_captions(mnist_root: str | Path, out: str | Path, seed: int = 0,
                  limit: int | None = None) -> Path:
    """Write the MNIST image–caption dataset to ``out`` in the files format (see the module
    docstring); the same seed writes the same files. ``limit`` keeps the first N images of
    each split.

    Args:
        mnist_root: the folder holding the four MNIST IDX files (as for
            :func:`~pyro_mmvae.data.mnist.load_mnist`).
        out: the output folder; ``out/train``, ``out/test`` and ``out/vocabulary.txt`` are
            written (existing files overwritten).
        seed: seed of the captions' filler words and digit-word positions.
        limit: keep the first ``limit`` images of each split; None keeps them all.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (use it as ``files:OUT``).
    """
    from pyro_mmvae.data.mnist import load_mnist

    out = Path(out)
    for split in ("train", "test"):
        images, labels = load_mnist(mnist_root, split)
        images, labels = images.numpy(), labels.numpy()
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split]]))
        write_files(out / split, {"image": images.reshape(-1, 1, 28, 28).astype(np.uint8),
                                  "caption": make_captions_for(labels, rng)},
                    labels=labels, vocab_sizes={"caption": len(VOCABULARY)})
    (out / "vocabulary.txt").write_text("\n".join(VOCABULARY) + "\n")
    return out
