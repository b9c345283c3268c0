r"""MoPoE-VAE: the mixture of products of experts (Sutter et al. 2021).

.. math:: q(z \mid X) = \frac{1}{2^M - 1} \sum_{T \subseteq X,\, T \neq \emptyset}
          \mathrm{PoE}(T)

with the objective :math:`E_{q(z|X)}[\log p(X|z)] - \beta \frac{1}{2^M-1}\sum_T
\mathrm{KL}(\mathrm{PoE}(T) \| p(z))`: each subset's PoE is scored by itself, not by the
mixture. Two estimators of the mixture expectation, selectable with ``sampling``:

* ``"stratified"``: one stratum per subset (31 for M = 5), all decoded in one batched call;
* ``"single"`` (default): one subset per data point drawn uniformly from the available ones,
  as the official implementation assigns each data point of a batch to one subset; the same
  objective in expectation at the cost of one decoding per modality.

A subset is available for a data point when all its members are present, so with missing
modalities the mixture runs over the subsets of the present ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import (
    StratifiedMixture,
    mopoe_components,
    subset_availability,
    subset_matrix,
)
from pyro_mmvae.models.base import Data, Mask, MultimodalVAE, Strata

SAMPLING = ("stratified", "single")


class MoPoE(MultimodalVAE):
    """Mixture over all non-empty subsets of the PoE of that subset's experts.

    Takes the arguments of :class:`~pyro_mmvae.models.base.MultimodalVAE` (``posterior`` must
    be ``"normal"``, the default here), and:

    Args:
        sampling: ``"single"`` (default: one available subset per data point) or
            ``"stratified"`` (one stratum per subset, :math:`2^M - 1` of them); keyword only.
        prior_expert: include the standard-normal prior expert in every subset's PoE
            (default False, as in the official implementation); keyword only.
    """

    def __init__(self, *args, sampling: str = "single", prior_expert: bool = False,
                 **kwargs) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__(*args, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError("a product of experts needs Normal experts (closed form)")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.sampling = sampling
        self.prior_expert = prior_expert

    def joint_posterior(self, data: Data, mask: Mask = None) -> StratifiedMixture:
        """The mixture over subset PoEs, batch shape ``(2^M - 1, B)``, component-scored.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
            mask: optional dict modality name -> bool ``(B,)`` presence, as in
                :meth:`prepare`.
        """
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        c_loc, c_scale, available = mopoe_components(loc, scale, present, self.prior_expert)
        return StratifiedMixture(c_loc, c_scale, available, score="component")

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata | None:
        """One stratum per non-empty subset, available where all its members are present
        (``sampling="stratified"``); ``None`` with ``sampling="single"``.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: unused (the subsets are all of them).
        """
        if self.sampling == "single":
            return None
        members = subset_matrix(present.size(0), present.device)
        return Strata(available=subset_availability(members, present))

    def latent_posterior(self, data, present, strata, stratify):
        """Stratum j: the PoE of subset j; ``"single"``: one available subset PoE per data
        point; unstratified (importance sampling): the mixture over subset PoEs.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
            stratify: with ``strata`` ``None``, True picks one subset PoE per row
                (``"single"``) and False gives the mixture (importance sampling).
        """
        loc, scale = self.expert_params(data)
        c_loc, c_scale, available = mopoe_components(loc, scale, present, self.prior_expert)
        qz = StratifiedMixture(c_loc, c_scale, available, score="component")
        if strata is not None:
            return qz
        return qz.choose_component() if stratify else qz.marginal()

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """One subset PoE of the sources per row, drawn uniformly (its mean is decoded).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        return self.joint_posterior({s: data[s] for s in sources}).choose_component()

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from cached experts: one subset PoE of the sources per row.

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``:
                ``(M, B, D)``).
            sources: the names of the modalities S to condition on.
        """
        mask = self.source_mask(self._check_names(sources, "source"), experts["loc"])
        c_loc, c_scale, available = mopoe_components(experts["loc"], experts["scale"], mask,
                                                     self.prior_expert)
        return StratifiedMixture(c_loc, c_scale, available, score="component").choose_component()
