r"""MVAE: the product-of-experts multimodal VAE (Wu & Goodman 2018).

.. math:: q(z \mid X_S) \propto p(z) \prod_{m \in S} q_m(z \mid x_m)

(Gaussian experts, closed form, with the prior as an extra expert). The sub-sampled objective
sums subset ELBOs,

.. math:: \mathrm{ELBO}(X; q(z|X)) + \sum_m \mathrm{ELBO}(x_m; q(z|x_m))
          + \sum_{j=1}^k \mathrm{ELBO}(X_{S_j}; q(z|X_{S_j})),

each reconstructing only its own subset. Here every subset ELBO is one stratum of the
latent site: stratum s draws z from the PoE of its present members and scores the
observations of those members only; :class:`~pyro_mmvae.infer.SubsampledELBO` draws the k
random subsets each step and passes them to model and guide as ``subsets``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import (
    StratifiedMixture,
    component_distribution,
    product_of_experts,
    subset_indicators,
    subset_products,
)
from pyro_mmvae.models.base import Data, MultimodalVAE, Strata


class MVAE(MultimodalVAE):
    """Product of Gaussian experts with a prior expert; strata = the subset ELBOs.

    Takes the arguments of :class:`~pyro_mmvae.models.base.MultimodalVAE` (``posterior`` must
    be ``"normal"``, the default here), and:

    Args:
        prior_expert: include the standard-normal prior :math:`p(z)` as an expert in every
            product (default True, as in Wu & Goodman 2018); keyword only.
    """

    def __init__(self, *args, prior_expert: bool = True, **kwargs) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__(*args, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError("a product of experts needs Normal experts (closed form)")
        self.prior_expert = prior_expert

    def subset_members(self, subsets: Tensor | None, device: torch.device) -> Tensor:
        """Bool ``(S, M)``: the joint set, each single modality, then the extra subsets.

        The joint and unimodal rows are a table built once per device; ``subsets`` are moved
        to ``device`` (no copy when they are there already, as
        :class:`~pyro_mmvae.infer.SubsampledELBO` draws them).

        Args:
            subsets: optional bool ``(k, M)``, the extra subsets (one per row); ``None``:
                none.
            device: the device of the returned table.

        Returns:
            Bool ``(1 + M + k, M)`` (just ``(1, 1)`` for one modality).
        """
        num = len(self.names)
        fixed = (tuple(range(num)),) + (tuple((i,) for i in range(num)) if num > 1 else ())
        base = subset_indicators(fixed, num, device)
        if subsets is None:
            return base
        if subsets.dim() != 2 or subsets.size(1) != num:
            raise ValueError(f"subsets must be a bool tensor (k, {num})")
        if num == 1:
            return base
        return torch.cat([base, subsets.to(device=device, dtype=torch.bool)])

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """Strata: the joint set, each modality alone, then the k extra subsets. Modality m's
        decoder runs on the joint stratum, its own and the k extra ones (whether an extra
        subset holds m is only known on the device).

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: optional bool ``(k, M)``, the k extra subsets (e.g. drawn by
                :class:`~pyro_mmvae.infer.SubsampledELBO`); ``None``: none.
        """
        members = self.subset_members(subsets, present.device)
        available = (members.unsqueeze(-1) & present.unsqueeze(0)).any(1)
        num = len(self.names)
        if num == 1:
            return Strata(available=available, members=members)
        extra = tuple(range(1 + num, members.size(0)))
        decode = tuple((0, 1 + i, *extra) for i in range(num))
        return Strata(available=available, members=members, decode=decode)

    def latent_posterior(self, data, present, strata, stratify):
        r"""Stratum s: :math:`z \sim \mathrm{PoE}(S_s \cap \text{present})`, scored by itself;
        unstratified: the PoE of every present modality.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
            stratify: as in :meth:`MultimodalVAE.latent_posterior`.
        """
        loc, scale = self.expert_params(data)
        if strata is None:
            p_loc, p_scale = product_of_experts(loc, scale, present, self.prior_expert)
            return component_distribution("normal", p_loc, p_scale)
        c_loc, c_scale, _ = subset_products(loc, scale, strata.members, present,
                                            prior_expert=self.prior_expert)
        return StratifiedMixture(c_loc, c_scale, strata.available, score="component",
                                 weights=torch.ones_like(c_loc[..., 0]))

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """The PoE of the source experts (and the prior expert).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        subset, present = self.prepare({s: data[s] for s in sources})
        loc, scale = self.expert_params(subset)
        p_loc, p_scale = product_of_experts(loc, scale, present, prior_expert=self.prior_expert)
        return component_distribution("normal", p_loc, p_scale)

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from cached experts: the PoE of the sources' experts.

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``:
                ``(M, B, D)``).
            sources: the names of the modalities S to condition on.
        """
        mask = self.source_mask(self._check_names(sources, "source"), experts["loc"])
        p_loc, p_scale = product_of_experts(experts["loc"], experts["scale"], mask,
                                            prior_expert=self.prior_expert)
        return component_distribution("normal", p_loc, p_scale)
