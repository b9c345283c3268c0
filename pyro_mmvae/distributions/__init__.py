"""Distributions for multimodal posteriors: expert aggregations and scale maps."""

from pyro_mmvae.distributions.experts import (
    FAMILIES,
    StratifiedMixture,
    component_distribution,
    mopoe_components,
    nonempty_subsets,
    product_of_experts,
    subset_availability,
    subset_matrix,
    subset_products,
)
from pyro_mmvae.distributions.scales import SCALE_PARAMETERISATIONS, get_scale_fn

__all__ = [
    "FAMILIES",
    "SCALE_PARAMETERISATIONS",
    "StratifiedMixture",
    "component_distribution",
    "get_scale_fn",
    "mopoe_components",
    "nonempty_subsets",
    "product_of_experts",
    "subset_matrix",
    "subset_availability",
    "subset_products",
]
