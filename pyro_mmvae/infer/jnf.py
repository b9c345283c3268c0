r"""The JNF objective (Senellart, Chadebec, Allassonnière 2023): the joint ELBO plus the
flow-matching terms of the unimodal posteriors.

Per data point observing the modalities :math:`S` (all of them on complete data),

.. math:: \mathcal{L}(X_S) = \underbrace{\mathbb{E}_{q_\phi(z|X_S)}\Big[\sum_{m \in S}
          \lambda_m \log p_\theta(x_m|z)\Big] - \beta_t\,\mathrm{KL}(q_\phi(z|X_S)\,\|\,p(z))
          }_{\text{joint ELBO}} \;-\; \sum_{m \in S} C_m,

.. math:: C_m = \mathbb{E}_{\bar z \sim \bar q(z|X_S)}\big[\log \bar q(\bar z|X_S)
          - \log q_{\phi_m}(\bar z|x_m)\big]
          = \mathrm{KL}\big(\bar q(z|X_S)\,\|\,q_{\phi_m}(z|x_m)\big),

where the bar is a stop-gradient: the draw :math:`\bar z` and the joint posterior's density
are detached, so :math:`C_m` trains the unimodal encoder and its flow only (the paper's
second stage, MultiVae's ``JNF`` after its ``warmup``), and the joint ELBO trains the joint
encoder and the decoders only. :math:`q_{\phi_m}` is a normalizing flow
(:class:`~pyro_mmvae.models.jnf.FlowPosterior`), so :math:`C_m` is a Monte-Carlo estimate
(K particles averaged; the joint KL is analytic). Its value is that of the KL (nonnegative in
expectation); its gradient is that of :math:`-\mathbb{E}[\log q_{\phi_m}(\bar z|x_m)]`,
the maximum-likelihood fit of the flow to draws of the joint posterior.

The coordination terms carry no warm-up or β (the paper's unimodal stage has none). Only the
``"elbo"`` estimator exists.
"""

from __future__ import annotations

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_mmvae.infer.base import _unwrap
from pyro_mmvae.infer.coordination import LATENT_SITE, CoordinationELBO, CoordinationTerms


class JNFELBO(CoordinationELBO):
    r"""JNF: :math:`R - \beta_t\,\mathrm{KL}(q_\phi(z|X_S)\|p) - \sum_{m \in S} C_m` (module
    docstring), for a :class:`~pyro_mmvae.models.JNF` (or JNF-DCCA) model.

    Args:
        num_particles: K, draws of z averaged in the reconstruction and in each
            :math:`C_m` (default 1).
        estimator: only ``"elbo"`` (the default).
    """

    def flow_terms(self, guide_trace: Trace) -> Tensor:
        r""":math:`C_m`, ``(M, B)``: the Monte-Carlo KL from the (detached) joint posterior
        to each flow posterior, mean over the particles, zero where m is absent.

        Args:
            guide_trace: the guide trace of a JNF model (site ``z`` drawn from a
                :class:`~pyro_mmvae.models.jnf.FlowCoordinatedPosterior`).

        Raises:
            ValueError: when the guide's ``z`` carries no flow posteriors.
        """
        site = guide_trace.nodes[LATENT_SITE]
        q = _unwrap(site["fn"])
        flows = getattr(q, "flows", None)
        if flows is None:
            raise ValueError("JNFELBO needs a JNF model's guide (its 'z' carries the flow "
                             "posteriors q_m(z|x_m))")
        z = site["value"].detach()  # (K, 1, B, D)
        joint = torch.distributions.Normal(q.joint_loc.detach(), q.joint_scale.detach())
        log_joint = joint.log_prob(z).sum(-1)  # (K, 1, B)
        terms = torch.stack([log_joint - flow.log_prob(z) for flow in flows])  # (M, K, 1, B)
        terms = terms.reshape(terms.size(0), -1, terms.size(-1)).mean(1)
        return torch.where(q.present, terms, terms.new_zeros(()))

    def combine_flows(self, t: CoordinationTerms, flow_terms: Tensor) -> Tensor:
        r""":math:`R - \beta_t\,\mathrm{KL}(q\|p) - \sum_m C_m`, per data point ``(B,)``.

        Args:
            t: the :class:`~pyro_mmvae.infer.CoordinationTerms` of the batch.
            flow_terms: :math:`C_m`, ``(M, B)``, from :meth:`flow_terms`.
        """
        return t.joint_rec - t.beta * t.joint_kl - flow_terms.sum(0)

    def objective(self, model, guide, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """``(value, surrogate)``: the objective summed over the batch (the same tensor: the
        joint terms are reparameterised or analytic, the flow terms score detached draws).

        Args:
            model: a JNF model's ``model``.
            guide: its ``guide`` (``stratify=True``, the default).
            *args: the batch: ``data`` then optional ``mask``, as for every objective.
            **kwargs: further keyword arguments of both programs.
        """
        model_trace, guide_trace = self.get_traces(model, guide, args, kwargs)
        terms = self.terms(model_trace, guide_trace)
        value = self.combine_flows(terms, self.flow_terms(guide_trace)).sum()
        return value, value


def cca_correlation(h1: Tensor, h2: Tensor, weight: Tensor | None = None,
                    reg: float = 1e-3) -> Tensor:
    r"""The total canonical correlation of two views, the DCCA objective (Andrew et al. 2013):

    .. math:: \mathrm{corr}(H_1, H_2) = \big\|\Sigma_{11}^{-1/2}\,\Sigma_{12}\,
              \Sigma_{22}^{-1/2}\big\|_{\mathrm{tr}},

    the sum of the singular values (canonical correlations) of that matrix, with
    :math:`\Sigma_{ii} = \frac{1}{n-1} \bar H_i^\top \bar H_i + r I` and
    :math:`\Sigma_{12} = \frac{1}{n-1}\bar H_1^\top \bar H_2` over the n rows of positive
    ``weight`` (:math:`\bar H`: centred). Computed with Cholesky factors
    :math:`\Sigma_{ii} = L_i L_i^\top`: :math:`L_1^{-1}\Sigma_{12}L_2^{-\top}` has the same
    singular values, and ``svdvals`` alone has a gradient that stays finite when they repeat
    (the square-root-of-eigenvalues route gives NaN for a pair of modalities with few common
    rows).

    Args:
        h1: the first view's embeddings, ``(B, E)``.
        h2: the second view's, ``(B, E)``.
        weight: optional ``(B,)`` row weights in {0, 1} (rows where both views are observed);
            None: every row.
        reg: r, the ridge added to each covariance (default 1e-3).

    Returns:
        The scalar correlation, in [0, E].
    """
    if weight is None:
        weight = h1.new_ones(h1.size(0))
    w = weight.to(h1.dtype).unsqueeze(-1)
    n = w.sum()
    c1 = h1 - (w * h1).sum(0) / n.clamp(min=1)
    c2 = h2 - (w * h2).sum(0) / n.clamp(min=1)
    denom = (n - 1).clamp(min=1)
    eye = torch.eye(h1.size(-1), dtype=h1.dtype, device=h1.device)
    l1 = torch.linalg.cholesky_ex((w * c1).T @ c1 / denom + reg * eye)[0]
    l2 = torch.linalg.cholesky_ex((w * c2).T @ c2 / denom + reg * eye)[0]
    s12 = (w * c1).T @ c2 / denom
    left = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^-1 S12
    t = torch.linalg.solve_triangular(l2, left.T, upper=False).T  # L1^-1 S12 L2^-T
    return torch.linalg.svdvals(t).sum()


class JNFDCCAELBO(JNFELBO):
    r"""JNF-DCCA: the JNF objective plus the DCCA term of the batch,

    .. math:: \sum_b \mathcal{L}_{\mathrm{JNF}}(X_b) \;+\; \sum_{i<j}
              \mathrm{corr}\big(g_i(x_i), g_j(x_j)\big),

    each pair over the rows observing both (:func:`cca_correlation`). The DCCA term is the
    only one that reaches the embedding networks :math:`g_m` (the unimodal heads read them
    through a stop-gradient), and it reaches nothing else; it is a batch quantity, added once
    to the batch's objective.

    Args:
        num_particles: K, as for :class:`JNFELBO` (default 1).
        estimator: only ``"elbo"`` (the default).
        reg: the ridge r of the DCCA covariances (default 1e-3).
    """

    def __init__(self, num_particles: int = 1, estimator: str = "elbo",
                 reg: float = 1e-3) -> None:
        super().__init__(num_particles=num_particles, estimator=estimator)
        if not reg > 0:
            raise ValueError(f"reg must be positive, got {reg}")
        self.reg = float(reg)

    def dcca_term(self, guide_trace: Trace) -> Tensor:
        r""":math:`\sum_{i<j}\mathrm{corr}(g_i(x_i), g_j(x_j))`, a scalar.

        Args:
            guide_trace: the guide trace of a JNF-DCCA model (its ``z`` carries a
                :class:`~pyro_mmvae.models.jnf.DCCAPosterior`).

        Raises:
            ValueError: when the guide carries no DCCA embeddings.
        """
        q = _unwrap(guide_trace.nodes[LATENT_SITE]["fn"])
        embeddings = getattr(q, "embeddings", None)
        if embeddings is None:
            raise ValueError("JNFDCCAELBO needs a JNF-DCCA model's guide (its 'z' carries the "
                             "DCCA embeddings)")
        total = embeddings.new_zeros(())
        num = embeddings.size(0)
        for i in range(num):
            for j in range(i + 1, num):
                both = q.present[i] & q.present[j]
                total = total + cca_correlation(embeddings[i], embeddings[j], both, self.reg)
        return total

    def objective(self, model, guide, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """``(value, surrogate)``: the JNF objective summed over the batch plus the DCCA term.

        Args:
            model: a JNF-DCCA model's ``model``.
            guide: its ``guide``.
            *args: the batch: ``data`` then optional ``mask``.
            **kwargs: further keyword arguments of both programs.
        """
        model_trace, guide_trace = self.get_traces(model, guide, args, kwargs)
        terms = self.terms(model_trace, guide_trace)
        value = (self.combine_flows(terms, self.flow_terms(guide_trace)).sum()
                 + self.dcca_term(guide_trace))
        return value, value
