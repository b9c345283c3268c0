r"""MMVAE+ (Palumbo et al. 2023) and the private-latent MMVAE baseline.

Latents: a shared :math:`z \in \mathbb{R}^{D_z}` and one private
:math:`w_m \in \mathbb{R}^{D_w}` per modality, with fixed priors :math:`p(z)`, :math:`p(w_m)`
(standard Normal or Laplace). Decoders read the concatenation,
:math:`p_\theta(x_m \mid z, w_m)`; each unimodal encoder outputs both
:math:`q_m(z \mid x_m)` and :math:`q_m(w_m \mid x_m)`.

Training is stratified over the mixture components, as in MMVAE. Stratum r draws

.. math:: z \sim q_r(z|x_r),\quad w_r \sim q_r(w_r|x_r),\quad
          \tilde w_d \sim r_d(w_d)\ \ (d \neq r)

and its log-weight is

.. math:: \log w_r = \lambda_r \log p(x_r|z, w_r) + \sum_{d \neq r} \lambda_d
          \log p(x_d|z, \tilde w_d) + \beta\big[\log p(z) + \log p(w_r)
          - \log q_\Phi(z|X) - \log q_r(w_r|x_r)\big]

with :math:`q_\Phi(z|X) = \frac{1}{|S|}\sum_{m \in S} q_m(z|x_m)` the mixture of the present
experts. The auxiliary prior :math:`r_d(w_d)` is zero-mean with a learnable scale
(``aux_prior="learned"``, MMVAE+); it is used only in training. The private-latent MMVAE
baseline of the paper ("factorized", ``aux_prior="posterior"``) draws
:math:`\tilde w_d \sim q_d(w_d|x_d)` instead, the target's own posterior; ``"fixed"`` uses
:math:`r_d = p(w_d)`.

Pyro layout: sites ``z`` and ``w_<name>`` (one per modality) in the ``strata`` (dim -2) and
``data`` (dim -1) plates. The site ``w_d`` holds :math:`w_d` in stratum d and
:math:`\tilde w_d` elsewhere; in both model and guide it is masked to stratum d, so the
prior-ratio term of :math:`w_d` counts only there and :math:`\tilde w_d` enters only through
the likelihood. Each decoder runs once on all particles x strata x data points.

At test time cross-generation draws :math:`w_d \sim p(w_d)` (not :math:`r_d`), as the paper
does; unconditional generation draws :math:`z \sim p(z)`, :math:`w_d \sim p(w_d)`.
Train with :class:`~pyro_mmvae.infer.MMVAEPlusELBO`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from pyro_mmvae.distributions.experts import StratifiedMixture, component_distribution
from pyro_mmvae.distributions.scales import unit_scale_raw
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import DATA_DIM, Data, Mask, Strata, posterior_point
from pyro_mmvae.models.mixture import MMVAE

#: Where the cross-modal private latent :math:`\tilde w_d` of stratum r != d comes from.
AUX_PRIORS = ("learned", "fixed", "posterior")


def concat_latents(z: Tensor, w: Tensor) -> Tensor:
    """``[z, w]`` along the last dimension, broadcasting the leading (particle/strata) dims.

    Args:
        z: shared latent, ``(*lead_z, D_z)``.
        w: private latent, ``(*lead_w, D_w)``; ``lead_z`` and ``lead_w`` must broadcast.

    Returns:
        ``(*lead, D_z + D_w)``, the decoder input of one modality.
    """
    lead = torch.broadcast_shapes(z.shape[:-1], w.shape[:-1])
    return torch.cat([z.expand(*lead, z.size(-1)), w.expand(*lead, w.size(-1))], dim=-1)


class MMVAEPlus(MMVAE):
    r"""Mixture-of-experts VAE with a shared latent z and private latents :math:`w_m`.

    Args:
        modalities: the modalities; encoders return ``(loc_z, raw_z, loc_w, raw_w)`` or
            ``(loc, raw)`` of width :math:`D_z + D_w` (split: first :math:`D_z` shared);
            decoders take :math:`D_z + D_w` inputs, ``[z, w_m]``.
        latent_dim: :math:`D_z`, the size of the shared latent z.
        private_dim: :math:`D_w \geq 1`, the size of each private latent :math:`w_m`.
        aux_prior: ``"learned"`` (default; MMVAE+: :math:`r_d = \mathcal{F}(0, s_d)` with a
            learnable scale :math:`s_d` per modality, through the model's scale map),
            ``"fixed"`` (:math:`r_d = p(w_d)`) or ``"posterior"`` (the baseline:
            :math:`\tilde w_d \sim q_d(w_d|x_d)`).
        **kwargs: ``posterior`` (family of posteriors, priors and :math:`r_d`),
            ``scale_param``, ``beta``, ``kl_warmup_epochs`` as for
            :class:`~pyro_mmvae.models.MultimodalVAE`.
    """

    pyro_name = "mmvae_plus"

    def __init__(
        self,
        modalities: Sequence[Modality],
        latent_dim: int,
        private_dim: int,
        aux_prior: str = "learned",
        **kwargs,
    ) -> None:
        super().__init__(modalities, latent_dim, **kwargs)
        if int(private_dim) < 1:
            raise ValueError(f"private_dim must be a positive integer, got {private_dim}")
        if aux_prior not in AUX_PRIORS:
            raise ValueError(f"unknown aux_prior {aux_prior!r}; choose one of: "
                             f"{', '.join(AUX_PRIORS)}")
        self.private_dim = int(private_dim)
        self.aux_prior = aux_prior
        if aux_prior == "learned":
            raw = unit_scale_raw(self.private_dim, self.scale_param)
            self.aux_raw_scale = nn.Parameter(raw.repeat(len(self.mods), 1))
        else:
            self.register_parameter("aux_raw_scale", None)
        self.register_buffer("_private_loc", torch.zeros(self.private_dim))
        self.register_buffer("_private_scale", torch.ones(self.private_dim))

    # ------------------------------------------------------------------ distributions
    def private_prior(self) -> TorchDistribution:
        """:math:`p(w_m)`: standard Normal or Laplace(0, 1), event shape ``(D_w,)``."""
        return component_distribution(self.posterior_family, self._private_loc,
                                      self._private_scale)

    def aux_scale(self) -> Tensor:
        """Scales of the auxiliary priors :math:`r_m`, ``(M, D_w)`` (ones unless learned)."""
        if self.aux_raw_scale is None:
            return self._private_scale.expand(len(self.mods), self.private_dim)
        return self.scale_fn(self.aux_raw_scale)

    def encode_all(self, data: dict[str, Tensor], names: Sequence[str] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run the encoders of ``names`` (default: all, in order) once: ``loc_z, scale_z``
        ``(M, B, Dz)``, ``loc_w, scale_w`` ``(M, B, Dw)``. The scale map is applied to the
        shared and private parts separately.

        Args:
            data: every modality, filled as :meth:`prepare` returns it (name ->
                ``(B, *event_shape)``).
            names: the modalities whose encoders run, in the order of the stacked ``M``
                dimension; ``None``: all, in the model's order.
        """
        parts: list[list[Tensor]] = [[], [], [], []]
        for name in self.names if names is None else names:
            loc_z, raw_z, loc_w, raw_w = self._split(name, self.mods[name].encode(data[name]))
            for store, value in zip(parts, (loc_z, self.scale_fn(raw_z), loc_w,
                                            self.scale_fn(raw_w)), strict=True):
                store.append(value)
        loc_z, scale_z, loc_w, scale_w = (torch.stack(p) for p in parts)
        return loc_z, scale_z, loc_w, scale_w

    def _split(self, name: str, out: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dz, dw = self.latent_dim, self.private_dim
        if len(out) == 2 and out[0].size(-1) == dz + dw:
            loc, raw = out
            return loc[..., :dz], raw[..., :dz], loc[..., dz:], raw[..., dz:]
        if len(out) == 4 and out[0].size(-1) == dz and out[2].size(-1) == dw:
            return out[0], out[1], out[2], out[3]
        widths = [tuple(t.shape) for t in out]
        raise ValueError(f"encoder of modality {name!r} returned outputs of shapes {widths}; "
                         f"an MMVAE+ encoder must return (loc_z, raw_z, loc_w, raw_w) with "
                         f"widths ({dz}, {dz}, {dw}, {dw}) or (loc, raw) of width {dz + dw}")

    def expert_params(self, data: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The shared experts :math:`q_m(z|x_m)`: ``loc`` and ``scale`` ``(M, B, Dz)``.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
        """
        loc_z, scale_z, _, _ = self.encode_all(data)
        return loc_z, scale_z

    def private_guide(self, index: int, loc_w: Tensor, scale_w: Tensor,
                      present: Tensor, strata: Strata | None) -> TorchDistribution:
        r"""The distribution of site ``w_<name>`` for modality ``index`` (d).

        Stratified, batch ``(M, B)``: row d is :math:`q_d(w_d|x_d)`; rows r != d are
        :math:`r_d` (``"learned"``/``"fixed"``) or :math:`q_d(w_d|x_d)` (``"posterior"``).
        Unstratified, batch ``(B,)``: :math:`q_d(w_d|x_d)` where modality d is present, else
        :math:`p(w_d)` (which then cancels against the model's prior).

        Args:
            index: d, the position of the modality in :attr:`names`.
            loc_w: private locations of every modality, ``(M, B, D_w)``.
            scale_w: private scales of every modality, ``(M, B, D_w)``.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
        """
        loc, scale = loc_w[index], scale_w[index]  # (B, Dw)
        if strata is None:
            here = present[index].unsqueeze(-1)
            loc = torch.where(here, loc, self._private_loc)
            scale = torch.where(here, scale, self._private_scale)
        elif self.aux_prior == "posterior":
            num = len(self.mods)
            loc, scale = loc.expand(num, *loc.shape), scale.expand(num, *scale.shape)
        else:
            own = self._own_stratum(index, loc.device).view(-1, 1, 1)
            loc = torch.where(own, loc, self._private_loc)
            scale = torch.where(own, scale, self.aux_scale()[index].unsqueeze(0))
        return component_distribution(self.posterior_family, loc, scale)

    def _own_stratum(self, index: int, device: torch.device) -> Tensor:
        """Bool ``(M,)``: True at stratum ``index`` only."""
        own = torch.zeros(len(self.mods), dtype=torch.bool, device=device)
        own[index] = True
        return own

    def _private_mask(self, index: int, present: Tensor, strata: Strata | None) -> Tensor | bool:
        """Where the prior-ratio term of :math:`w_d` counts: stratum d only (``(M, B)``);
        everywhere without strata."""
        if strata is None:
            return True
        own = self._own_stratum(index, present.device).unsqueeze(-1)
        return own.expand(-1, present.size(1))

    # ------------------------------------------------------------------ Pyro programs
    def sample_latents(self, present: Tensor, strata: Strata | None) -> dict[str, Tensor]:
        r""":math:`z \sim p(z)` and :math:`w_m \sim p(w_m)` (the prior of :math:`w_d` masked
        to stratum d); modality m decodes ``[z, w_m]``.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).

        Returns:
            Dict modality name -> decoder input ``[z, w_m]``.
        """
        with poutine.scale(scale=self.current_beta):
            z = pyro.sample("z", self.prior())
            latents = {}
            for i, name in enumerate(self.names):
                with poutine.mask(mask=self._private_mask(i, present, strata)):
                    w = pyro.sample(f"w_{name}", self.private_prior())
                latents[name] = concat_latents(z, w)
        return latents

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        r"""Stratum r: :math:`z \sim q_r(z|x_r)` scored by :math:`q_\Phi(z|X)`,
        :math:`w_r \sim q_r(w_r|x_r)`, :math:`\tilde w_d` (d != r) from :meth:`private_guide`.

        With ``stratify=False``: z from the mixture, :math:`w_m \sim q_m(w_m|x_m)` for the
        present modalities and :math:`p(w_m)` for the absent ones (a proper importance
        proposal; z is then not reparameterised).

        Args:
            data: the batch, as in :meth:`model` (dict modality name -> ``(B, ...)`` tensor
                or ``None``).
            mask: optional dict modality name -> bool ``(B,)`` presence, as in :meth:`model`.
            subsets: unused by MMVAE+'s layout; accepted so model and guide share arguments.
            stratify: lay out one stratum per modality (default True) or draw one z per data
                point.
            batch_size: unused (keyword only; the guide needs data).
            sample_missing: as in :meth:`model`; implies ``stratify=False``.
        """
        self.register()
        stratify = stratify and not sample_missing
        data, present = self.prepare(data, mask)
        strata = self.layout(present, subsets) if stratify else None
        loc_z, scale_z, loc_w, scale_w = self.encode_all(data)
        qz = StratifiedMixture(loc_z, scale_z, present, family=self.posterior_family)
        with self.stratified(strata), pyro.plate("data", present.size(1), dim=DATA_DIM):
            with poutine.scale(scale=self.current_beta):
                z = pyro.sample("z", qz if strata is not None else qz.marginal())
                self.guide_shared_extras(z, strata)
                for i, name in enumerate(self.names):
                    qw = self.private_guide(i, loc_w, scale_w, present, strata)
                    with poutine.mask(mask=self._private_mask(i, present, strata)):
                        pyro.sample(f"w_{name}", qw)

    def guide_shared_extras(self, z: Tensor, strata: Strata | None) -> None:
        r"""Sites a subclass's guide draws right after the shared latent (none here; CMVAE
        draws its cluster ``c`` from :math:`p(c \mid z)` when not stratified).

        Args:
            z: the shared latent just drawn.
            strata: the layout from :meth:`layout`, or ``None``.
        """

    def latent_posterior(self, data, present, strata, stratify):
        """The distribution of the shared latent z (as MMVAE).

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (then the mixture itself).
            stratify: as in :meth:`MultimodalVAE.latent_posterior`.
        """
        loc, scale = self.expert_params(data)
        qz = StratifiedMixture(loc, scale, present, family=self.posterior_family)
        return qz if strata is not None else qz.marginal()

    # ------------------------------------------------------------------ generation
    def encode_experts(self, data: Data) -> dict[str, Tensor]:
        """Shared experts ``loc``/``scale`` ``(M, B, Dz)`` and private ``loc_w``/``scale_w``
        ``(M, B, Dw)``, every encoder run once.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``; absent
                modalities are encoded from zeros (never used as sources).
        """
        filled, _ = self.prepare(data)
        loc_z, scale_z, loc_w, scale_w = self.encode_all(filled)
        return {"loc": loc_z, "scale": scale_z, "loc_w": loc_w, "scale_w": scale_w}

    def generation_latents(self, experts, sources, targets, posterior: str = "mean"
                           ) -> dict[str, Tensor]:
        r"""``[z, w_t]`` for each target t of :meth:`generate`, from cached experts.

        z is the mean of :math:`q(z|X_S)` (for several sources, of one present expert drawn
        per row, as MMVAE), or a draw from that expert with ``posterior="sample"``. A target
        among the sources is reconstructed with the mean of (or a draw from) its own
        :math:`q_t(w_t|x_t)`; any other target gets :math:`w_t \sim p(w_t)` (the paper's
        cross-generation: its private latent is not inferable from the sources).

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``,
                ``"loc_w"``, ``"scale_w"``).
            sources: the names of the modalities S to condition on.
            targets: the names of the modalities to generate.
            posterior: ``"mean"`` (default) or ``"sample"``.
        """
        sources = self._check_names(sources, "source")
        targets = self._check_names(targets, "target")
        index = [self.names.index(s) for s in sources]
        mixture = StratifiedMixture(experts["loc"][index], experts["scale"][index],
                                    family=self.posterior_family)
        z = posterior_point(mixture.choose_component(), posterior)
        out = {}
        for t in targets:
            if t in sources:
                i = self.names.index(t)
                w = posterior_point(component_distribution(
                    self.posterior_family, experts["loc_w"][i], experts["scale_w"][i]),
                    posterior)
            else:
                w = self.private_prior().sample((z.size(0),))
            out[t] = concat_latents(z, w)
        return out

    def sample(self, num: int) -> dict[str, Tensor]:
        r"""Unconditional generation: decoder means for :math:`z \sim p(z)`,
        :math:`w_m \sim p(w_m)` (one z shared by all modalities).

        Args:
            num: the number of samples N.

        Returns:
            Dict modality name -> decoder mean ``(N, *event_shape)``.
        """
        z = self.prior().sample((num,))
        return {name: mod.mean(concat_latents(z, self.private_prior().sample((num,))))
                for name, mod in self.mods.items()}
