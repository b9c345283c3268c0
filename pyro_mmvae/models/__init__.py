"""The model zoo: Pyro model/guide pairs, one module per family."""

from pyro_mmvae.models.base import MultimodalVAE, Strata
from pyro_mmvae.models.cmvae import CMVAE
from pyro_mmvae.models.coordination import CoordinatedPosterior, CoordinationVAE
from pyro_mmvae.models.cvae import CVAE
from pyro_mmvae.models.dmvae import DMVAE
from pyro_mmvae.models.hierarchical import MHVAE, Nexus
from pyro_mmvae.models.jnf import JNF, JNFDCCA
from pyro_mmvae.models.mixture import MMVAE
from pyro_mmvae.models.mmvae_plus import MMVAEPlus
from pyro_mmvae.models.mopoe import MoPoE
from pyro_mmvae.models.product import MVAE

__all__ = ["CMVAE", "CVAE", "DMVAE", "CoordinatedPosterior", "CoordinationVAE", "MMVAE",
           "MMVAEPlus", "JNF", "JNFDCCA", "MVAE", "MoPoE", "MHVAE", "Nexus",
           "MultimodalVAE", "Strata"]
