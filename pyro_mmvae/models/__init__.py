"""The model zoo: Pyro model/guide pairs, one module per family."""

from pyro_mmvae.models.base import MultimodalVAE
from pyro_mmvae.models.mixture import MMVAE

__all__ = ["MMVAE", "MultimodalVAE"]
