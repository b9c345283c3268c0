"""Datasets by name: ``load_dataset("polymnist-mini")`` (offline default), ``"polymnist"``,
``"captions-mini"`` (offline image–caption set) or ``"files:DIR"`` (your own ``.npy`` files,
see :mod:`pyro_mmvae.data.files`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.captions import captions_mini
from pyro_mmvae.data.files import PREFIX as FILES_PREFIX
from pyro_mmvae.data.files import load_files
from pyro_mmvae.data.mini import polymnist_mini
from pyro_mmvae.data.polymnist import PolyMNIST

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("polymnist-mini", "polymnist", "captions-mini")
#: Datasets added with :func:`register_dataset`: name -> loader(root, split).
_REGISTERED: dict[str, Callable[[Path | None, str], MultimodalTensorDataset]] = {}
SPLITS: tuple[str, ...] = ("train", "test")
#: Environment variable naming the default data root.
DATA_ROOT_ENV = "PYRO_MMVAE_DATA_ROOT"


def default_data_root() -> Path | None:
    """The data root from the environment variable ``PYRO_MMVAE_DATA_ROOT`` (None if unset)."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else None


def load_dataset(
    name: str, root: str | Path | None = None, split: str = "train"
) -> MultimodalTensorDataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) for ``split`` ("train" or "test").

    ``"polymnist-mini"`` is built in memory and ignores ``root``. ``"polymnist"`` reads the
    official PNG layout under ``root`` (default: ``$PYRO_MMVAE_DATA_ROOT``).
    ``"captions-mini"`` is built in memory. ``"files:DIR"`` memory-maps the ``.npy`` files of
    ``DIR/<split>`` (:func:`pyro_mmvae.data.files.load_files`; ``root`` is ignored).

    Args:
        name: a name from :func:`dataset_names` (built-in or registered with
            :func:`register_dataset`) or ``"files:DIR"``.
        root: the data root of ``"polymnist"`` and of registered datasets; None uses
            ``$PYRO_MMVAE_DATA_ROOT`` (:func:`default_data_root`). Ignored by the others.
        split: ``"train"`` or ``"test"``.

    Returns:
        A :class:`~pyro_mmvae.data.base.MultimodalTensorDataset` (or a memory-mapped
        :class:`~pyro_mmvae.data.files.FileDataset` for ``"files:DIR"``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if isinstance(name, str) and name.startswith(FILES_PREFIX):
        path = name[len(FILES_PREFIX):]
        if not path:
            raise ValueError("dataset 'files:' needs a folder: files:DIR")
        return load_files(path, split)
    if name not in dataset_names():
        raise ValueError(f"unknown dataset {name!r}; known datasets: "
                         f"{', '.join(dataset_names())}.")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if name in _REGISTERED:
        return _REGISTERED[name](Path(root) if root is not None else default_data_root(), split)
    if name == "polymnist-mini":
        return polymnist_mini(split)
    if name == "captions-mini":
        return captions_mini(split)
    root = root if root is not None else default_data_root()
    if root is None:
        raise ValueError(
            "dataset 'polymnist' needs its data folder: pass --data-root (root=...) or set "
            f"{DATA_ROOT_ENV} to the folder that contains PolyMNIST/."
        )
    return PolyMNIST(root, split)


def dataset_names() -> tuple[str, ...]:
    """The built-in datasets, then those added with :func:`register_dataset` (any
    ``files:DIR`` is accepted too)."""
    return DATASETS + tuple(n for n in _REGISTERED if n not in DATASETS)


def register_dataset(
    name: str, loader: Callable[[Path | None, str], MultimodalTensorDataset]
) -> None:
    """Make ``load_dataset(name, root, split)`` (and ``--dataset name``) call
    ``loader(root, split)``; ``root`` is the data root or None.

    Args:
        name: the new dataset name; not a built-in name and not starting with ``"files:"``.
            Registering a name again replaces its loader.
        loader: ``loader(root, split) -> MultimodalTensorDataset``, with ``root`` a
            :class:`~pathlib.Path` or None and ``split`` ``"train"`` or ``"test"``.
    """
    if str(name).startswith(FILES_PREFIX):
        raise ValueError(f"names starting with {FILES_PREFIX!r} are folders of files")
    if name in DATASETS:
        raise ValueError(f"{name!r} is a built-in dataset; choose another name")
    _REGISTERED[str(name)] = loader
