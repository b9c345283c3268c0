r"""DMVAE (Lee & Pavlovic 2021): shared and private latents, a product of experts over z.

*Private-Shared Disentangled Multimodal VAE for Learning of Latent Representations*,
CVPR Workshops 2021 (https://arxiv.org/abs/2012.13024).

Latents: a shared :math:`z \in \mathbb{R}^{D_z}` and a private
:math:`w_m \in \mathbb{R}^{D_w}` per modality, with standard-Normal priors; the decoders read
:math:`p_\theta(x_m \mid z, w_m)`. Each unimodal encoder outputs
:math:`q_m(z \mid x_m)` and :math:`q_m(w_m \mid x_m)`. The joint shared posterior is the
product of the present experts and the prior expert,

.. math:: q(z \mid X_S) \propto p(z) \prod_{m \in S} q_m(z \mid x_m).

The objective (:class:`~pyro_mmvae.infer.DMVAEELBO`) is the joint ELBO plus one ELBO per
present modality m whose shared latent comes from :math:`q_m(z|x_m)` alone; *every* ELBO
reconstructs *every* present modality n from :math:`[z, w_n]` with
:math:`w_n \sim q_n(w_n|x_n)` (the cross-modal reconstructions of the paper):

.. math::
    \mathcal{L}(X) = \sum_{s \in \{\mathrm{PoE}\} \cup S}
        \mathbb{E}\Big[\sum_{n \in S} \lambda_n \log p(x_n|z_s, w_n)\Big]
        - \beta\,\mathrm{KL}(q_s(z)\,\|\,p(z))
        - \beta_w \sum_{n \in S} \mathrm{KL}(q_n(w_n|x_n)\,\|\,p(w_n))

with :math:`q_{\mathrm{PoE}} = q(z|X_S)` and :math:`q_m = q_m(z|x_m)`. As in MultiVae's
``DMVAE``, the private KL terms are counted in every ELBO and the private latents are drawn
afresh for each one.

**Pyro layout.** Sites ``z`` and ``w_<name>`` in a ``strata`` plate (dim -2) of size 1 + M and
the ``data`` plate (dim -1). Stratum 0 draws z from the PoE, stratum 1 + m from
:math:`q_m(z|x_m)` (available where m is present); the guide's
:class:`~pyro_mmvae.distributions.StratifiedMixture` scores each stratum by its own component
(``score="component"``) with weight 1 (the ELBOs are summed, not averaged). ``w_<name>`` is
drawn from :math:`q_n(w_n|x_n)` in every stratum, masked to the rows where n is present. The
Monte-Carlo KL terms come out of the traces, so the base class's estimators apply per stratum
(``"elbo"``, and ``"iwae"``/``"dreg"`` with K > 1: an importance-weighted bound per ELBO).

**Generation.** From one source m, z comes from :math:`q_m(z|x_m)` itself (the posterior its
unimodal ELBO trains; MultiVae does the same); from several, from their PoE with the prior
expert. A target among the sources uses its own :math:`q_t(w_t|x_t)`, any other target
:math:`w_t \sim p(w_t)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import (
    StratifiedMixture,
    component_distribution,
    product_of_experts,
)
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import DATA_DIM, Data, Mask, MultimodalVAE, Strata, posterior_point
from pyro_mmvae.models.mmvae_plus import MMVAEPlus, concat_latents


class DMVAE(MultimodalVAE):
    r"""Shared z (PoE with a prior expert) and private :math:`w_m`; joint plus unimodal ELBOs.

    Args:
        modalities: the modalities; encoders return ``(loc_z, raw_z, loc_w, raw_w)`` or
            ``(loc, raw)`` of width :math:`D_z + D_w` (the first :math:`D_z` shared), decoders
            read :math:`D_z + D_w` inputs ``[z, w_m]`` (see
            :func:`pyro_mmvae.zoo.build_private_modalities`).
        latent_dim: :math:`D_z`, the size of the shared latent z.
        private_dim: :math:`D_w \geq 1`, the size of each private latent :math:`w_m`.
        private_beta: :math:`\beta_w > 0`, the weight of the private KL terms (default 1.0, as
            MultiVae's ``modalities_specific_betas``); the KL warm-up applies to it too.
        **kwargs: ``beta`` (weight of the shared KL), ``kl_warmup_epochs``, ``scale_param``
            of :class:`~pyro_mmvae.models.MultimodalVAE` (the family is Normal: the PoE is
            in closed form).
    """

    pyro_name = "dmvae"

    # The private-latent encoders are MMVAE+'s: one encoder pass gives both posteriors.
    encode_all = MMVAEPlus.encode_all
    _split = MMVAEPlus._split
    private_prior = MMVAEPlus.private_prior

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, private_dim: int,
                 private_beta: float = 1.0, **kwargs) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__(modalities, latent_dim, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError("DMVAE needs Normal posteriors (closed-form product of experts); "
                             f"got posterior={self.posterior_family!r}")
        if int(private_dim) < 1:
            raise ValueError(f"private_dim must be a positive integer, got {private_dim}")
        if not private_beta > 0:
            raise ValueError(f"private_beta must be positive, got {private_beta}")
        self.private_dim = int(private_dim)
        self.private_beta = float(private_beta)
        self.register_buffer("_private_loc", torch.zeros(self.private_dim))
        self.register_buffer("_private_scale", torch.ones(self.private_dim))

    @property
    def current_private_beta(self) -> float:
        r""":math:`\beta_w` times the KL warm-up factor :math:`\beta_t / \beta`."""
        return self.private_beta * self.current_beta / self.beta

    # ------------------------------------------------------------------ posteriors
    def expert_params(self, data: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The shared experts :math:`q_m(z|x_m)`: ``loc`` and ``scale`` ``(M, B, Dz)``.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
        """
        loc_z, scale_z, _, _ = self.encode_all(data)
        return loc_z, scale_z

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """Stratum 0 (the PoE) for every row, stratum 1 + m where modality m is present;
        every stratum reconstructs every present modality.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: must be ``None`` (DMVAE takes no modality subsets).
        """
        if subsets is not None:
            raise ValueError("DMVAE takes no modality subsets")
        return Strata(available=torch.cat([present.new_ones(1, present.size(1)), present]))

    def shared_strata(self, loc_z: Tensor, scale_z: Tensor, present: Tensor
                      ) -> StratifiedMixture:
        r"""The shared latent's distribution over the strata, batch ``(1 + M, B)``: row 0 the
        PoE :math:`q(z|X_S)` (prior expert included), row 1 + m :math:`q_m(z|x_m)`; each row
        scored by itself, every available row weighted 1.

        Args:
            loc_z: expert locations ``(M, B, Dz)``.
            scale_z: expert scales ``(M, B, Dz)``.
            present: bool ``(M, B)``.
        """
        j_loc, j_scale = product_of_experts(loc_z, scale_z, present, prior_expert=True)
        loc = torch.cat([j_loc.unsqueeze(0), loc_z])
        scale = torch.cat([j_scale.unsqueeze(0), scale_z])
        available = torch.cat([present.new_ones(1, present.size(1)), present])
        return StratifiedMixture(loc, scale, available, score="component",
                                 weights=available.to(loc.dtype))

    def latent_posterior(self, data, present, strata, stratify):
        """The shared latent's distribution: :meth:`shared_strata` with strata, else the PoE
        of the present experts (prior expert included).

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None``.
            stratify: as in :meth:`MultimodalVAE.latent_posterior`.
        """
        loc_z, scale_z = self.expert_params(data)
        if strata is not None:
            return self.shared_strata(loc_z, scale_z, present)
        loc, scale = product_of_experts(loc_z, scale_z, present, prior_expert=True)
        return component_distribution("normal", loc, scale)

    def private_posterior(self, index: int, loc_w: Tensor, scale_w: Tensor, present: Tensor
                          ) -> TorchDistribution:
        r""":math:`q_n(w_n|x_n)` where modality ``index`` is present, :math:`p(w_n)` elsewhere
        (masked out: it cancels against the model's prior). Batch ``(B,)``.

        Args:
            index: n, the position of the modality in :attr:`names`.
            loc_w: private locations ``(M, B, Dw)``.
            scale_w: private scales ``(M, B, Dw)``.
            present: bool ``(M, B)``.
        """
        here = present[index].unsqueeze(-1)
        loc = torch.where(here, loc_w[index], self._private_loc)
        scale = torch.where(here, scale_w[index], self._private_scale)
        return component_distribution("normal", loc, scale)

    # ------------------------------------------------------------------ Pyro programs
    def sample_latents(self, present: Tensor, strata: Strata | None) -> dict[str, Tensor]:
        r""":math:`z \sim p(z)` (scaled by :math:`\beta_t`), :math:`w_n \sim p(w_n)` (scaled by
        :math:`\beta_w`, masked to the rows where n is present); n decodes ``[z, w_n]``.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
        """
        with poutine.scale(scale=self.current_beta):
            z = pyro.sample("z", self.prior())
        latents = {}
        with poutine.scale(scale=self.current_private_beta):
            for i, name in enumerate(self.names):
                with poutine.mask(mask=present[i]):
                    w = pyro.sample(f"w_{name}", self.private_prior())
                latents[name] = concat_latents(z, w)
        return latents

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        r"""Stratum 0: :math:`z \sim q(z|X_S)` (PoE); stratum 1 + m: :math:`z \sim q_m(z|x_m)`;
        in every stratum :math:`w_n \sim q_n(w_n|x_n)`. With ``stratify=False``: z from the
        PoE, one per data point (importance sampling).

        Args:
            data: the batch, as in :meth:`model` (dict modality name -> ``(B, ...)`` tensor
                or ``None``).
            mask: optional dict modality name -> bool ``(B,)`` presence, as in :meth:`model`.
            subsets: must be ``None`` (see :meth:`layout`).
            stratify: lay out the 1 + M strata (default True) or draw one z per data point.
            batch_size: unused (keyword only; the guide needs data).
            sample_missing: as in :meth:`model`; implies ``stratify=False``.
        """
        self.register()
        stratify = stratify and not sample_missing
        data, present = self.prepare(data, mask)
        strata = self.layout(present, subsets) if stratify else None
        loc_z, scale_z, loc_w, scale_w = self.encode_all(data)
        if strata is not None:
            qz = self.shared_strata(loc_z, scale_z, present)
        else:
            loc, scale = product_of_experts(loc_z, scale_z, present, prior_expert=True)
            qz = component_distribution("normal", loc, scale)
        with self.stratified(strata), pyro.plate("data", present.size(1), dim=DATA_DIM):
            with poutine.scale(scale=self.current_beta):
                pyro.sample("z", qz)
            with poutine.scale(scale=self.current_private_beta):
                for i, name in enumerate(self.names):
                    with poutine.mask(mask=present[i]):
                        pyro.sample(f"w_{name}",
                                    self.private_posterior(i, loc_w, scale_w, present))

    # ------------------------------------------------------------------ generation
    def _source_posterior(self, loc: Tensor, scale: Tensor, sources: Sequence[str]
                          ) -> TorchDistribution:
        """:math:`q_m(z|x_m)` for one source, else the PoE (prior expert included)."""
        if len(set(sources)) == 1:
            i = self.names.index(sources[0])
            return component_distribution("normal", loc[i], scale[i])
        mask = self.source_mask(sources, loc)
        p_loc, p_scale = product_of_experts(loc, scale, mask, prior_expert=True)
        return component_distribution("normal", p_loc, p_scale)

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """:math:`q(z|X_S)`: :math:`q_m(z|x_m)` for one source, the PoE for several.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        return self.posterior_from_experts(self.encode_experts(
            {s: data[s] for s in self._check_names(sources, "source")}), sources)

    encode_experts = MMVAEPlus.encode_experts

    def posterior_from_experts(self, experts: Mapping[str, Tensor], sources: Sequence[str]
                               ) -> TorchDistribution:
        """:meth:`posterior` from cached experts (:meth:`encode_experts`).

        Args:
            experts: the cache (``"loc"``, ``"scale"``: ``(M, B, Dz)``).
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        return self._source_posterior(experts["loc"], experts["scale"], sources)

    def generation_latents(self, experts, sources, targets, posterior: str = "mean"
                           ) -> dict[str, Tensor]:
        r"""``[z, w_t]`` for each target: z the mean of (or a draw from) :math:`q(z|X_S)`;
        :math:`w_t` from :math:`q_t(w_t|x_t)` when t is a source, else
        :math:`w_t \sim p(w_t)`.

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the names of the modalities S to condition on.
            targets: the names of the modalities to generate.
            posterior: ``"mean"`` (default) or ``"sample"``.
        """
        z = posterior_point(self.posterior_from_experts(experts, sources), posterior)
        out = {}
        for t in self._check_names(targets, "target"):
            if t in sources:
                i = self.names.index(t)
                w = posterior_point(component_distribution(
                    "normal", experts["loc_w"][i], experts["scale_w"][i]), posterior)
            else:
                w = self.private_prior().sample((z.size(0),))
            out[t] = concat_latents(z, w)
        return out

    def sample(self, num: int) -> dict[str, Tensor]:
        r"""Unconditional generation: decoder means for :math:`z \sim p(z)`,
        :math:`w_m \sim p(w_m)`.

        Args:
            num: the number of samples N.

        Returns:
            Dict modality name -> decoder mean ``(N, *event_shape)``.
        """
        z = self.prior().sample((num,))
        return {name: mod.mean(concat_latents(z, self.private_prior().sample((num,))))
                for name, mod in self.mods.items()}
