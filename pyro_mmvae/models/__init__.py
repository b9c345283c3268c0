"""The model zoo: Pyro model/guide pairs, one module per family."""

from pyro_mmvae.models.base import MultimodalVAE, Strata
from pyro_mmvae.models.coordination import CoordinatedPosterior, CoordinationVAE
from pyro_mmvae.models.mixture import MMVAE
from pyro_mmvae.models.mmvae_plus import MMVAEPlus
from pyro_mmvae.models.mopoe import MoPoE
from pyro_mmvae.models.product import MVAE

__all__ = ["CoordinatedPosterior", "CoordinationVAE", "MMVAE", "MMVAEPlus", "MVAE", "MoPoE",
           "MultimodalVAE", "Strata"]
