"""Data layer: in-memory multimodal datasets, MNIST IDX files, PolyMNIST and its offline mini
version, and a name -> dataset registry."""

from pyro_mmvae.data.backgrounds import load_backgrounds, procedural_backgrounds
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.mini import mini_source_split, polymnist_mini
from pyro_mmvae.data.mnist import load_mnist, read_idx
from pyro_mmvae.data.polymnist import PolyMNIST, make_polymnist
from pyro_mmvae.data.registry import (
    DATASETS,
    dataset_names,
    default_data_root,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "MultimodalTensorDataset",
    "PolyMNIST",
    "dataset_names",
    "default_data_root",
    "load_backgrounds",
    "load_dataset",
    "load_mnist",
    "make_polymnist",
    "mini_source_split",
    "polymnist_mini",
    "procedural_backgrounds",
    "read_idx",
    "register_dataset",
]
