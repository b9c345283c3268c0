"""Datasets by name: ``load_dataset("polymnist-mini")`` (offline default) or ``"polymnist"``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.mini import polymnist_mini
from pyro_mmvae.data.polymnist import PolyMNIST

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("polymnist-mini", "polymnist")
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
    """
    if name not in dataset_names():
        raise ValueError(f"unknown dataset {name!r}; known datasets: "
                         f"{', '.join(dataset_names())}.")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if name in _REGISTERED:
        return _REGISTERED[name](Path(root) if root is not None else default_data_root(), split)
    if name == "polymnist-mini":
        return polymnist_mini(split)
    root = root if root is not None else default_data_root()
    if root is None:
        raise ValueError(
            "dataset 'polymnist' needs its data folder: pass --data-root (root=...) or set "
            f"{DATA_ROOT_ENV} to the folder that contains PolyMNIST/."
        )
    return PolyMNIST(root, split)


def dataset_names() -> tuple[str, ...]:
    """The built-in datasets, then those added with :func:`register_dataset`."""
    return DATASETS + tuple(n for n in _REGISTERED if n not in DATASETS)


def register_dataset(
    name: str, loader: Callable[[Path | None, str], MultimodalTensorDataset]
) -> None:
    """Make ``load_dataset(name, root, split)`` (and ``--dataset name``) call
    ``loader(root, split)``; ``root`` is the data root or None."""
    if name in DATASETS:
        raise ValueError(f"{name!r} is a built-in dataset; choose another name")
    _REGISTERED[str(name)] = loader
