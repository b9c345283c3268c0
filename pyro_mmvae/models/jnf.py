r"""JNF: a joint VAE whose unimodal posteriors are normalizing flows (Senellart et al. 2023),
and JNF-DCCA (:class:`JNFDCCA`), whose unimodal posteriors read DCCA embeddings.

Senellart, Chadebec, Allassonnière, *Improving Multimodal Joint Variational Autoencoders
through Normalizing Flows and Correlation Analysis* (2023, https://arxiv.org/abs/2305.11832).

The generative model is the library's, :math:`z \sim p(z)`, :math:`x_m \sim p_\theta(x_m|z)`.
Inference has two parts:

* a joint encoder :math:`q_\phi(z|X)` (Gaussian, :class:`~pyro_mmvae.nets.JointEncoder`),
  trained with the joint ELBO
  :math:`\mathbb{E}_{q_\phi(z|X)}[\sum_m \lambda_m \log p_\theta(x_m|z)]
  - \beta\,\mathrm{KL}(q_\phi(z|X)\,\|\,p(z))`;
* unimodal posteriors :math:`q_{\phi_m}(z|x_m)`: a Gaussian
  :math:`\mathcal{N}(\mu_m(x_m), \sigma_m(x_m))` (the modality's encoder) pushed through a
  masked autoregressive flow :math:`f_m = f_{m,K} \circ \dots \circ f_{m,1}` (MAF, Papamakarios
  et al. 2017), trained to match the joint posterior,
  :math:`\min \mathrm{KL}(q_\phi(z|X)\,\|\,q_{\phi_m}(z|x_m))` with z drawn from
  :math:`q_\phi(z|X)` (:class:`~pyro_mmvae.infer.JNFELBO`).

**The flows are Pyro's.** Each :math:`f_{m,k}` is the inverse of a
:class:`pyro.distributions.transforms.AffineAutoregressive` (an
:class:`~pyro.nn.AutoRegressiveNN`, random variable order per layer), and
:math:`q_{\phi_m}(z|x_m)` is a :class:`pyro.distributions.TransformedDistribution`. An affine
autoregressive transform :math:`y = \mu(x) + e^{s(x)} x` computes its *forward* direction in
one network pass; used inverted, that pass is the density direction, so
:math:`\log q_{\phi_m}(z|x_m) = \log \mathcal{N}(f_m^{-1}(z); \mu_m, \sigma_m) + \log|\det
J_{f_m^{-1}}(z)|` costs K passes (what training needs), while drawing from
:math:`q_{\phi_m}` costs D passes per layer (generation only): MAF rather than IAF, as in the
paper.

**Two training stages** (:data:`pyro_mmvae.presets.JNF_STAGES`, :mod:`pyro_mmvae.stages`):
the joint encoder and the decoders first (unimodal encoders and flows frozen), then the
unimodal encoders and flows (joint encoder and decoders frozen). The objective keeps the two
apart on its own: the coordination terms see the joint posterior through a stop-gradient, so
they never train the joint encoder, and the joint ELBO never reads the unimodal posteriors.

**Conditional generation** :math:`q(z|X_S)`: the joint encoder for :math:`S` = every modality;
the flow posterior :math:`q_{\phi_m}` for one source; for a strict subset of several sources
the uniform mixture of their flow posteriors :math:`\frac{1}{|S|}\sum_{m\in S}
q_{\phi_m}(z|x_m)` (:class:`FlowSubsetPosterior`; the paper samples the product of experts by
Hamiltonian Monte Carlo instead, which this library does not do). The point decoded with
``posterior="mean"`` is :attr:`FlowPosterior.mean`, the image of the base mean under the flow
(no closed-form mean exists).

**Missing modalities in training.** A row observing :math:`S` has the joint ELBO of
:math:`X_S` with :math:`q_\phi(z|X_S)` the joint encoder with the absent features zeroed
(``incomplete_joint="encoder"``, as TELBO: the first stage trains on every row), and
coordination terms for :math:`m \in S` only.

**Pyro layout** (that of :class:`~pyro_mmvae.models.CoordinationVAE`, one stratum): the guide
draws z from :math:`q_\phi(z|X_S)` in a ``strata`` plate of size 1 and the ``data`` plate; its
distribution (:class:`FlowCoordinatedPosterior`) also carries the flow posteriors, from which
the objective scores the detached draw. With ``stratify=False`` (importance sampling,
``Predictive(..., sample_missing=True)``) the guide draws from the *inference* posterior of
the present modalities, :class:`FlowSubsetPosterior` (joint encoder on complete rows, the
mixture of the present flow posteriors elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.transforms import AffineAutoregressive, affine_autoregressive
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_mmvae.distributions.coordinated import CoordinatedPosterior
from pyro_mmvae.distributions.experts import component_distribution
from pyro_mmvae.engine.networks import run_network
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.coordination import CoordinationVAE


class FlowPosterior(dist.TransformedDistribution):
    r""":math:`q_{\phi_m}(z|x_m)`: a diagonal Normal pushed through Pyro transforms.

    Batch shape ``(B,)`` (that of ``loc``), event shape ``(D,)``.

    Args:
        loc: :math:`\mu_m(x_m)`, ``(B, D)``.
        scale: :math:`\sigma_m(x_m)`, ``(B, D)``, positive.
        transforms: the flow, applied in order to a base draw (here the inverses of
            :class:`~pyro.distributions.transforms.AffineAutoregressive` modules: MAF).
    """

    def __init__(self, loc: Tensor, scale: Tensor, transforms: Sequence) -> None:
        super().__init__(dist.Normal(loc, scale).to_event(1), list(transforms))

    def _drop_caches(self) -> None:
        """Forget the (x, y) pair each Pyro transform caches: the cache would keep this
        call's autograd graph alive in the model (and make ``copy.deepcopy(model)`` fail)."""
        for transform in self.transforms:
            inner = getattr(transform, "_inv", transform)
            if getattr(inner, "_cache_size", 0):
                inner._cached_x_y = None, None
            if hasattr(inner, "_cached_log_scale"):
                inner._cached_log_scale = None

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log q_{\phi_m}(z|x_m)`: the base density at the flow's inverse plus its
        log-Jacobian (one network pass per layer).

        Args:
            value: z, ``(..., B, D)``.
        """
        try:
            return super().log_prob(value)
        finally:
            self._drop_caches()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """A reparameterised draw: a base draw through the flow (D passes per layer).

        Args:
            sample_shape: leading shape of the draws (result ``sample_shape + (B, D)``).
        """
        try:
            return super().rsample(sample_shape)
        finally:
            self._drop_caches()

    @property
    def mean(self) -> Tensor:
        r"""The flow's image of the base mean, :math:`f_m(\mu_m)` ``(B, D)``: the point
        conditional generation decodes (the true mean has no closed form)."""
        x = self.base_dist.mean
        for transform in self.transforms:
            x = transform(x)
        self._drop_caches()
        return x

    @property
    def variance(self) -> Tensor:
        """The base Normal's variance ``(B, D)``, an approximation (the flow's stretch is
        left out; no closed form exists): what importance-sampling proposals start from."""
        return self.base_dist.variance


class FlowSubsetPosterior(TorchDistribution):
    r""":math:`q(z|X_S)` per row: the joint encoder's Normal on complete rows, else the uniform
    mixture of the flow posteriors of the present modalities,
    :math:`\frac{1}{|S|}\sum_{m \in S} q_{\phi_m}(z|x_m)`.

    ``log_prob`` is that density (log-sum-exp over the present flows); a draw picks a present
    modality uniformly per row and draws from its flow (reparameterised within the chosen
    component: with fixed weights an unbiased gradient of an expectation under the mixture).

    Args:
        joint_loc: :math:`\mu` of :math:`q_\phi(z|X)`, ``(B, D)``.
        joint_scale: its :math:`\sigma`, ``(B, D)``.
        flows: one :class:`FlowPosterior` per modality (batch ``(B,)``), in the order of
            ``present``.
        present: bool ``(M, B)``, True where modality m is observed (a source).
        complete: bool ``(B,)``, rows that use the joint encoder; default ``present.all(0)``.
        validate_args: Pyro/torch argument validation; ``None`` follows the global setting.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, joint_loc: Tensor, joint_scale: Tensor, flows: Sequence[FlowPosterior],
                 present: Tensor, complete: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        if len(flows) != present.size(0):
            raise ValueError(f"{len(flows)} flow posteriors for {present.size(0)} modalities")
        self.joint = dist.Normal(joint_loc, joint_scale).to_event(1)
        self.flows = list(flows)
        self.present = present.bool()
        self.complete = self.present.all(0) if complete is None else complete.bool()
        count = self.present.sum(0, keepdim=True).clamp(min=1)
        self.log_weights = torch.where(self.present, -count.to(joint_loc.dtype).log(),
                                       joint_loc.new_full((), -math.inf))
        super().__init__(joint_loc.shape[:-1], joint_loc.shape[-1:],
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        """Pyro's generic expansion (an ``ExpandedDistribution``) to ``batch_shape``.

        Args:
            batch_shape: the new batch shape, broadcastable from :attr:`batch_shape`.
            _instance: unused (Pyro's ``expand`` protocol).
        """
        return TorchDistribution.expand(self, batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """The joint encoder's density on complete rows, the mixture's elsewhere.

        Args:
            value: z, ``(..., B, D)``.
        """
        per_flow = torch.stack([q.log_prob(value) for q in self.flows])  # (M, ..., B)
        weights = self.log_weights.reshape(self.log_weights.shape[:1]
                                           + (1,) * (per_flow.dim() - 2)
                                           + self.log_weights.shape[1:])
        mixture = torch.logsumexp(per_flow + weights, dim=0)
        return torch.where(self.complete, self.joint.log_prob(value), mixture)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """A draw per row: the joint encoder on complete rows, a uniformly chosen present
        flow elsewhere.

        Args:
            sample_shape: leading shape of the draws; the result has shape
                ``sample_shape + batch_shape + (D,)``.
        """
        sample_shape = torch.Size(sample_shape)
        draws = torch.stack([q.rsample(sample_shape) for q in self.flows])  # (M, ..., B, D)
        probs = self.log_weights.exp().transpose(0, 1)  # (B, M)
        pick = torch.distributions.Categorical(probs=probs).sample(sample_shape)  # (..., B)
        index = pick.unsqueeze(0).unsqueeze(-1).expand(1, *draws.shape[1:])
        chosen = draws.gather(0, index).squeeze(0)
        joint = self.joint.rsample(sample_shape)
        return torch.where(self.complete.unsqueeze(-1), joint, chosen)

    @property
    def mean(self) -> Tensor:
        r"""The joint mean on complete rows; elsewhere the average of the present flows'
        points :attr:`FlowPosterior.mean` ``(B, D)``."""
        points = torch.stack([q.mean for q in self.flows])  # (M, B, D)
        weights = self.log_weights.exp().unsqueeze(-1)
        return torch.where(self.complete.unsqueeze(-1), self.joint.mean,
                           (weights * points).sum(0))

    @property
    def variance(self) -> Tensor:
        r"""The joint variance on complete rows; elsewhere the mixture's variance by the law
        of total variance over the present flows, each flow's variance approximated by
        :attr:`FlowPosterior.variance` ``(B, D)`` (a starting point for proposals)."""
        points = torch.stack([q.mean for q in self.flows])
        variances = torch.stack([q.variance for q in self.flows])
        weights = self.log_weights.exp().unsqueeze(-1)
        centre = (weights * points).sum(0)
        spread = (weights * (variances + (points - centre) ** 2)).sum(0)
        return torch.where(self.complete.unsqueeze(-1), self.joint.variance, spread)


class FlowCoordinatedPosterior(CoordinatedPosterior):
    r"""The training guide's distribution: draws from the joint posterior (one stratum) and
    carries the flow posteriors :math:`q_{\phi_m}(z|x_m)` the objective scores.

    Args:
        joint_loc: :math:`\mu` of :math:`q_\phi(z|X_S)`, ``(B, D)``.
        joint_scale: its :math:`\sigma`, ``(B, D)``.
        expert_loc: the base Normals' :math:`\mu_m`, ``(M, B, D)``.
        expert_scale: their :math:`\sigma_m`, ``(M, B, D)``.
        present: bool ``(M, B)``.
        flows: one :class:`FlowPosterior` per modality, batch ``(B,)``.
        stratified: as in :class:`CoordinatedPosterior` (default True).
    """

    def __init__(self, joint_loc: Tensor, joint_scale: Tensor, expert_loc: Tensor,
                 expert_scale: Tensor, present: Tensor, flows: Sequence[FlowPosterior],
                 stratified: bool = True) -> None:
        super().__init__(joint_loc, joint_scale, expert_loc, expert_scale, present,
                         stratified=stratified, unimodal=False)
        self.flows = list(flows)


class JNF(CoordinationVAE):
    r"""JNF: joint encoder + decoders trained by the joint ELBO, MAF unimodal posteriors.

    Args:
        modalities: the modalities; their encoders give the base Normals of the unimodal
            posteriors :math:`q_{\phi_m}(z|x_m)`.
        latent_dim: D, the size of the shared latent z (at least 2: an autoregressive
            flow needs two variables).
        joint_encoder: the network ``(data, present) -> (loc, raw_scale)`` of
            :math:`q_\phi(z|X_S)` (e.g. :class:`~pyro_mmvae.nets.JointEncoder`); keyword only,
            as are the arguments below.
        num_flows: K, the MAF layers per modality (default 2; 0: Gaussian unimodal
            posteriors, a JMVAE-like ablation).
        flow_hidden: hidden widths of each layer's :class:`~pyro.nn.AutoRegressiveNN`
            (default ``(128, 128)``).
        **kwargs: ``beta``, ``kl_warmup_epochs``, ``scale_param`` of
            :class:`~pyro_mmvae.models.MultimodalVAE` (Normal posteriors).
    """

    pyro_name = "jnf"

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, *,
                 joint_encoder: nn.Module, num_flows: int = 2,
                 flow_hidden: Sequence[int] = (128, 128), **kwargs) -> None:
        super().__init__(modalities, latent_dim, joint="encoder", joint_encoder=joint_encoder,
                         unimodal_targets="none", incomplete_joint="encoder",
                         prior_expert=False, **kwargs)
        if num_flows < 0:
            raise ValueError(f"num_flows must be >= 0, got {num_flows}")
        if num_flows and latent_dim < 2:
            raise ValueError(f"the autoregressive flows need latent_dim >= 2, got {latent_dim}")
        hidden = [int(h) for h in flow_hidden]
        self.flows = nn.ModuleDict({
            name: nn.ModuleList([affine_autoregressive(self.latent_dim, hidden_dims=hidden)
                                 for _ in range(int(num_flows))])
            for name in self.names})

    # ------------------------------------------------------------------ posteriors
    def flow_posterior(self, name: str, loc: Tensor, scale: Tensor) -> FlowPosterior:
        r""":math:`q_{\phi_m}(z|x_m)` from the base Normal's parameters of modality ``name``.

        Args:
            name: the modality.
            loc: :math:`\mu_m`, ``(B, D)``.
            scale: :math:`\sigma_m`, ``(B, D)``.
        """
        layers: Sequence[AffineAutoregressive] = self.flows[name]
        return FlowPosterior(loc, scale, [layer.inv for layer in layers])

    def flow_posteriors(self, loc: Tensor, scale: Tensor,
                        names: Sequence[str] | None = None) -> list[FlowPosterior]:
        """One :class:`FlowPosterior` per modality of ``names`` (default: all).

        Args:
            loc: the base means, ``(M, B, D)`` in the model's modality order.
            scale: the base scales, ``(M, B, D)``.
            names: the modalities wanted; None: every modality.
        """
        names = self.names if names is None else names
        return [self.flow_posterior(n, loc[self.names.index(n)], scale[self.names.index(n)])
                for n in names]

    def latent_posterior(self, data, present, strata, stratify):
        """Training (``strata`` given): a :class:`FlowCoordinatedPosterior` drawing from the
        joint encoder on :math:`X_S`; unstratified: :class:`FlowSubsetPosterior`.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None``.
            stratify: as in :meth:`MultimodalVAE.latent_posterior`.
        """
        return self._latent_posterior(data, present, strata, self.expert_params(data))

    def _latent_posterior(self, data, present, strata, experts):
        loc, scale = experts
        flows = self.flow_posteriors(loc, scale)
        if strata is None:
            j_loc, j_scale = self._encode_joint(data, present)
            return FlowSubsetPosterior(j_loc, j_scale, flows, present)
        j_loc, j_scale = self.training_joint_params(data, present, (loc, scale))
        return FlowCoordinatedPosterior(j_loc, j_scale, loc, scale, present, flows)

    def _subset_posterior(self, experts: Mapping[str, Tensor],
                          sources: Sequence[str]) -> TorchDistribution:
        if set(sources) == set(self.names):
            return component_distribution("normal", experts["joint_loc"], experts["joint_scale"])
        names = [n for n in self.names if n in sources]
        flows = self.flow_posteriors(experts["loc"], experts["scale"], names)
        if len(flows) == 1:
            return flows[0]
        loc = experts["loc"][0]
        present = torch.ones(len(flows), loc.size(0), dtype=torch.bool, device=loc.device)
        return FlowSubsetPosterior(loc, torch.ones_like(loc), flows, present,
                                   complete=torch.zeros_like(present[0]))

    def posterior(self, data, sources: Sequence[str]) -> TorchDistribution:
        r""":math:`q(z|X_S)`: the joint encoder (S = all), the flow posterior (one source) or
        the uniform mixture of the sources' flow posteriors.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        return self._subset_posterior(self.encode_experts({s: data[s] for s in sources}),
                                      sources)

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from the cache of :meth:`encode_experts`.

        Args:
            experts: the cache (``"loc"``, ``"scale"``, and ``"joint_loc"``,
                ``"joint_scale"`` when it holds every modality).
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        if set(sources) == set(self.names) and "joint_loc" not in experts:
            raise ValueError("the cached experts lack the joint encoder's output; encode a "
                             "batch with every modality")
        return self._subset_posterior(experts, sources)


# ---------------------------------------------------------------------------- JNF-DCCA
def _drop_scale_heads(embed: nn.Module) -> None:
    """Replace the ``raw_scale`` heads of a library encoder used as an embedding by
    :class:`torch.nn.Identity`: only the location head is the embedding, and a head that
    never gets a gradient would stall data-parallel training (DDP runs without the
    unused-parameter search)."""
    for name, module in list(embed.named_modules()):
        if name.rpartition(".")[2] == "raw_scale" and isinstance(module, nn.Linear):
            parent = embed.get_submodule(name.rpartition(".")[0]) if "." in name else embed
            parent.raw_scale = nn.Identity()


class DCCAEncoder(nn.Module):
    r"""A unimodal encoder on a DCCA embedding: ``x -> head(stop_grad(embed(x)))``.

    The embedding network :math:`g_m` (``embed``) is trained by the DCCA term of
    :class:`~pyro_mmvae.infer.JNFDCCAELBO` alone: the head reads it through a stop-gradient,
    so the coordination terms train the head (and the flow), never :math:`g_m`.

    Args:
        embed: :math:`g_m`, ``x (B, *event) -> (B, E)`` or a tuple whose first item is
            ``(B, E)`` (a library encoder's location head).
        head: ``(B, E) -> (loc, raw_scale)``, the base Normal of :math:`q_{\phi_m}(z|x_m)`.
    """

    def __init__(self, embed: nn.Module, head: nn.Module) -> None:
        super().__init__()
        _drop_scale_heads(embed)
        self.embed, self.head = embed, head

    def embedding(self, x: Tensor) -> Tensor:
        """:math:`g_m(x)`, ``(B, E)``, with its gradient.

        Args:
            x: a batch of the modality, ``(B, *event_shape)``.
        """
        out = self.embed(x)
        return out[0] if isinstance(out, tuple | list) else out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, raw_scale)`` from the detached embedding.

        Args:
            x: a batch of the modality, ``(B, *event_shape)``.
        """
        return self.head(self.embedding(x).detach())


class DCCAPosterior(FlowCoordinatedPosterior):
    r""":class:`FlowCoordinatedPosterior` that also carries the DCCA embeddings
    :math:`g_m(x_m)` ``(M, B, E)`` (with their gradient) for the objective's DCCA term.

    Args:
        posterior: the JNF training posterior to extend.
        embeddings: :math:`g_m(x_m)`, ``(M, B, E)``.
    """

    def __init__(self, posterior: FlowCoordinatedPosterior, embeddings: Tensor) -> None:
        super().__init__(posterior.joint_loc, posterior.joint_scale, posterior.expert_loc,
                         posterior.expert_scale, posterior.present, posterior.flows,
                         stratified=posterior.stratified)
        self.embeddings = embeddings


class JNFDCCA(JNF):
    r"""JNF-DCCA (Senellart et al. 2023): JNF whose unimodal posteriors read DCCA embeddings.

    Each modality's encoder is a :class:`DCCAEncoder`: an embedding network :math:`g_m`
    trained with deep canonical correlation analysis (Andrew et al. 2013) to maximise the
    correlation of :math:`g_i(x_i)` and :math:`g_j(x_j)` for every pair of modalities
    (:class:`~pyro_mmvae.infer.JNFDCCAELBO`), and a head giving the base Normal of the flow
    posterior from :math:`g_m(x_m)` (stop-gradient). The joint encoder reads the raw
    modalities, as in JNF. Three stages (:data:`pyro_mmvae.presets.JNF_DCCA_STAGES`): the
    DCCA embeddings, then the joint VAE, then the unimodal heads and flows.

    Args:
        modalities: the modalities; every encoder must be a :class:`DCCAEncoder`.
        latent_dim: D, the size of z.
        **kwargs: as for :class:`JNF` (``joint_encoder``, ``num_flows``, ``flow_hidden``,
            ``beta``, ...).
    """

    pyro_name = "jnf_dcca"

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, **kwargs) -> None:
        bad = [m.name for m in modalities if not isinstance(m.encoder, DCCAEncoder)]
        if bad:
            raise ValueError(f"JNF-DCCA needs DCCAEncoder encoders; modalities {bad} have "
                             "other encoders")
        super().__init__(modalities, latent_dim, **kwargs)

    def embeddings_and_experts(self, data: dict[str, Tensor]
                               ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The DCCA embeddings ``(M, B, E)`` and the base Normals ``(loc, scale)``, each
        ``(M, B, D)``, with one pass of each embedding network.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
        """
        embeddings, locs, scales = [], [], []
        for name, mod in self.mods.items():
            emb = run_network(mod.encoder.embedding, data[name])
            loc, raw_scale = run_network(mod.encoder.head, emb.detach())
            embeddings.append(emb)
            locs.append(loc)
            scales.append(self.scale_fn(raw_scale))
        return torch.stack(embeddings), (torch.stack(locs), torch.stack(scales))

    def latent_posterior(self, data, present, strata, stratify):
        """As :meth:`JNF.latent_posterior`; in training (``strata`` given) a
        :class:`DCCAPosterior` that also carries the embeddings.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None``.
            stratify: as in :meth:`MultimodalVAE.latent_posterior`.
        """
        embeddings, experts = self.embeddings_and_experts(data)
        q = self._latent_posterior(data, present, strata, experts)
        return q if strata is None else DCCAPosterior(q, embeddings)
