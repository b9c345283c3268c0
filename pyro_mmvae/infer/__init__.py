"""Objectives as :class:`pyro.infer.ELBO` subclasses."""

from pyro_mmvae.infer.base import ESTIMATORS, MultimodalELBO, logmeanexp, site_log_prob
from pyro_mmvae.infer.cmvae import CMVAEELBO
from pyro_mmvae.infer.coordination import (
    CRMVAEELBO,
    JMVAEELBO,
    MVTCAEELBO,
    TELBOELBO,
    CoordinationELBO,
    CoordinationTerms,
    gaussian_kl,
)
from pyro_mmvae.infer.cvae import CVAEELBO
from pyro_mmvae.infer.dmvae import DMVAEELBO
from pyro_mmvae.infer.hierarchical import MHVAEELBO, NexusELBO
from pyro_mmvae.infer.jnf import JNFDCCAELBO, JNFELBO
from pyro_mmvae.infer.mixture import MixtureELBO, MoPoEELBO
from pyro_mmvae.infer.mmvae_plus import MMVAEPlusELBO
from pyro_mmvae.infer.subsampled import SubsampledELBO

__all__ = [
    "CMVAEELBO",
    "CVAEELBO",
    "DMVAEELBO",
    "JNFDCCAELBO",
    "JNFELBO",
    "MHVAEELBO",
    "NexusELBO",
    "CRMVAEELBO",
    "CoordinationELBO",
    "CoordinationTerms",
    "ESTIMATORS",
    "JMVAEELBO",
    "MVTCAEELBO",
    "TELBOELBO",
    "gaussian_kl",
    "MMVAEPlusELBO",
    "MixtureELBO",
    "MoPoEELBO",
    "MultimodalELBO",
    "SubsampledELBO",
    "logmeanexp",
    "site_log_prob",
]
