r"""Objectives of the coordination-based models: JMVAE-KL, TELBO, MVTCAE and CRMVAE.

All four are weighted sums of the same few per-datapoint pieces, which
:class:`CoordinationELBO` computes once from the traces of a
:class:`~pyro_mmvae.models.CoordinationVAE` (Normal :math:`q`, all KL terms in closed form):

===================  ===========================================================  ==========
piece                formula (per data point)                                     from
===================  ===========================================================  ==========
``joint_rec``        :math:`R = \sum_m \lambda_m \log p(x_m|z),\ z \sim q(z|X)`   observe
``unimodal_rec[m]``  :math:`R_m = \sum_{n \in T_m} \lambda_n \log p(x_n|z),`      sites of
                     :math:`z \sim q_m(z|x_m)`, :math:`T_m = \{m\}` or all        strata 1..M
``joint_kl``         :math:`\mathrm{KL}(q(z|X) \,\|\, p(z))`                       guide z
``coordination_kl``  :math:`C_m = \mathrm{KL}(q(z|X) \,\|\, q_m(z|x_m))`            guide z
``unimodal_kl``      :math:`U_m = \mathrm{KL}(q_m(z|x_m) \,\|\, p(z))`              guide z
===================  ===========================================================  ==========

Reconstructions are Monte-Carlo (mean over the K particles of the ``particles`` plate) and
include the modality weights :math:`\lambda_m` and presence masks Pyro recorded on the
observe sites; the KL terms are analytic (:func:`gaussian_kl`). :math:`\beta_t` is the scale
Pyro recorded on the latent site (the model's β with its KL warm-up) and
:math:`w_t = \beta_t/\beta` the warm-up factor (``infer["kl_warmup"]`` of that site). Terms of
an absent modality m are zero; the weights below use the total number of modalities M.

Objectives (maximised; each subclass only names its weights and terms):

* JMVAE-KL (Suzuki et al. 2016): :math:`R - \beta_t\,\mathrm{KL}(q\|p)
  - \alpha\, w_t \sum_m C_m` (α is annealed with the same warm-up, as in MultiVae).
* TELBO (Vedantam et al. 2018): :math:`\big[R - \beta_t \mathrm{KL}(q\|p)\big]
  + \sum_m \big[R_m - \beta_t U_m\big]`, trained in two stages (see
  :mod:`pyro_mmvae.stages`).
* MVTCAE (Hwang et al. 2021): :math:`\frac{M-\alpha}{M} R - \beta_t\big[(1-\alpha)
  \mathrm{KL}(q\|p) + \frac{\alpha}{M}\sum_m C_m\big]`.
* CRMVAE (*Mitigating the limitations of multimodal VAEs with coordination-based
  approach*, 2023): with :math:`\pi = 1/(M+1)`,
  :math:`\pi\big[R + \sum_m R_m\big] - \beta_t\,\pi\big[\mathrm{KL}(q\|p) + \sum_m C_m\big]`.
  Convention: the reconstruction sum is **not** halved. MultiVae's code divides the
  reconstructions by :math:`2(M+1)` and the KL terms by :math:`M+1`; its objective at
  :math:`\beta'` equals one half of ours at :math:`\beta = 2\beta'`.

**Missing modalities.** A row that observes the subset :math:`S` gets the same objective
with :math:`X` replaced by :math:`X_S`: :math:`R = \sum_{m \in S} \lambda_m \log p(x_m|z)`
with :math:`z \sim q(z|X_S)`, :math:`\mathrm{KL}(q(z|X_S)\|p)`, and :math:`R_m = C_m = U_m
= 0` for :math:`m \notin S` (the weights keep the total M). For TELBO that is
:math:`\mathrm{ELBO}(X_S; q(z|X_S)) + \sum_{m \in S}\mathrm{ELBO}(x_m; q_m)`. The model
decides what :math:`q(z|X_S)` is (:mod:`pyro_mmvae.models.coordination`, setting
``incomplete_joint``): the PoE of the present experts, or, for TELBO, the joint encoder
reading :math:`X_S` (absent modalities' features zeroed). TELBO needs the latter: in its first
stage the unimodal encoders are frozen, so a PoE :math:`q(z|X_S)` would be a product of
frozen random experts on every incomplete row and the decoders would learn nothing useful
from them.

Only the ``"elbo"`` estimator exists for these objectives (K particles averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from pyro_mmvae.distributions.coordinated import CoordinatedPosterior
from pyro_mmvae.infer.base import MultimodalELBO, _unwrap, site_log_prob

LATENT_SITE = "z"


def gaussian_kl(loc1: Tensor, scale1: Tensor, loc2: Tensor, scale2: Tensor) -> Tensor:
    r"""KL between diagonal Gaussians, summed over the last dimension.

    .. math:: \mathrm{KL}(\mathcal{N}(\mu_1, \sigma_1^2) \,\|\, \mathcal{N}(\mu_2, \sigma_2^2))
              = \sum_d \Big[\log\frac{\sigma_{2,d}}{\sigma_{1,d}}
              + \frac{\sigma_{1,d}^2 + (\mu_{1,d} - \mu_{2,d})^2}{2\sigma_{2,d}^2}
              - \frac12\Big]

    Args:
        loc1: :math:`\mu_1`, shape ``(..., D)``.
        scale1: :math:`\sigma_1 > 0`, broadcastable with ``loc1``.
        loc2: :math:`\mu_2`, broadcastable with ``loc1``.
        scale2: :math:`\sigma_2 > 0`, broadcastable with ``loc1``.

    Returns:
        The KL in nats, the broadcast shape without its last dim ``(...)``.
    """
    return kl_divergence(Normal(loc1, scale1), Normal(loc2, scale2)).sum(-1)


@dataclass
class CoordinationTerms:
    r"""The shared pieces of every coordination objective, per data point.

    Shapes: ``(B,)`` for joint terms, ``(M, B)`` for per-modality terms (zero where the
    modality is absent). ``unimodal_rec`` is ``None`` when the model draws no unimodal strata.

    Attributes:
        joint_rec: :math:`R`, ``(B,)``: :math:`\sum_m \lambda_m \log p(x_m|z)`,
            :math:`z \sim q(z|X_S)`, mean over the K particles (nats).
        unimodal_rec: :math:`R_m`, ``(M, B)``, reconstructions from :math:`z \sim q_m(z|x_m)`,
            or ``None`` without unimodal strata.
        joint_kl: :math:`\mathrm{KL}(q(z|X_S)\,\|\,p(z))`, ``(B,)``.
        coordination_kl: :math:`C_m = \mathrm{KL}(q(z|X_S)\,\|\,q_m(z|x_m))`, ``(M, B)``.
        unimodal_kl: :math:`U_m = \mathrm{KL}(q_m(z|x_m)\,\|\,p(z))`, ``(M, B)``.
        present: bool ``(M, B)``, True where modality m of data point b is observed.
        beta: :math:`\beta_t`, the scale Pyro recorded on the latent site (the model's β with
            its KL warm-up): a float or a broadcastable tensor.
        warmup: :math:`w_t = \beta_t/\beta`, the warm-up factor in [0, 1] (1 without warm-up).
    """

    joint_rec: Tensor
    unimodal_rec: Tensor | None
    joint_kl: Tensor
    coordination_kl: Tensor
    unimodal_kl: Tensor
    present: Tensor
    beta: Tensor | float
    warmup: float

    @property
    def num_modalities(self) -> int:
        """The number of modalities M."""
        return self.present.size(0)


class CoordinationELBO(MultimodalELBO):
    r"""Computes :class:`CoordinationTerms` from the traces; subclasses combine them.

    The guide must be a :class:`~pyro_mmvae.models.CoordinationVAE`'s (its latent site ``z``
    carries a :class:`~pyro_mmvae.distributions.coordinated.CoordinatedPosterior`).

    Args:
        num_particles: K, reconstructions are averaged over K draws of z (default 1).
        estimator: only ``"elbo"`` (the default); anything else raises ``ValueError``.
    """

    #: Whether the objective needs the unimodal strata (reconstructions from :math:`q_m`).
    needs_unimodal_strata = False

    def __init__(self, num_particles: int = 1, estimator: str = "elbo") -> None:
        if estimator != "elbo":
            raise ValueError(f"the coordination objectives support only estimator='elbo', got "
                             f"{estimator!r}")
        super().__init__(num_particles=num_particles, estimator=estimator)

    # ------------------------------------------------------------------- shared pieces
    def terms(self, model_trace: Trace, guide_trace: Trace) -> CoordinationTerms:
        """Reconstructions from the observe sites, analytic KLs from the latent site.

        Args:
            model_trace: the model trace from :meth:`get_traces` (observe sites ``x_<name>``
                and a Normal prior at site ``z``).
            guide_trace: the guide trace; its site ``z`` must carry a stratified
                :class:`~pyro_mmvae.distributions.coordinated.CoordinatedPosterior`.

        Returns:
            The :class:`CoordinationTerms` of the batch.

        Raises:
            ValueError: when the traces are not a :class:`~pyro_mmvae.models.CoordinationVAE`'s
                (no site ``z``, another posterior or prior, no observed site) or lack the
                unimodal strata the objective needs.
        """
        if LATENT_SITE not in guide_trace.nodes or LATENT_SITE not in model_trace.nodes:
            raise ValueError("the coordination objectives need a latent site 'z' in model "
                             "and guide (a CoordinationVAE's programs)")
        site = guide_trace.nodes[LATENT_SITE]
        q = _unwrap(site["fn"])
        if not isinstance(q, CoordinatedPosterior) or not q.stratified:
            raise ValueError("the guide's 'z' must be a stratified CoordinatedPosterior; train "
                             "a CoordinationVAE with its own guide (stratify=True)")
        if self.needs_unimodal_strata and not q.unimodal:
            raise ValueError(f"{type(self).__name__} needs reconstructions from the unimodal "
                             "posteriors: build the model with unimodal_targets='own' or 'all'")
        p_loc, p_scale = self._prior_params(model_trace)
        rec = self._reconstructions(model_trace, q)
        return CoordinationTerms(
            joint_rec=rec[0],
            unimodal_rec=rec[1:] if q.unimodal else None,
            joint_kl=gaussian_kl(q.joint_loc, q.joint_scale, p_loc, p_scale),
            coordination_kl=self._where_present(
                q, gaussian_kl(q.joint_loc, q.joint_scale, q.expert_loc, q.expert_scale)),
            unimodal_kl=self._where_present(
                q, gaussian_kl(q.expert_loc, q.expert_scale, p_loc, p_scale)),
            present=q.present,
            beta=site["scale"],
            warmup=float(site["infer"].get("kl_warmup", 1.0)),
        )

    @staticmethod
    def _where_present(q: CoordinatedPosterior, per_modality: Tensor) -> Tensor:
        """Zero the ``(M, B)`` terms of absent modalities (their encoders saw zeros)."""
        return torch.where(q.present, per_modality, per_modality.new_zeros(()))

    @staticmethod
    def _prior_params(model_trace: Trace) -> tuple[Tensor, Tensor]:
        """``loc`` and ``scale`` ``(D,)`` of the Normal prior :math:`p(z)` (the same for every
        data point, stratum and particle)."""
        prior = _unwrap(model_trace.nodes[LATENT_SITE]["fn"])
        if not isinstance(prior, torch.distributions.Normal):
            raise ValueError(f"the coordination objectives need a Normal prior p(z), got "
                             f"{type(prior).__name__}")
        dim = prior.mean.size(-1)
        return prior.mean.reshape(-1, dim)[0], prior.stddev.reshape(-1, dim)[0]

    @staticmethod
    def _reconstructions(model_trace: Trace, q: CoordinatedPosterior) -> Tensor:
        r""":math:`\sum_m \lambda_m \log p(x_m | z_s)` per stratum, mean over particles:
        ``(S, B)``."""
        total = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                total = total + site_log_prob(site)
        if not isinstance(total, Tensor):
            raise ValueError("the model has no observed sites")
        shape = q.loc.shape[:-1]
        return total.reshape(-1, *shape).mean(0)

    # ------------------------------------------------------------------- objective
    def combine(self, terms: CoordinationTerms) -> Tensor:
        """The objective per data point, ``(B,)``, from the shared pieces.

        Args:
            terms: the :class:`CoordinationTerms` of the batch (from :meth:`terms`).

        Returns:
            The objective in nats per data point, shape ``(B,)`` (to be maximised).
        """
        raise NotImplementedError

    def objective(self, model, guide, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """``(value, surrogate)``: the objective summed over the batch (twice: the estimator
        is reparameterised and the KL terms analytic, so the value is its own surrogate).

        Args:
            model: a :class:`~pyro_mmvae.models.CoordinationVAE`'s ``model``.
            guide: its ``guide`` (run with ``stratify=True``, the default).
            *args: the batch, passed to both programs: ``data`` (dict of modality name ->
                tensor ``(B, ...)``), then optional ``mask`` (dict of name -> bool ``(B,)``).
            **kwargs: further keyword arguments of both programs.

        Returns:
            ``(value, value)``: the scalar objective in nats summed over the batch.
        """
        model_trace, guide_trace = self.get_traces(model, guide, args, kwargs)
        value = self.combine(self.terms(model_trace, guide_trace)).sum()
        return value, value


class JMVAEELBO(CoordinationELBO):
    r"""JMVAE-KL: :math:`R - \beta_t\,\mathrm{KL}(q(z|X)\|p) - \alpha\,w_t\sum_m
    \mathrm{KL}(q(z|X)\|q_m)`.

    Args:
        alpha: α >= 0, the weight of the KL terms that pull :math:`q_m` towards :math:`q(z|X)`
            (default 0.1, as Suzuki et al.; 1.0 is also common).
        **kwargs: ``num_particles`` and ``estimator`` of :class:`CoordinationELBO`.
    """

    def __init__(self, alpha: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def combine(self, t: CoordinationTerms) -> Tensor:
        r""":math:`R - \beta_t\,\mathrm{KL}(q\|p) - \alpha\,w_t\sum_m C_m`.

        Args:
            t: the :class:`CoordinationTerms` of the batch.

        Returns:
            The objective per data point, ``(B,)``, in nats.
        """
        return (t.joint_rec - t.beta * t.joint_kl
                - self.alpha * t.warmup * t.coordination_kl.sum(0))


class TELBOELBO(CoordinationELBO):
    r"""TELBO: :math:`\mathrm{ELBO}(X; q(z|X)) + \sum_m \mathrm{ELBO}(x_m; q_m(z|x_m))`,
    i.e. :math:`R - \beta_t\,\mathrm{KL}(q\|p) + \sum_m (R_m - \beta_t U_m)`; on a row
    observing :math:`S`, :math:`\mathrm{ELBO}(X_S; q(z|X_S)) + \sum_{m \in S}
    \mathrm{ELBO}(x_m; q_m)` (the zoo's TELBO takes :math:`q(z|X_S)` from the joint encoder,
    ``incomplete_joint="encoder"``).

    Args:
        num_particles: K, reconstructions are averaged over K draws of z (default 1).
        estimator: only ``"elbo"`` (the default).
    """

    needs_unimodal_strata = True

    def combine(self, t: CoordinationTerms) -> Tensor:
        r""":math:`R - \beta_t\,\mathrm{KL}(q\|p) + \sum_m (R_m - \beta_t U_m)`.

        Args:
            t: the :class:`CoordinationTerms` of the batch.

        Returns:
            The objective per data point, ``(B,)``, in nats.
        """
        joint = t.joint_rec - t.beta * t.joint_kl
        unimodal = t.unimodal_rec - t.beta * t.unimodal_kl
        return joint + unimodal.sum(0)


class MVTCAEELBO(CoordinationELBO):
    r"""MVTCAE: :math:`\frac{M-\alpha}{M} R - \beta_t\big[(1-\alpha)\mathrm{KL}(q\|p)
    + \frac{\alpha}{M}\sum_m \mathrm{KL}(q\|q_m)\big]`, :math:`q = \mathrm{PoE}(X)`.

    Args:
        alpha: α ∈ [0, 1], the share of the total-correlation (cross-view) terms (default
            5/6, the MVTCAE PolyMNIST setting).
        **kwargs: ``num_particles`` and ``estimator`` of :class:`CoordinationELBO`.
    """

    def __init__(self, alpha: float = 5 / 6, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def combine(self, t: CoordinationTerms) -> Tensor:
        r""":math:`\frac{M-\alpha}{M} R - \beta_t\big[(1-\alpha)\mathrm{KL}(q\|p)
        + \frac{\alpha}{M}\sum_m C_m\big]`.

        Args:
            t: the :class:`CoordinationTerms` of the batch.

        Returns:
            The objective per data point, ``(B,)``, in nats.
        """
        num = t.num_modalities
        kl = (1 - self.alpha) * t.joint_kl + self.alpha / num * t.coordination_kl.sum(0)
        return (num - self.alpha) / num * t.joint_rec - t.beta * kl


class CRMVAEELBO(CoordinationELBO):
    r"""CRMVAE: :math:`\pi\big[R + \sum_m R_m\big] - \beta_t\,\pi\big[\mathrm{KL}(q\|p)
    + \sum_m \mathrm{KL}(q\|q_m)\big]`, :math:`\pi = 1/(M+1)`, :math:`q = \mathrm{PoE}(X)`.

    :math:`R_m` reconstructs :math:`x_m` (or every modality, with the model's
    ``unimodal_targets="all"``) from :math:`q_m`; the model's ``decoder_stop_gradient``
    keeps those gradients out of the decoders.

    Args:
        num_particles: K, reconstructions are averaged over K draws of z (default 1).
        estimator: only ``"elbo"`` (the default).
    """

    needs_unimodal_strata = True

    def combine(self, t: CoordinationTerms) -> Tensor:
        r""":math:`\pi\big[R + \sum_m R_m\big] - \beta_t\,\pi\big[\mathrm{KL}(q\|p)
        + \sum_m C_m\big]`, :math:`\pi = 1/(M+1)`.

        Args:
            t: the :class:`CoordinationTerms` of the batch.

        Returns:
            The objective per data point, ``(B,)``, in nats.
        """
        weight = 1.0 / (t.num_modalities + 1)
        rec = t.joint_rec + t.unimodal_rec.sum(0)
        kl = t.joint_kl + t.coordination_kl.sum(0)
        return weight * rec - t.beta * weight * kl
