r"""The stratified mixture objective of MMVAE (Shi et al. 2019).

.. math::
    \mathcal{L}(X) = \frac{1}{|S|}\sum_{m \in S}
        \mathbb{E}_{z^{1:K} \sim q_m(z|x_m)}
        \Big[\log \frac{1}{K}\sum_{k=1}^K w_k\Big],\qquad
    w_k = \frac{p(z_k)^\beta \prod_n p(x_n|z_k)^{\lambda_n}}{q_\Phi(z_k|X)^\beta}

with :math:`q_\Phi` the mixture of the present experts S. K = 1 is the ELBO form
(``estimator="elbo"``); K > 1 with ``"iwae"`` is the paper's "looser" IWAE bound (the
average over m sits outside the log) and ``"dreg"`` its doubly reparameterised gradient.

The guide supplies the strata: a :class:`~pyro_mmvae.distributions.StratifiedMixture` latent
site in a plate over the experts, whose :attr:`stratum_weights` (:math:`1/|S|` or 0) are the
outer average. Any model/guide pair built that way — other networks, other likelihoods, extra
observe sites — trains with this objective unchanged.
"""

from __future__ import annotations

from pyro_mmvae.infer.base import MultimodalELBO


class MixtureELBO(MultimodalELBO):
    r"""MMVAE's stratified objective: per-stratum estimator, averaged over present experts.

    Args:
        num_particles: K, importance samples per data point and stratum (default 1).
        estimator: ``"elbo"`` (K = 1 form, mean of :math:`\log w_k`), ``"iwae"`` (the looser
            per-stratum IWAE bound) or ``"dreg"`` (its doubly reparameterised gradient);
            default ``"elbo"``.
        max_plate_nesting: plates besides the particle plate (default 2: strata and data).
    """


class MoPoEELBO(MultimodalELBO):
    r"""MoPoE's objective (Sutter et al. 2021): the same stratified estimator, but the guide
    scores each subset's sample by that subset's PoE, so the KL term is the average over
    subsets of :math:`\mathrm{KL}(\mathrm{PoE}(T)\,\|\,p(z))` (see
    :class:`~pyro_mmvae.models.MoPoE`).

    Args:
        num_particles: K, importance samples per data point and stratum (default 1).
        estimator: ``"elbo"`` (K = 1 form, mean of :math:`\log w_k`), ``"iwae"`` (the looser
            per-stratum IWAE bound) or ``"dreg"`` (its doubly reparameterised gradient);
            default ``"elbo"``.
        max_plate_nesting: plates besides the particle plate (default 2: strata and data).
    """
