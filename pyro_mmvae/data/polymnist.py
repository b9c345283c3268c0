"""PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021): generator and loader.

Modality m shows an MNIST digit over a random 28x28 crop of background image m, the digit
binarised at > 128 and the background's colours inverted under it (``c -> 1 - c``). For every
split, modality and digit class the MNIST images are shuffled independently, so files with the
same index in different modalities share only the label.
Layout: ``PolyMNIST/{split}/m{i}/{idx}.{label}.png``.

Translated PolyMNIST (the harder variant used for CRMVAE, seed 000): before compositing, each
28x28 MNIST image is scaled by 0.75 (to 21x21) and pasted at a uniformly random position of a
black 28x28 canvas (``make_polymnist(..., translate=True)``; CLI ``--translated``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pyro_mmvae.data.backgrounds import background_files, load_backgrounds, procedural_backgrounds
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.mnist import load_mnist

SPLITS = ("train", "test")
_SPLIT_CODES = {"train": 0, "test": 1}
CROP = 28
DIGIT_THRESHOLD = 128
DIGIT_SCALE = 0.75  # Translated PolyMNIST: digit images are shrunk to 21x21
_RESIZE_CHUNK = 10000
CACHE_FORMAT = 2  # 2: the fingerprint covers every file's size and mtime
_CHUNK = 2000  # images per pool task
_POOL_MIN = 4000  # fewer images than this are handled in-process
MAKE_POLYMNIST_HINT = (
    "Generate it with `pyro-mmvae make-polymnist --mnist-root ... --backgrounds ... --out ...` "
    "(backgrounds: a folder of images or 'procedural') and pass the --out folder as the root."
)


# ==================================================================================== generator
def within_class_permutation(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return ``perm`` with ``labels[perm] == labels``: an independent shuffle inside each class."""
    perm = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        perm[members] = rng.permutation(members)
    return perm


def random_crop_corners(
    rng: np.random.Generator, num: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (y, x) of ``num`` 28x28 crops, uniform on [0, H-28) x [0, W-28) as in
    the original generator (exclusive upper bound; a 28-pixel side gives corner 0)."""
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
    """Paste digits (N, s, s) into black 28x28 canvases with top-left corners (ys, xs)."""
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
    """Top-left corners (y, x) of ``num`` s x s digits, uniform on {0..28-s}^2."""
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
def find_polymnist_split(root: str | Path, split: str) -> Path:
    """The ``{split}`` folder for ``root`` = the folder holding ``PolyMNIST/``, the ``PolyMNIST``
    folder itself, or any folder holding ``train/``, ``test/`` directly."""
    root = Path(root).expanduser()
    candidates = [root / "PolyMNIST" / split, root / split]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " and ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no PolyMNIST '{split}' split under {root} (looked for {looked}). {MAKE_POLYMNIST_HINT}"
    )


def modality_folders(split_dir: Path) -> dict[int, Path]:
    """The ``m{i}`` folders of a split, keyed and sorted by i."""
    folders = {
        int(p.name[1:]): p
        for p in split_dir.iterdir()
        if p.is_dir() and p.name.startswith("m") and p.name[1:].isdigit()
    }
    if not folders:
        raise FileNotFoundError(
            f"{split_dir} holds no modality folders m0, m1, ... . {MAKE_POLYMNIST_HINT}"
        )
    return dict(sorted(folders.items()))


def _sort_key(name: str) -> tuple[int, int, str]:
    head = name.split(".", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def _list_pngs(folder: Path) -> tuple[list[str], np.ndarray]:
    """Sorted PNG names of a modality folder (numerically by index) and their labels."""
    names = sorted((n for n in os.listdir(folder) if n.endswith(".png")), key=_sort_key)
    labels = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        parts = name.split(".")
        if len(parts) < 3 or not parts[-2].isdigit():
            raise ValueError(
                f"{folder / name} does not follow the PolyMNIST name pattern "
                "'{idx}.{label}.png'."
            )
        labels[i] = int(parts[-2])
    return names, labels


def _paired_files(folders: dict[int, Path]) -> tuple[dict[int, list[str]], np.ndarray]:
    """List every modality folder and check they pair up: same count, same label per index."""
    listings = {m: _list_pngs(folder) for m, folder in folders.items()}
    first = next(iter(folders))
    names0, labels0 = listings[first]
    if len(names0) == 0:
        raise FileNotFoundError(f"{folders[first]} holds no PNG files. {MAKE_POLYMNIST_HINT}")
    for m, (names, labels) in listings.items():
        if len(names) != len(names0):
            raise ValueError(
                f"modality folders do not pair up: {folders[m]} holds {len(names)} PNG files but "
                f"{folders[first]} holds {len(names0)}; regenerate or fix the folders."
            )
        mismatch = np.flatnonzero(labels != labels0)
        if mismatch.size:
            i = int(mismatch[0])
            raise ValueError(
                f"modality folders do not pair up: at sorted index {i}, {folders[m] / names[i]} "
                f"has label {labels[i]} but {folders[first] / names0[i]} has {labels0[i]} "
                f"({mismatch.size} mismatches in all)."
            )
    return {m: names for m, (names, _) in listings.items()}, labels0


def _fingerprint(folders: dict[int, Path], names: dict[int, list[str]]) -> str:
    """Hash of every modality's sorted file list with each file's size and mtime (ns).

    A file replaced, rewritten or touched after the cache was written changes the hash, so
    the cache is rebuilt. Stat results come from one ``os.scandir`` pass per folder.
    """
    digest = hashlib.sha256(f"polymnist-cache-v{CACHE_FORMAT}".encode())
    for m, folder in folders.items():
        wanted = set(names[m])
        stats = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in wanted:
                    stat = entry.stat()
                    stats[entry.name] = f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"|m{m}|{len(names[m])}|".encode())
        digest.update("\n".join(f"{n}|{stats.get(n, 'missing')}" for n in names[m]).encode())
    return digest.hexdigest()


def _decode_png(path: str) -> np.ndarray:
    """One PNG as uint8 (3, H, W) RGB, decoded by ``torchvision.io.decode_png``.

    Grey, palette and alpha images are converted to RGB (alpha dropped) exactly as PIL's
    ``convert("RGB")`` does; images of more than 8 bits per channel go through PIL. A file
    that cannot be decoded (empty, truncated, not a PNG) raises ``ValueError`` naming it.
    """
    from torchvision.io import ImageReadMode, decode_png

    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if not raw:
            raise ValueError("the file is empty")
        image = decode_png(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                           mode=ImageReadMode.RGB)
        if image.dtype != torch.uint8:  # 16-bit PNG: keep PIL's conversion
            with Image.open(path) as pil:
                return np.asarray(pil.convert("RGB")).transpose(2, 0, 1)
        return image.numpy()
    except Exception as error:  # torchvision raises RuntimeError for damaged files
        text = str(error).strip()
        # torchvision prefixes "function, file.cpp:line, ": keep the reason
        reason = re.sub(r"^.*?\.cpp:\d+,\s*", "", text.splitlines()[0]) if text else ""
        reason = reason or type(error).__name__
        raise ValueError(
            f"cannot decode PolyMNIST image {path}: {reason}; the file is damaged (empty, "
            "truncated or not a PNG): restore it, or regenerate the dataset with "
            "`pyro-mmvae make-polymnist --overwrite`"
        ) from None


def _decode_pngs(paths: Sequence[str]) -> np.ndarray:
    """Decode PNGs into one uint8 array (n, 3, H, W)."""
    arrays = [_decode_png(path) for path in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"PolyMNIST images differ in size ({sorted(shapes)}) in {paths[0]}...")
    return np.stack(arrays)


def _decode_folders(
    folders: dict[int, Path], names: dict[int, list[str]], workers: int = 2
) -> torch.Tensor:
    """Decode every modality into one uint8 tensor (M, N, 3, H, W)."""
    count = len(next(iter(names.values())))
    tasks = [
        [str(folder / n) for n in names[m][start : start + _CHUNK]]
        for m, folder in folders.items()
        for start in range(0, count, _CHUNK)
    ]
    with _worker_pool(workers, count * len(folders)) as pool:
        chunks = _run_tasks(pool, _decode_pngs, tasks)
    stacked = np.concatenate(chunks).reshape(len(folders), count, *chunks[0].shape[1:])
    return torch.from_numpy(stacked)


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro_mmvae" / "polymnist"


def cache_paths(split_dir: Path) -> list[Path]:
    """Where the decoded tensor of a split is cached: next to the split, else the user cache."""
    split_dir = split_dir.resolve()
    key = hashlib.sha256(str(split_dir).encode()).hexdigest()[:16]
    return [
        split_dir.parent / f"{split_dir.name}.cache.pt",
        _user_cache_dir() / f"{key}-{split_dir.name}.cache.pt",
    ]


def _remove_caches(split_dir: Path) -> None:
    for path in cache_paths(split_dir):
        path.unlink(missing_ok=True)


def _read_cache(split_dir: Path, fingerprint: str) -> dict | None:
    for path in cache_paths(split_dir):
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a corrupt cache is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable PolyMNIST cache {path}: {error}", stacklevel=3)
            continue
        if isinstance(payload, dict) and payload.get("fingerprint") == fingerprint:
            return payload
    return None


def _write_cache(split_dir: Path, payload: dict) -> Path | None:
    """Write the cache atomically (:func:`~pyro_mmvae.checkpoint.atomic_write`) to the first
    writable place; warn if there is none."""
    from pyro_mmvae.checkpoint import atomic_write

    for path in cache_paths(split_dir):
        try:
            return atomic_write(path, lambda handle: torch.save(payload, handle))
        except OSError:
            continue
    warnings.warn(f"could not write a PolyMNIST cache for {split_dir}", stacklevel=3)
    return None


class PolyMNIST(MultimodalTensorDataset):
    """PolyMNIST read from the official PNG layout, tuples paired by sorted file name.

    Args:
        root: the folder holding ``PolyMNIST/``, the ``PolyMNIST`` folder, or a folder with
            ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"`` (any split folder name works).
        modalities: indices i of the ``m{i}`` folders to use (default: all).
        cache: decode the PNGs once into ``{split}.cache.pt`` (next to the split folder, or in
            ``~/.cache/pyro_mmvae`` if that is read-only) and reuse it while no file has
            changed (names, sizes and modification times; one ``stat`` per file, about
            1-10 us each). A damaged PNG raises ``ValueError`` naming it.

    Modalities are named ``"m{i}"``: uint8 (N, 3, 28, 28), returned as float in [0, 1].
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        modalities: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:
        self.split_dir = find_polymnist_split(root, split)
        self.split = split
        folders = modality_folders(self.split_dir)
        chosen = list(folders) if modalities is None else [int(m) for m in modalities]
        missing = [m for m in chosen if m not in folders]
        if missing or not chosen:
            raise ValueError(
                f"modalities {missing or chosen} not found in {self.split_dir}; available: "
                f"{list(folders)}."
            )
        names, labels = _paired_files(folders)
        images = self._load_images(folders, names, chosen, cache)
        data = {f"m{m}": images[m] for m in chosen}
        super().__init__(data, torch.from_numpy(labels), name="polymnist")

    def _load_images(
        self,
        folders: dict[int, Path],
        names: dict[int, list[str]],
        chosen: list[int],
        cache: bool,
    ) -> dict[int, torch.Tensor]:
        """Modality index -> uint8 (N, 3, H, W); the cache always holds every modality."""
        if not cache:
            wanted = {m: folders[m] for m in chosen}
            return dict(zip(wanted, _decode_folders(wanted, names), strict=True))
        fingerprint = _fingerprint(folders, names)
        payload = _read_cache(self.split_dir, fingerprint)
        if payload is None:
            payload = {
                "format": CACHE_FORMAT,
                "fingerprint": fingerprint,
                "modalities": list(folders),
                "images": _decode_folders(folders, names),
            }
            _write_cache(self.split_dir, payload)
        return dict(zip(payload["modalities"], payload["images"], strict=True))
