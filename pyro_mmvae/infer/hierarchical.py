r"""Objectives of the hierarchical models MHVAE and Nexus (Vasco et al.).

Both are the library's per-datapoint estimator (:class:`~pyro_mmvae.infer.MultimodalELBO`)
over every site of the model/guide pair of :mod:`pyro_mmvae.models.hierarchical`; the
log-weight of a particle is

.. math:: \log w = \sum_{m \in S}\big[\lambda_m \log p(x_m|z_m)
          + \beta(\log p(z_m|\cdot) - \log q(z_m|x_m))\big] + T
          + \beta_c\big(\log p(z) - \log q(z|z_K)\big)

with :math:`p(z_m|\cdot) = p(z_m|z)` and :math:`T = 0` for MHVAE (its ELBO), and
:math:`p(z_m|\cdot) = \mathcal{N}(0, I)`,
:math:`T = \sum_{m \in S}\gamma\log\mathcal{N}(\mathrm{sg}(z_m); g_m(z), I)` for Nexus
(per-modality ELBOs plus the nexus ELBO over the stopped-gradient modality latents).
Modality dropout is drawn by the model's guide while it is in training mode (see
:func:`~pyro_mmvae.models.hierarchical.draw_kept_modalities`); pass ``keep=`` to fix it.

Estimators. MHVAE is a proper latent-variable model: ``"elbo"`` and ``"iwae"`` (K particles,
:math:`\log\frac1K\sum_k w_k`) are both valid. ``"dreg"`` is refused: the library's DReG
surrogate detaches the parameters of every guide site, which for the top-level posterior
:math:`q(z|z_K)` also cuts the path from :math:`z_m` into its parameters, a pathwise term, not
a score term (the estimator would be biased). Nexus's objective is a sum of two ELBOs with a
stop-gradient between them, not the bound of one model: only ``"elbo"``.
"""

from __future__ import annotations

from pyro_mmvae.infer.base import MultimodalELBO

__all__ = ["MHVAEELBO", "NexusELBO"]


class _RestrictedELBO(MultimodalELBO):
    """:class:`MultimodalELBO` with a subset of its estimators."""

    estimators: tuple[str, ...] = ("elbo",)
    model_name = ""

    def __init__(self, num_particles: int = 1, estimator: str = "elbo",
                 max_plate_nesting: int = 2) -> None:
        if estimator not in self.estimators:
            raise ValueError(f"{self.model_name} supports the estimator(s) "
                             f"{', '.join(self.estimators)}, not {estimator!r} (setting "
                             "estimator); see pyro_mmvae.infer.hierarchical")
        super().__init__(num_particles, estimator, max_plate_nesting)


class MHVAEELBO(_RestrictedELBO):
    r"""MHVAE's ELBO (or its IWAE bound with K > 1) over ``z``, ``z_<m>`` and ``x_<m>``.

    Args:
        num_particles: K, importance samples per data point (default 1).
        estimator: ``"elbo"`` (default) or ``"iwae"``; ``"dreg"`` raises ``ValueError``.
        max_plate_nesting: plates besides the particle plate (default 2).
    """

    estimators = ("elbo", "iwae")
    model_name = "mhvae"


class NexusELBO(_RestrictedELBO):
    r"""Nexus's objective: per-modality ELBOs plus the nexus ELBO (K particles averaged).

    Args:
        num_particles: K, samples per data point, averaged (default 1).
        estimator: ``"elbo"`` only (default); another raises ``ValueError``.
        max_plate_nesting: plates besides the particle plate (default 2).
    """

    estimators = ("elbo",)
    model_name = "nexus"
