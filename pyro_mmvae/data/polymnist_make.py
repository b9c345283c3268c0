"""PolyMNIST generator (Sutter, Daunhawer & Vogt, ICLR 2021): ``make_polymnist``.

Modality m shows an MNIST digit over a random 28x28 crop of background image m, the digit
binarised at > 128 and the background's colours inverted under it (``c -> 1 - c``). For every
split, modality and digit class the MNIST images are shuffled independently, so files with the
same index in different modalities share only the label.
Layout: ``PolyMNIST/{split}/m{i}/{idx}.{label}.png`` (read by :mod:`pyro_mmvae.data.polymnist`).

Translated PolyMNIST (the harder variant of *Mitigating the limitations of multimodal VAEs
with coordination-based approach*, 2023, the CRMVAE paper): before compositing, each
28x28 MNIST image is scaled by 0.75 (to 21x21) and pasted at a uniformly random position of a
black 28x28 canvas (``make_polymnist(..., translate=True)``; CLI ``--translated``).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pyro_mmvae.data.backgrounds import background_files, load_backgrounds, procedural_backgrounds
from pyro_mmvae.data.mnist import load_mnist

SPLITS = ("train", "test")
_SPLIT_CODES = {"train": 0, "test": 1}
CROP = 28
DIGIT_THRESHOLD = 128
DIGIT_SCALE = 0.75  # Translated PolyMNIST: digit images are shrunk to 21x21
_RESIZE_CHUNK = 10000
_CHUNK = 2000  # images per pool task
_POOL_MIN = 4000  # fewer images than this are handled in-process


def within_class_permutation(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return ``perm`` with ``labels[perm] == labels``: an independent shuffle inside each class.

    Args:
        labels: class labels ``(N,)``.
        rng: the NumPy generator the shuffles are drawn from.

    Returns:
        int64 ``(N,)`` indices, a permutation of ``0..N-1``.
    """
    perm = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        perm[members] = rng.permutation(members)
    return perm


def random_crop_corners(
    rng: np.random.Generator, num: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (y, x) of ``num`` 28x28 crops, uniform on [0, H-28) x [0, W-28) as in
    the original generator (exclusive upper bound; a 28-pixel side gives corner 0).

    Args:
        rng: the NumPy generator the corners are drawn from.
        num: how many crops N.
        height: the background's height H in pixels, at least 28.
        width: the background's width W in pixels, at least 28.

    Returns:
        ``(ys, xs)``: two int64 arrays ``(N,)``.
    """
    if height < CROP or width < CROP:
        raise ValueError(f"a background of {width}x{height} px is smaller than a 28x28 crop.")
    ys = rng.integers(0, max(height - CROP, 1), size=num)
    xs = rng.integers(0, max(width - CROP, 1), size=num)
    return ys, xs


def composite(
    digits: np.ndarray, background: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """PolyMNIST images (N, 28, 28, 3) uint8 from MNIST digits (N, 28, 28) uint8.

    ``out = crop`` where ``digit <= 128`` and ``out = 255 - crop`` (the float ``1 - c``) where
    ``digit > 128``; ``crop = background[y:y+28, x:x+28]``, gathered for all N at once from a
    sliding-window view. For uint8, ``255 - c == c XOR 255``, which is what is computed.

    Args:
        digits: MNIST-like digits ``(N, 28, 28)`` uint8 in 0..255 (binarised at > 128 here).
        background: one background image ``(H, W, C)`` uint8, H and W at least 28.
        ys: top-left crop rows ``(N,)`` in ``[0, H - 28]`` (:func:`random_crop_corners`).
        xs: top-left crop columns ``(N,)`` in ``[0, W - 28]``.

    Returns:
        uint8 ``(N, 28, 28, C)`` images (channels last; a new array).
    """
    windows = sliding_window_view(background, (CROP, CROP, background.shape[2]))
    crops = windows[ys, xs, 0]
    channels = background.shape[2]
    flip = np.repeat((digits > DIGIT_THRESHOLD).astype(np.uint8) * np.uint8(255), channels, axis=-1)
    rows = crops.reshape(len(crops), CROP, CROP * channels)  # a view: crops is contiguous
    np.bitwise_xor(rows, flip, out=rows)
    return crops


def shrink_digits(digits: np.ndarray, scale: float = DIGIT_SCALE) -> np.ndarray:
    """Digit images (N, 28, 28) uint8 resized to (N, s, s), ``s = round(28 * scale)``.

    Bilinear interpolation with anti-aliasing (``torch.nn.functional.interpolate``), rounded
    back to uint8; deterministic on the CPU.

    Args:
        digits: digit images ``(N, 28, 28)`` uint8.
        scale: size factor in ``(0, 1]``; default :data:`DIGIT_SCALE` (0.75: 21x21).
    """
    if not 0 < scale <= 1:
        raise ValueError(f"digit_scale must lie in (0, 1], got {scale}.")
    size = max(1, round(CROP * scale))
    out = np.empty((len(digits), size, size), dtype=np.uint8)
    for start in range(0, len(digits), _RESIZE_CHUNK):
        chunk = torch.from_numpy(digits[start : start + _RESIZE_CHUNK]).float().unsqueeze(1)
        small = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
        out[start : start + len(chunk)] = small.squeeze(1).round().clamp(0, 255).byte().numpy()
    return out


def place_digits(small: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Paste digits (N, s, s) into black 28x28 canvases with top-left corners (ys, xs).

    Args:
        small: shrunk digits ``(N, s, s)`` uint8, ``s <= 28`` (:func:`shrink_digits`).
        ys: top-left rows ``(N,)`` in ``[0, 28 - s]`` (:func:`random_digit_positions`).
        xs: top-left columns ``(N,)`` in ``[0, 28 - s]``.

    Returns:
        uint8 ``(N, 28, 28)`` canvases.
    """
    num, size = len(small), small.shape[1]
    if (ys < 0).any() or (xs < 0).any() or (ys > CROP - size).any() or (xs > CROP - size).any():
        raise ValueError(f"digit positions must lie in [0, {CROP - size}].")
    canvas = np.zeros((num, CROP, CROP), dtype=np.uint8)
    rows = (ys[:, None] + np.arange(size))[:, :, None]
    cols = (xs[:, None] + np.arange(size))[:, None, :]
    canvas[np.arange(num)[:, None, None], rows, cols] = small
    return canvas


def random_digit_positions(
    rng: np.random.Generator, num: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (y, x) of ``num`` s x s digits, uniform on {0..28-s}^2.

    Args:
        rng: the NumPy generator the positions are drawn from.
        num: how many digits N.
        size: the digits' side s in pixels, at most 28.

    Returns:
        ``(ys, xs)``: two int64 arrays ``(N,)``.
    """
    ys = rng.integers(0, CROP - size + 1, size=num)
    xs = rng.integers(0, CROP - size + 1, size=num)
    return ys, xs


def _png_name(index: int, label: int) -> str:
    return f"{index}.{label}.png"


def _write_pngs(task: tuple[str, int, np.ndarray, np.ndarray]) -> int:
    """Write images (n, 28, 28, 3) as ``folder/{start + j}.{label_j}.png``; return n."""
    folder, start, images, labels = task
    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = os.path.join(folder, _png_name(start + offset, int(label)))
        Image.fromarray(image, mode="RGB").save(path, format="PNG")
    return len(images)


@contextmanager
def _worker_pool(workers: int, num_items: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A fork-based pool of ``workers`` processes, or None when in-process work is cheaper."""
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if workers <= 1 or num_items < _POOL_MIN or not can_fork:
        yield None
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool


def _run_tasks(pool, function, tasks: Iterable) -> list:
    if pool is None:
        return [function(task) for task in tasks]
    return pool.map(function, tasks, chunksize=1)


def _resolve_backgrounds(backgrounds: str | Path, num_modalities: int, seed: int) -> list:
    if isinstance(backgrounds, str) and backgrounds == "procedural":
        return procedural_backgrounds(num_modalities, seed=seed)
    files = background_files(backgrounds)
    if len(files) < num_modalities:
        raise ValueError(
            f"{num_modalities} modalities need {num_modalities} background images but "
            f"{backgrounds} holds {len(files)}; add images or lower num_modalities."
        )
    return load_backgrounds(backgrounds, num=num_modalities)


def _clear_folder(folder: Path, overwrite: bool) -> None:
    """Make sure ``folder`` holds no PNGs: delete them with ``overwrite``, else refuse."""
    old = [p for p in folder.iterdir() if p.suffix == ".png"]
    if old and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {len(old)} PNG files; pass overwrite=True "
            "(--overwrite) or choose another output folder."
        )
    for path in old:
        path.unlink()


def _prepare_split(split_dir: Path, num_modalities: int, overwrite: bool) -> list[Path]:
    """Create empty ``m0 .. m{M-1}`` folders; stale ``m{k}``, k >= M, would join the loaded
    tuples, so they are emptied and removed too (only with ``overwrite``)."""
    from pyro_mmvae.data.polymnist import _remove_caches, modality_folders

    folders = [split_dir / f"m{m}" for m in range(num_modalities)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        _clear_folder(folder, overwrite)
    for index, folder in modality_folders(split_dir).items():
        if index >= num_modalities:
            _clear_folder(folder, overwrite)
            if not any(folder.iterdir()):
                folder.rmdir()
    _remove_caches(split_dir)
    return folders


def make_polymnist(
    mnist_root: str | Path,
    backgrounds: str | Path,
    num_modalities: int = 5,
    seed: int = 0,
    *,
    out: str | Path,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
    translate: bool = False,
    digit_scale: float = DIGIT_SCALE,
) -> Path:
    """Generate PolyMNIST PNGs under ``out/PolyMNIST/{split}/m{i}/{idx}.{label}.png``.

    ``backgrounds`` is a folder of images (modality m uses the m-th in sorted name order) or the
    string ``"procedural"``. File ``idx`` of every modality carries label ``y_idx`` of MNIST image
    ``idx``; modality m shows MNIST image ``perm_m[idx]`` of the same class, composited over a
    random crop of background m (see :func:`composite`). All randomness comes from
    ``numpy.random.default_rng(SeedSequence([seed, split, m]))``, so one seed gives byte-identical
    files. ``limit`` keeps the first ``limit`` MNIST images of each split. Returns the PolyMNIST
    folder.

    ``translate=True`` writes Translated PolyMNIST: every digit image is first shrunk to
    ``round(28 * digit_scale)`` pixels (:func:`shrink_digits`) and pasted at a uniformly random
    position of a black 28x28 canvas (:func:`place_digits`), drawn from the same generator
    after the crop corners (so the permutations and crops are those of the plain dataset).

    Args:
        mnist_root: the folder holding the four MNIST IDX files (see
            :func:`~pyro_mmvae.data.mnist.load_mnist`).
        backgrounds: a folder of at least ``num_modalities`` images, or ``"procedural"``
            (:func:`~pyro_mmvae.data.backgrounds.procedural_backgrounds`, 256x256).
        num_modalities: M, the number of modality folders ``m0 .. m{M-1}``; default 5.
        seed: non-negative int seed of every draw (and of procedural backgrounds).
        out: the output folder; the files go to ``out/PolyMNIST`` (keyword only).
        splits: the splits to write, a non-empty subset of ``("train", "test")``.
        limit: keep the first ``limit`` MNIST images of each split; None: all
            (60000 / 10000).
        workers: processes writing the PNGs (fork-based; 1 or small jobs: in-process).
        overwrite: delete the PNGs already in the modality folders (and stale ``m{k}``
            folders, k >= M) instead of raising ``FileExistsError``.
        translate: write Translated PolyMNIST (shrunk digits at random positions).
        digit_scale: with ``translate``, the digits' size factor in ``(0, 1]``; default
            :data:`DIGIT_SCALE` (0.75).
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images or None, got {limit}.")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {tuple(splits)}.")
    if translate and not 0 < digit_scale <= 1:
        raise ValueError(f"digit_scale must lie in (0, 1], got {digit_scale}.")
    images = _resolve_backgrounds(backgrounds, num_modalities, seed)
    root = Path(out).expanduser() / "PolyMNIST"
    for split in splits:
        digits, labels = (t.numpy() for t in load_mnist(mnist_root, split))
        if limit is not None:
            digits, labels = digits[:limit], labels[:limit]
        small = shrink_digits(digits, digit_scale) if translate else None
        split_dir = root / split
        folders = _prepare_split(split_dir, num_modalities, overwrite)
        with _worker_pool(workers, len(labels) * num_modalities) as pool:
            for m, folder in enumerate(folders):
                rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], m]))
                perm = within_class_permutation(labels, rng)
                ys, xs = random_crop_corners(rng, len(labels), *images[m].shape[:2])
                if small is None:
                    shown = digits[perm]
                else:
                    shown = place_digits(small[perm], *random_digit_positions(
                        rng, len(labels), small.shape[1]))
                pictures = composite(shown, images[m], ys, xs)
                tasks = [
                    (
                        str(folder),
                        start,
                        pictures[start : start + _CHUNK],
                        labels[start : start + _CHUNK],
                    )
                    for start in range(0, len(labels), _CHUNK)
                ]
                _run_tasks(pool, _write_pngs, tasks)
        info = {
            "generator": "pyro_mmvae.data.make_polymnist",
            "seed": seed,
            "num_modalities": num_modalities,
            "limit": limit,
            "backgrounds": "procedural"
            if backgrounds == "procedural"
            else [p.name for p in background_files(backgrounds)[:num_modalities]],
        }
        if translate:
            info["translated"] = {"digit_scale": digit_scale}
        (split_dir / "generator.json").write_text(json.dumps(info, indent=1) + "\n")
    return root


# ==================================================================================== loader
