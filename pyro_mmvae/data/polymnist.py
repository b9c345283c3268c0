"""PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021): the loader and its decoded-image cache.

The files are written by :func:`pyro_mmvae.data.polymnist_make.make_polymnist` (re-exported
here).

Modality m shows an MNIST digit over a random 28x28 crop of background image m, the digit
binarised at > 128 and the background's colours inverted under it (``c -> 1 - c``). For every
split, modality and digit class the MNIST images are shuffled independently, so files with the
same index in different modalities share only the label.
Layout: ``PolyMNIST/{split}/m{i}/{idx}.{label}.png``.

Translated PolyMNIST (the harder variant of *Mitigating the limitations of multimodal VAEs
with coordination-based approach*, 2023, the CRMVAE paper): before compositing, each
28x28 MNIST image is scaled by 0.75 (to 21x21) and pasted at a uniformly random position of a
black 28x28 canvas (``make_polymnist(..., translate=True)``; CLI ``--translated``).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.polymnist_make import (  # noqa: F401  (re-exported)
    _CHUNK,
    _POOL_MIN,
    SPLITS,
    _run_tasks,
    _worker_pool,
    composite,
    make_polymnist,
    place_digits,
    random_crop_corners,
    shrink_digits,
)

CACHE_FORMAT = 2  # 2: the fingerprint covers every file's size and mtime
MAKE_POLYMNIST_HINT = (
    "Generate it with `pyro-mmvae make-polymnist --mnist-root ... --backgrounds ... --out ...` "
    "(backgrounds: a folder of images or 'procedural') and pass the --out folder as the root."
)


def find_polymnist_split(root: str | Path, split: str) -> Path:
    """The ``{split}`` folder for ``root`` = the folder holding ``PolyMNIST/``, the ``PolyMNIST``
    folder itself, or any folder holding ``train/``, ``test/`` directly.

    Args:
        root: the data root (``~`` is expanded); ``root/PolyMNIST/{split}`` is tried first,
            then ``root/{split}``.
        split: the split folder's name, ``"train"`` or ``"test"``.
    """
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
    """The ``m{i}`` folders of a split, keyed and sorted by i.

    Args:
        split_dir: a split folder (``.../PolyMNIST/train``); a split without ``m{i}``
            folders raises ``FileNotFoundError``.
    """
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


def check_split_modalities(split_dir: Path, folders: dict[int, Path],
                           chosen: Sequence[int] | None = None) -> None:
    """Refuse a split whose sibling splits (``train``/``test`` beside it) hold other modality
    folders: a model trained on M modalities must be tested on the same M. With ``chosen``
    only those modalities must be in every split.

    Args:
        split_dir: the split folder being loaded (its siblings ``train``/``test`` are read).
        folders: its modality folders, index i -> ``split_dir/m{i}`` (from
            :func:`modality_folders`).
        chosen: the modality indices in use; None: every split must hold the union of all
            splits' folders.

    Raises:
        ValueError: naming the missing ``m{i}`` folders.
    """
    splits = {split_dir.name: set(folders)}
    for other in SPLITS:
        other_dir = split_dir.parent / other
        if other != split_dir.name and other_dir.is_dir():
            try:
                splits[other] = set(modality_folders(other_dir))
            except FileNotFoundError:
                splits[other] = set()
    needed = set(chosen) if chosen is not None else set().union(*splits.values())
    missing = [split_dir.parent / name / f"m{m}" for name, held in splits.items()
               for m in sorted(needed - held)]
    if missing:
        held = "; ".join(f"{name}: {', '.join(f'm{m}' for m in sorted(ms)) or 'none'}"
                         for name, ms in splits.items())
        raise ValueError(
            f"PolyMNIST splits hold different modality folders ({held}): missing "
            f"{', '.join(map(str, missing))}; every split needs the same m0, m1, ... folders "
            "(restore them, or regenerate with `pyro-mmvae make-polymnist --overwrite`)")


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
    """Where the decoded tensor of a split is cached: next to the split, else the user cache.

    Args:
        split_dir: the split folder (resolved to an absolute path).

    Returns:
        ``[split_dir.parent/{split}.cache.pt, <user cache>/<hash>-{split}.cache.pt]``, in the
        order they are tried (the user cache is ``$XDG_CACHE_HOME`` or ``~/.cache``, then
        ``pyro_mmvae/polymnist``).
    """
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

    The other split beside ``split`` (``train``/``test``), if present, must hold the same
    modality folders (:func:`check_split_modalities`), so a model is never tested on fewer
    modalities than it was trained on.

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
        check_split_modalities(self.split_dir, folders, None if modalities is None else chosen)
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
