"""Objectives as :class:`pyro.infer.ELBO` subclasses."""

from pyro_mmvae.infer.base import ESTIMATORS, MultimodalELBO, logmeanexp, site_log_prob
from pyro_mmvae.infer.mixture import MixtureELBO

__all__ = ["ESTIMATORS", "MixtureELBO", "MultimodalELBO", "logmeanexp", "site_log_prob"]
