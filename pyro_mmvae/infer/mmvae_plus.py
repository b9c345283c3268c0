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

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_mmvae.infer.base import MultimodalELBO, _latent_sites


def dreg_gradient_factor(site: dict, normalised: Tensor) -> Tensor:
    r"""The factor a site's value gradient is multiplied by in the DReG surrogate.

    :math:`\tilde\omega` where the site is scored (its mask is True or absent), 1 where it is
    masked out; shape ``(K, S, B, 1, ...)`` broadcastable to the site's value.
    """
    mask = site["mask"]
    factor = normalised
    if isinstance(mask, Tensor):
        factor = torch.where(mask, normalised, torch.ones_like(normalised))
    elif mask is False:
        factor = torch.ones_like(normalised)
    extra = site["value"].dim() - normalised.dim()
    return factor.reshape(factor.shape + (1,) * extra)


class MMVAEPlusELBO(MultimodalELBO):
    """MMVAE+'s stratified objective (also the private-latent baseline's: the model decides
    where :math:`\\tilde w_d` comes from).

    :param num_particles: K.
    :param estimator: ``"elbo"``, ``"iwae"`` or ``"dreg"``.
    """

    def _dreg_surrogate(self, model_trace: Trace, guide_trace: Trace) -> Tensor:
        """Per-stratum DReG surrogate ``(S, B)``: hooks scale each latent's gradient by
        :func:`dreg_gradient_factor`; the value gradient of the surrogate itself carries one
        more :math:`\\tilde\\omega` (decoders: the IWAE gradient)."""
        detached = self.weigh(model_trace, guide_trace, detach_guide=True).log_weights
        normalised = torch.softmax(detached.detach(), dim=0)
        for site in _latent_sites(guide_trace):
            value = site["value"]
            if not value.requires_grad:
                continue
            if value.shape[: normalised.dim()] != normalised.shape:
                raise NotImplementedError(f"DReG needs site {site['name']!r} to have one value "
                                          "per particle, stratum and data point")
            factor = dreg_gradient_factor(site, normalised)
            value.register_hook(lambda grad, f=factor: grad * f)
        return (normalised * detached).sum(0)
