r"""The DMVAE objective (Lee & Pavlovic 2021): the joint ELBO plus one ELBO per unimodal
shared posterior, each reconstructing every present modality.

.. math::
    \mathcal{L}(X) = \sum_{s \in \{\mathrm{PoE}\} \cup S} \mathbb{E}\Big[\log \frac1K
        \sum_{k=1}^K w_{s,k}\Big],\qquad
    \log w_s = \sum_{n \in S} \lambda_n \log p(x_n|z_s, w_n)
        + \beta\big[\log p(z_s) - \log q_s(z_s)\big]
        + \beta_w \sum_{n \in S}\big[\log p(w_n) - \log q_n(w_n|x_n)\big]

with :math:`z_{\mathrm{PoE}} \sim q(z|X_S) \propto p(z)\prod_{m \in S} q_m(z|x_m)`,
:math:`z_m \sim q_m(z|x_m)`, :math:`w_n \sim q_n(w_n|x_n)` drawn afresh in each ELBO and S
the present modalities of the row. K = 1 with ``"elbo"`` is the paper's objective (MultiVae
writes its KL terms in closed form; here they are the single-sample Monte-Carlo estimates
Pyro's traces give, with the same expectation). ``"iwae"`` and ``"dreg"`` (K > 1) bound each
ELBO of the sum by importance sampling.

The log-weights come out of the traces of :class:`~pyro_mmvae.models.DMVAE`, whose guide
scores each stratum by its own posterior and weighs every available stratum 1, so the base
class computes the sum: nothing here differs from :class:`~pyro_mmvae.infer.MultimodalELBO`
but the name and this documentation.
"""

from __future__ import annotations

from pyro_mmvae.infer.base import MultimodalELBO


class DMVAEELBO(MultimodalELBO):
    """DMVAE's summed ELBOs (joint PoE + unimodal), from a :class:`~pyro_mmvae.models.DMVAE`'s
    traces.

    Args:
        num_particles: K, importance samples per data point and ELBO (default 1).
        estimator: ``"elbo"``, ``"iwae"`` or ``"dreg"`` (default ``"elbo"``; see
            :class:`~pyro_mmvae.infer.MultimodalELBO`).
        max_plate_nesting: plates besides the particle plate (default 2: strata and data).
    """
