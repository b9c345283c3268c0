r"""The conditional ELBO of the conditional VAE (Sohn et al. 2015).

.. math::
    \mathcal{L}(x_t \mid x_s) = \mathbb{E}_{z \sim q_\phi(z|x_s,x_t)}\Big[\log \frac1K
        \sum_{k=1}^K w_k\Big],\qquad
    \log w_k = \lambda_t \log p_\theta(x_t|z_k,x_s)
        + \beta\big[\log p_\psi(z_k|x_s) - \log q_\phi(z_k|x_s,x_t)\big]

(K = 1 with ``"elbo"``: Sohn et al.'s objective, the KL term as its single-sample estimate;
MultiVae's ``CVAE`` writes it in closed form, with the same expectation). ``"iwae"`` and
``"dreg"`` (K > 1) are the importance-weighted bound on :math:`\log p(x_t|x_s)` and its doubly
reparameterised gradient.

The log-weights come out of the traces of :class:`~pyro_mmvae.models.CVAE`, whose sites lie
in the ``data`` plate only (no strata): the one difference from
:class:`~pyro_mmvae.infer.MultimodalELBO` is the plate nesting, 1 instead of 2.
"""

from __future__ import annotations

from pyro_mmvae.infer.base import MultimodalELBO


class CVAEELBO(MultimodalELBO):
    """The conditional VAE's ELBO (or IWAE/DReG bound) of :math:`\\log p(x_t|x_s)`.

    Args:
        num_particles: K, importance samples per data point (default 1).
        estimator: ``"elbo"``, ``"iwae"`` or ``"dreg"`` (default ``"elbo"``; see
            :class:`~pyro_mmvae.infer.MultimodalELBO`).
        max_plate_nesting: plates besides the particle plate (default 1: the data plate).
    """

    def __init__(self, num_particles: int = 1, estimator: str = "elbo",
                 max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, estimator=estimator,
                         max_plate_nesting=max_plate_nesting)
