"""The model zoo: Pyro model/guide pairs, one module per family."""

from pyro_mmvae.models.base import MultimodalVAE, Strata
from pyro_mmvae.models.mixture import MMVAE
from pyro_mmvae.models.mopoe import MoPoE
from pyro_mmvae.models.product import MVAE

__all__ = ["MMVAE", "MVAE", "MoPoE", "MultimodalVAE", "Strata"]
