r"""The MMVAE+ objective (Palumbo et al. 2023), stratified over the mixture components.

.. math::
    \mathcal{L}(X) = \frac{1}{|S|}\sum_{r \in S}
        \mathbb{E}\Big[\log \frac{1}{K}\sum_{k=1}^K \exp \log w_r^{(k)}\Big],

    \log w_r = \lambda_r \log p(x_r|z, w_r) + \sum_{d \neq r} \lambda_d \log p(x_d|z, \tilde w_d)
             + \beta\big[\log p(z) + \log p(w_r) - \log q_\Phi(z|X) - \log q_r(w_r|x_r)\big]

with :math:`z, w_r \sim q_r(z|x_r)\,q_r(w_r|x_r)`, :math:`\tilde w_d \sim r_d(w_d)` (MMVAE+)
or :math:`q_d(w_d|x_d)` (the private-latent MMVAE baseline), :math:`q_\Phi` the mixture of the
present experts S and absent modalities dropped from the sums. The log-weight comes out of
the traces of :class:`~pyro_mmvae.models.MMVAEPlus` (sites ``z``, ``w_<name>``, ``x_<name>``;
the ``w_d`` sites are masked to stratum d), so the estimators are those of
:class:`~pyro_mmvae.infer.MultimodalELBO`: ``"elbo"`` (K = 1: the paper's objective),
``"iwae"`` and ``"dreg"`` (K > 1).

DReG (Tucker et al. 2019) here: a latent that the guide *scores* (z and :math:`w_r` in
stratum r) gets its pathwise gradient weighted by :math:`\tilde\omega_k^2`, as in MMVAE. The
cross-modal :math:`\tilde w_d` is not scored (its density appears in neither the model nor
the guide part of the weight), so its proposal has no score-function term to remove: its
gradient stays the IWAE one, :math:`\sum_k \tilde\omega_k\,\partial_{\tilde w}\log w_k\,
\partial \tilde w_k` — this is what trains the scale of :math:`r_d` (and, in the baseline,
reaches :math:`q_d` through :math:`\tilde w_d`).
"""

from __future__ import annotations

from pyro_mmvae.infer.base import MultimodalELBO


class MMVAEPlusELBO(MultimodalELBO):
    """MMVAE+'s stratified objective (also the private-latent baseline's: the model decides
    where :math:`\\tilde w_d` comes from). Everything is the base class's: the log-weights
    come from the traces, and its DReG surrogate leaves the unscored :math:`\\tilde w_d`
    their IWAE gradient (:func:`~pyro_mmvae.infer.base.dreg_gradient_factor`).

    Args:
        num_particles: K, importance samples per data point and stratum (default 1; the
            paper's objective is K = 1 with ``"elbo"``).
        estimator: ``"elbo"``, ``"iwae"`` or ``"dreg"`` (default ``"elbo"``; see
            :class:`~pyro_mmvae.infer.MultimodalELBO`).
        max_plate_nesting: plates besides the particle plate (default 2: strata and data).
    """
