"""Evaluation: modality classifiers, coherence metrics and image grids."""

from pyro_mmvae.metrics.classifiers import (
    ModalityClassifiers,
    dataset_fingerprint,
    default_cache_dir,
    get_classifiers,
    train_modality_classifiers,
)
from pyro_mmvae.metrics.coherence import (
    conditional_coherence,
    mean_pairwise_l2,
    source_subsets,
    unconditional_coherence,
)
from pyro_mmvae.metrics.plots import save_cross_generation_grid, save_unconditional_grid

__all__ = [
    "ModalityClassifiers",
    "conditional_coherence",
    "dataset_fingerprint",
    "default_cache_dir",
    "get_classifiers",
    "mean_pairwise_l2",
    "save_cross_generation_grid",
    "save_unconditional_grid",
    "source_subsets",
    "train_modality_classifiers",
    "unconditional_coherence",
]
