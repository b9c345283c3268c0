r"""Hierarchical multimodal VAEs of Vasco et al.: MHVAE and Nexus.

Both models have one latent :math:`z_m \in \mathbb{R}^{D_m}` per modality, which its decoder
reads, and a top-level latent :math:`z \in \mathbb{R}^{D}` shared by all modalities
(:math:`z_c` in MHVAE, the *nexus* :math:`z_\sigma` in Nexus). Cross-modal generation runs
through the hierarchy, :math:`x_s \to z_s \to z \to z_t \to x_t`.

**MHVAE** (Vasco, Melo & Paiva, *MHVAE: a human-inspired deep hierarchical generative model
for multimodal representation learning*, 2020; the hierarchy of Vasco et al. 2022):

.. math:: p(z)\prod_m p_\theta(z_m \mid z)\, p_\theta(x_m \mid z_m), \qquad
          q(z_m \mid x_m)\; q(z \mid z_{1:M}),\quad
          q(z \mid z_{1:M}) \propto p(z) \prod_{m \in K} q_m(z \mid z_m)

with :math:`p(z_m|z) = \mathcal{N}(\mu_m(z), \sigma_m(z))` (a top-down network per modality)
and the top-level posterior a product of Gaussian experts over the modality latents of the
kept modalities K, the prior expert included. The objective is the ELBO of that joint model,

.. math:: \sum_{m \in S}\Big[\lambda_m \log p(x_m|z_m)
          + \beta\big(\log p(z_m|z) - \log q(z_m|x_m)\big)\Big]
          + \beta_c\big(\log p(z) - \log q(z|z_K)\big),

S the present modalities. *Modality dropout*: while training, each row keeps, with probability
``modality_dropout``, only a random subset K (of size drawn uniformly from 1..M-1) of its
present modalities in the top-level product, so that z is learnt to be inferable from any
subset; every present modality is still reconstructed.

**Nexus** (Vasco, Yin, Melo & Paiva, *Leveraging hierarchy in multimodal generative models
for effective cross-modality inference*, Neural Networks 2022; MultiVae's ``Nexus``): the
modality latents have standard-normal priors, and the nexus is a second VAE over them,

.. math:: \mathcal{L} = \sum_{m \in S}\Big[\lambda_m \log p(x_m|z_m)
          - \beta\, \mathrm{KL}\big(q(z_m|x_m)\,\|\,\mathcal{N}(0, I)\big)\Big]
          + \sum_{m \in S} \gamma_m \log \mathcal{N}\big(\bar z_m;\, g_m(z), I\big)
          - \beta_c\, \mathrm{KL}\big(q(z \mid \bar z_{1:M})\,\|\,p(z)\big)

with :math:`\bar z_m = \mathrm{sg}(z_m)` (no gradient from the nexus into the modality
encoders), :math:`q(z|\bar z_{1:M}) = \mathcal{N}(f(a))` for the aggregated message
:math:`a = \frac{1}{|K|}\sum_{m \in K} h_m(\bar z_m)` (mean aggregation), and *forced
perceptual dropout* choosing K as above. In Pyro: the site ``z_<m>`` has the prior
:math:`\mathcal{N}(0, I)` and the nexus term is an observe site ``nexus_<m>`` of
:math:`\bar z_m` under :math:`\mathcal{N}(g_m(z), I)` weighted by :math:`\gamma`. A modality
the model *samples* (``Predictive``, ``sample_missing``) draws :math:`z_m \sim
\mathcal{N}(g_m(z), I)`, the model's generation path.

Pyro layout (both): sites ``z`` (top), then ``z_<m>`` and ``x_<m>`` per modality, in the
``data`` plate (no strata). The modality sites are masked to the rows where the modality is
present; a modality absent from the whole batch gets no site. Scales: ``z_<m>`` by
:math:`\beta` and ``z`` by :math:`\beta_c` (``top_beta``), both times the KL warm-up factor.
Train with :class:`~pyro_mmvae.infer.MHVAEELBO` / :class:`~pyro_mmvae.infer.NexusELBO`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from pyro_mmvae.distributions.experts import product_of_experts
from pyro_mmvae.engine.networks import run_network
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import (
    DATA_DIM,
    Data,
    Mask,
    MultimodalVAE,
    _has_data,
    check_posterior_point,
    posterior_point,
)

__all__ = ["MHVAE", "Nexus", "TopNetwork", "draw_kept_modalities"]


class TopNetwork(nn.Module):
    """A small MLP between latent vectors: ``(*lead, D_in) -> (*lead, D_out)`` heads.

    Args:
        in_dim: size of the input latent.
        out_dim: size of each output head.
        hidden: widths of the hidden layers (ReLU); empty: linear heads.
        heads: number of linear heads (2: a location and a raw scale; 1: a location).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (128,),
                 heads: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_dim)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, int(out_dim)) for _ in range(heads))

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        """One tensor ``(*lead, out_dim)`` per head.

        Args:
            z: the input latent, ``(*lead, in_dim)``.
        """
        h = self.trunk(z)
        return tuple(head(h) for head in self.heads)


def draw_kept_modalities(present: Tensor, rate: float) -> Tensor:
    """Bool ``(M, B)``: the modalities each row keeps under modality dropout.

    With probability ``rate`` a row keeps a random subset of its modalities, of a size drawn
    uniformly from 1..M-1 (the forced perceptual dropout of Vasco et al., MultiVae's
    ``aggregate_during_training``), intersected with ``present``; a row left with none keeps
    all its present modalities. Drawn on ``present``'s device, with no host sync.

    Args:
        present: bool ``(M, B)``, True where modality m is observed in row b.
        rate: the dropout probability per row, in [0, 1]; 0 (or M = 1) keeps ``present``.
    """
    num, batch = present.shape
    if rate <= 0 or num < 2:
        return present
    device = present.device
    dropped = torch.rand(batch, device=device) < rate
    size = torch.randint(1, num, (batch,), device=device)
    rank = torch.rand(num, batch, device=device).argsort(0).argsort(0)
    kept = torch.where(dropped, rank < size, torch.ones_like(present)) & present
    return torch.where(kept.any(0), kept, present)


class _Hierarchical(MultimodalVAE):
    r"""The shared machinery: modality latents ``z_<m>`` below a top-level latent ``z``.

    Args:
        modalities: the modalities; encoders return ``(loc, raw_scale)`` of width
            ``modality_dim``, decoders read ``modality_dim`` inputs.
        latent_dim: D, the size of the top-level latent z.
        modality_dim: :math:`D_m`, the size of each modality latent.
        top_beta: :math:`\beta_c > 0`, the weight of the top-level prior-ratio (KL) term.
        modality_dropout: probability in [0, 1] that a training row keeps only a random
            subset of its modalities in the top-level posterior.
        top_hidden: hidden widths of the top-level networks.
        **kwargs: ``posterior`` (must be ``"normal"``), ``scale_param``, ``beta`` (the
            weight of the modality-level KL terms), ``kl_warmup_epochs`` as for
            :class:`~pyro_mmvae.models.MultimodalVAE`.
    """

    #: Importance-sampling proposals that apply (:func:`pyro_mmvae.metrics.likelihood.
    #: applicable_proposals`): the mixture and refined ones assume a single latent site.
    likelihood_proposals = ("model",)

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, modality_dim: int,
                 top_beta: float = 1.0, modality_dropout: float = 0.0,
                 top_hidden: Sequence[int] = (128,), **kwargs) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__(modalities, latent_dim, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError(f"{type(self).__name__} needs Normal posteriors (setting "
                             f"posterior), got {self.posterior_family!r}")
        if int(modality_dim) < 1:
            raise ValueError(f"modality_dim must be a positive integer, got {modality_dim}")
        if not top_beta > 0:
            raise ValueError(f"top_beta must be positive, got {top_beta}")
        if not 0 <= modality_dropout <= 1:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        self.modality_dim = int(modality_dim)
        self.top_beta = float(top_beta)
        self.modality_dropout = float(modality_dropout)
        self.top_hidden = tuple(int(h) for h in top_hidden)

    # ------------------------------------------------------------------ pieces
    def top_scale(self) -> float:
        r""":math:`\beta_c` times the KL warm-up factor (``current_beta / beta``)."""
        return self.top_beta * self.current_beta / self.beta

    def kept(self, present: Tensor, keep: Tensor | None) -> Tensor:
        """The modalities of the top-level posterior, bool ``(M, B)``: ``keep & present``
        if given, else a dropout draw while training (:func:`draw_kept_modalities`), else
        ``present``.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            keep: optional bool ``(M, B)`` (or ``(M,)``), the modalities to keep.
        """
        if keep is not None:
            keep = keep.to(device=present.device, dtype=torch.bool)
            if keep.dim() == 1:
                keep = keep.unsqueeze(-1)
            kept = keep.expand_as(present) & present
            return torch.where(kept.any(0), kept, present)
        if self.training:
            return draw_kept_modalities(present, self.modality_dropout)
        return present

    def modality_posterior(self, loc: Tensor, scale: Tensor) -> TorchDistribution:
        """:math:`q(z_m|x_m)`, a diagonal Normal with event shape ``(D_m,)``.

        Args:
            loc: ``(..., D_m)``.
            scale: ``(..., D_m)``, positive.
        """
        return dist.Normal(loc, scale).to_event(1)

    def top_posterior(self, latents: Mapping[str, Tensor], kept: Tensor) -> TorchDistribution:
        """:math:`q(z|z_K)`, batch shape that of the modality latents.

        Args:
            latents: modality name -> :math:`z_m` ``(*lead, B, D_m)`` for every modality
                that may be kept (others are treated as absent).
            kept: bool ``(M, B)``, the modalities each row keeps.
        """
        raise NotImplementedError

    def conditional(self, name: str, z: Tensor) -> TorchDistribution:
        """:math:`p(z_m|z)` of modality ``name``, batch shape ``z.shape[:-1]``.

        Args:
            name: the modality.
            z: the top-level latent ``(*lead, D)``.
        """
        raise NotImplementedError

    def bottom_prior(self, name: str, z: Tensor) -> TorchDistribution:
        """The density the model scores an inferred :math:`z_m` by (and draws it from when
        the modality is observed).

        Args:
            name: the modality.
            z: the top-level latent ``(*lead, D)``.
        """
        return self.conditional(name, z)

    def extra_terms(self, name: str, z: Tensor, z_m: Tensor) -> None:
        """Further model sites of modality ``name`` given z and :math:`z_m` (Nexus's
        pseudo-observation); none here.

        Args:
            name: the modality.
            z: the top-level latent.
            z_m: the modality latent.
        """

    # ------------------------------------------------------------------ Pyro programs
    def model(self, data: Data = None, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False, keep: Tensor | None = None) -> None:
        r"""Generative model: ``z``, then per modality ``z_<m>`` and ``x_<m>``.

        With no data and ``batch_size=n`` every modality is sampled (``Predictive``); with
        ``sample_missing=True`` the modalities absent from ``data`` are sampled through
        :math:`p(z_m|z)`, given z from the guide: cross-modal generation.

        Args:
            data: the batch: dict modality name -> tensor ``(B, *event_shape)``, ``None`` or
                left out for an absent modality; ``None`` or ``{}``: sample everything.
            mask: optional dict modality name -> bool ``(B,)``, True where observed.
            subsets: unused (no strata); accepted so all models share arguments.
            stratify: unused (no strata).
            batch_size: rows to sample when there is no data (keyword only).
            sample_missing: sample the modalities absent from ``data`` (keyword only).
            keep: unused by the model; the guide's modality dropout (keyword only).
        """
        self.register()
        if not _has_data(data):
            data, present = self.empty_batch(batch_size)
            absent, sample = (), set(self.names)
        else:
            absent = self.absent_names(data)
            data, present = self.prepare(data, mask)
            sample = set(absent) if sample_missing else set()
        skip = set(absent) - sample
        with pyro.plate("data", present.size(1), dim=DATA_DIM):
            with poutine.scale(scale=self.top_scale()):
                z = pyro.sample("z", self.prior())
            latents = {}
            for i, name in enumerate(self.names):
                if name in skip:
                    continue
                if name in sample:
                    latents[name] = pyro.sample(f"z_{name}", self.conditional(name, z))
                    continue
                with poutine.mask(mask=present[i]):
                    with poutine.scale(scale=self.current_beta):
                        z_m = pyro.sample(f"z_{name}", self.bottom_prior(name, z))
                    self.extra_terms(name, z, z_m)
                latents[name] = z_m
            self.observe(latents, data, present, skip=skip, sample=sample)

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False, keep: Tensor | None = None) -> None:
        r""":math:`z_m \sim q(z_m|x_m)` for every modality in the batch, then
        :math:`z \sim q(z|z_K)` from the kept modalities (:meth:`kept`).

        Args:
            data: the batch, as in :meth:`model`.
            mask: optional dict modality name -> bool ``(B,)`` presence.
            subsets: unused.
            stratify: unused.
            batch_size: unused (keyword only; the guide needs data).
            sample_missing: unused: absent modalities get no guide site either way.
            keep: optional bool ``(M, B)``: the modalities of the top-level posterior (within
                the present ones); ``None``: dropout while training, else all present.
        """
        self.register()
        absent = self.absent_names(data)
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        kept = self.kept(present, keep)
        latents = {}
        with pyro.plate("data", present.size(1), dim=DATA_DIM):
            for i, name in enumerate(self.names):
                if name in absent:
                    continue
                with poutine.mask(mask=present[i]), poutine.scale(scale=self.current_beta):
                    latents[name] = pyro.sample(
                        f"z_{name}", self.modality_posterior(loc[i], scale[i]))
            with poutine.scale(scale=self.top_scale()):
                pyro.sample("z", self.top_posterior(latents, kept))

    # ------------------------------------------------------------------ generation
    def encode_experts(self, data: Data) -> dict[str, Tensor]:
        """The modality posteriors :math:`q(z_m|x_m)`: ``loc`` and ``scale`` ``(M, B, D_m)``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``; absent
                modalities are encoded from zeros (never used as sources).
        """
        filled, _ = self.prepare(data)
        loc, scale = self.expert_params(filled)
        return {"loc": loc, "scale": scale}

    def _source_latents(self, experts: Mapping[str, Tensor], sources: Sequence[str],
                        posterior: str) -> dict[str, Tensor]:
        return {s: posterior_point(self.modality_posterior(
            experts["loc"][self.names.index(s)], experts["scale"][self.names.index(s)]),
            posterior) for s in sources}

    def posterior_from_experts(self, experts: Mapping[str, Tensor],
                               sources: Sequence[str]) -> TorchDistribution:
        r""":math:`q(z|z_S)` at the means :math:`z_s` of the sources' :math:`q(z_s|x_s)`.

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        latents = self._source_latents(experts, sources, "mean")
        return self.top_posterior(latents, self.source_mask(sources, experts["loc"]))

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        r""":math:`q(z|z_S)`, the top-level posterior at the sources' mean modality latents.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        return self.posterior_from_experts(self.encode_experts({s: data[s] for s in sources}),
                                           sources)

    def generation_latents(self, experts: Mapping[str, Tensor], sources: Sequence[str],
                           targets: Sequence[str], posterior: str = "mean"
                           ) -> dict[str, Tensor]:
        r""":math:`z_t` for each target: :math:`x_s \to z_s \to z \to z_t`.

        ``posterior="mean"``: the means of :math:`q(z_s|x_s)`, :math:`q(z|z_S)` and
        :math:`p(z_t|z)`; ``"sample"``: one draw from each. A target among the sources is
        reconstructed from its own :math:`z_t \sim q(z_t|x_t)` (mean or draw).

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the names of the modalities S to condition on.
            targets: the names of the modalities to generate.
            posterior: ``"mean"`` (default) or ``"sample"``.
        """
        check_posterior_point(posterior)
        sources = self._check_names(sources, "source")
        targets = self._check_names(targets, "target")
        latents = self._source_latents(experts, sources, posterior)
        z = posterior_point(self.top_posterior(latents, self.source_mask(sources,
                                                                         experts["loc"])),
                            posterior)
        return {t: latents[t] if t in latents
                else posterior_point(self.conditional(t, z), posterior) for t in targets}

    def sample(self, num: int) -> dict[str, Tensor]:
        r"""Unconditional generation: :math:`z \sim p(z)`, then the decoder mean at the mean
        of :math:`p(z_m|z)` for every modality.

        Args:
            num: the number of samples N.

        Returns:
            Dict modality name -> decoder mean ``(N, *event_shape)``.
        """
        z = self.prior().sample((num,))
        return {name: mod.mean(self.conditional(name, z).mean)
                for name, mod in self.mods.items()}


class MHVAE(_Hierarchical):
    r"""MHVAE: :math:`p(z)\prod_m p(z_m|z)p(x_m|z_m)`, top-level PoE over modality latents.

    Args:
        modalities: the modalities (encoders ``x_m -> (loc, raw)`` of width ``modality_dim``).
        latent_dim: D, the size of the top-level latent :math:`z_c`.
        modality_dim: :math:`D_m`, the size of each modality latent.
        top_beta: :math:`\beta_c`, the weight of the top-level KL (default 1.0).
        modality_dropout: training probability of a row keeping a random subset of its
            modalities in :math:`q(z_c|z_K)` (default 0.0).
        top_hidden: hidden widths of the top-level networks (default ``(128,)``).
        **kwargs: ``scale_param``, ``beta``, ``kl_warmup_epochs`` as for
            :class:`~pyro_mmvae.models.MultimodalVAE`.
    """

    pyro_name = "mhvae"

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, modality_dim: int,
                 top_beta: float = 1.0, modality_dropout: float = 0.0,
                 top_hidden: Sequence[int] = (128,), **kwargs) -> None:
        super().__init__(modalities, latent_dim, modality_dim, top_beta, modality_dropout,
                         top_hidden, **kwargs)
        #: :math:`q_m(z_c|z_m)`: modality latent -> (loc, raw scale) of the top latent.
        self.top_experts = nn.ModuleDict({n: TopNetwork(self.modality_dim, self.latent_dim,
                                                        self.top_hidden) for n in self.names})
        #: :math:`p(z_m|z_c)`: top latent -> (loc, raw scale) of the modality latent.
        self.top_decoders = nn.ModuleDict({n: TopNetwork(self.latent_dim, self.modality_dim,
                                                         self.top_hidden) for n in self.names})

    def top_posterior(self, latents, kept):
        r"""The PoE :math:`p(z_c)\prod_{m \in K} q_m(z_c|z_m)`; a modality missing from
        ``latents`` is left out.

        Args:
            latents: modality name -> :math:`z_m` ``(*lead, B, D_m)``.
            kept: bool ``(M, B)``, the modalities each row keeps.
        """
        locs, scales, rows = [], [], []
        for i, name in enumerate(self.names):
            if name not in latents:
                continue
            loc, raw = run_network(self.top_experts[name], latents[name])
            locs.append(loc)
            scales.append(self.scale_fn(raw))
            rows.append(kept[i])
        loc, scale = torch.stack(locs), torch.stack(scales)
        rows = torch.stack(rows)
        rows = rows.reshape(rows.size(0), *[1] * (loc.dim() - 3), rows.size(-1))
        rows = rows.expand(loc.shape[:-1])
        p_loc, p_scale = product_of_experts(loc, scale, rows, prior_expert=True)
        return dist.Normal(p_loc, p_scale).to_event(1)

    def conditional(self, name, z):
        r""":math:`p(z_m|z_c) = \mathcal{N}(\mu_m(z_c), \sigma_m(z_c))`.

        Args:
            name: the modality.
            z: the top-level latent ``(*lead, D)``.
        """
        loc, raw = run_network(self.top_decoders[name], z)
        return dist.Normal(loc, self.scale_fn(raw)).to_event(1)


class Nexus(_Hierarchical):
    r"""Nexus: modality VAEs with standard priors and a nexus VAE over their latents.

    Args:
        modalities: the modalities (encoders ``x_m -> (loc, raw)`` of width ``modality_dim``).
        latent_dim: D, the size of the nexus latent :math:`z_\sigma`.
        modality_dim: :math:`D_m`, the size of each modality latent.
        message_dim: size of each modality's message :math:`h_m(\bar z_m)` (default 32).
        gamma: :math:`\gamma > 0`, the weight of the nexus reconstructions of the modality
            latents (default 1.0).
        top_beta: :math:`\beta_c`, the weight of the nexus KL (default 1.0).
        modality_dropout: training probability of the forced perceptual dropout (default
            0.0).
        top_hidden: hidden widths of the nexus networks (default ``(128,)``).
        **kwargs: ``scale_param``, ``beta``, ``kl_warmup_epochs`` as for
            :class:`~pyro_mmvae.models.MultimodalVAE`.
    """

    pyro_name = "nexus"

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, modality_dim: int,
                 message_dim: int = 32, gamma: float = 1.0, top_beta: float = 1.0,
                 modality_dropout: float = 0.0, top_hidden: Sequence[int] = (128,),
                 **kwargs) -> None:
        super().__init__(modalities, latent_dim, modality_dim, top_beta, modality_dropout,
                         top_hidden, **kwargs)
        if int(message_dim) < 1:
            raise ValueError(f"message_dim must be a positive integer, got {message_dim}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.message_dim = int(message_dim)
        self.gamma = float(gamma)
        #: :math:`h_m`: modality latent -> message.
        self.messengers = nn.ModuleDict({n: TopNetwork(self.modality_dim, self.message_dim,
                                                       self.top_hidden, heads=1)
                                         for n in self.names})
        #: :math:`f`: aggregated message -> (loc, raw scale) of the nexus.
        self.nexus_encoder = TopNetwork(self.message_dim, self.latent_dim, self.top_hidden)
        #: :math:`g_m`: nexus -> mean of the modality latent.
        self.top_decoders = nn.ModuleDict({n: TopNetwork(self.latent_dim, self.modality_dim,
                                                         self.top_hidden, heads=1)
                                           for n in self.names})
        self.register_buffer("_modality_loc", torch.zeros(self.modality_dim))
        self.register_buffer("_modality_scale", torch.ones(self.modality_dim))

    def top_posterior(self, latents, kept):
        r""":math:`q(z_\sigma|\bar z_K) = \mathcal{N}(f(a))`, :math:`a` the mean of the kept
        messages :math:`h_m(\mathrm{sg}(z_m))`.

        Args:
            latents: modality name -> :math:`z_m` ``(*lead, B, D_m)``.
            kept: bool ``(M, B)``, the modalities each row keeps.
        """
        total, count = 0.0, 0.0
        for i, name in enumerate(self.names):
            if name not in latents:
                continue
            (message,) = run_network(self.messengers[name], latents[name].detach())
            weight = kept[i].unsqueeze(-1).to(message.dtype)
            total = total + message * weight
            count = count + weight
        loc, raw = run_network(self.nexus_encoder, total / count.clamp(min=1.0))
        return dist.Normal(loc, self.scale_fn(raw)).to_event(1)

    def conditional(self, name, z):
        r""":math:`\mathcal{N}(g_m(z_\sigma), I)`: the nexus's model of :math:`z_m`.

        Args:
            name: the modality.
            z: the nexus latent ``(*lead, D)``.
        """
        (loc,) = run_network(self.top_decoders[name], z)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def bottom_prior(self, name, z):
        """:math:`p(z_m) = \\mathcal{N}(0, I)`, the modality VAE's prior.

        Args:
            name: the modality.
            z: the nexus latent (unused).
        """
        return dist.Normal(self._modality_loc, self._modality_scale).to_event(1)

    def extra_terms(self, name, z, z_m):
        r"""Observe site ``nexus_<m>``: :math:`\mathrm{sg}(z_m) \sim \mathcal{N}(g_m(z), I)`,
        weighted by :math:`\gamma`.

        Args:
            name: the modality.
            z: the nexus latent.
            z_m: the modality latent (detached here).
        """
        with poutine.scale(scale=self.gamma):
            pyro.sample(f"nexus_{name}", self.conditional(name, z), obs=z_m.detach())
