"""Datasets by name: ``load_dataset("polymnist-mini")`` (offline default) or ``"polymnist"``."""

from __future__ import annotations

import os
from pathlib import Path

from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.mini import polymnist_mini
from pyro_mmvae.data.polymnist import PolyMNIST

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("polymnist-mini", "polymnist")
SPLITS: tuple[str, ...] = ("train", "test")
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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if name == "polymnist-mini":
        return polymnist_mini(split)
    root = root if root is not None else default_data_root()
    if root is None:
        raise ValueError(
            "dataset 'polymnist' needs its data folder: pass --data-root (root=...) or set "
            f"{DATA_ROOT_ENV} to the folder that contains PolyMNIST/."
        )
    return PolyMNIST(root, split)
