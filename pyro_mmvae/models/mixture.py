r"""MMVAE: the mixture-of-experts multimodal VAE (Shi et al. 2019).

.. math:: q_\Phi(z \mid X_S) = \frac{1}{|S|} \sum_{m \in S} q_{\phi_m}(z \mid x_m)

The guide draws z inside a plate ``strata`` over the M experts: stratum m is drawn from
:math:`q_m(z|x_m)` alone and scored with the whole mixture (a
:class:`~pyro_mmvae.distributions.StratifiedMixture`). The model runs in the same plate, so the
decoders see all strata at once and every stratum of an absent modality is masked out.
Train it with :class:`~pyro_mmvae.infer.MixtureELBO`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import StratifiedMixture
from pyro_mmvae.models.base import Data, Mask, MultimodalVAE, Strata


class MMVAE(MultimodalVAE):
    """Mixture-of-experts joint posterior with one stratum per modality."""

    #: Generation from a subset S decodes one expert of S drawn uniformly (the mixture's
    #: component), which :func:`pyro_mmvae.metrics.conditional_coherence` can average over.
    mixture_generation = True

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """One stratum per expert, available where its modality is present."""
        return Strata(available=present)

    def joint_posterior(self, data: Data, mask: Mask = None) -> StratifiedMixture:
        """The stratified mixture over the present experts, batch shape ``(M, B)``."""
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        return StratifiedMixture(loc, scale, present, family=self.posterior_family)

    def latent_posterior(self, data, present, strata, stratify):
        r"""Stratum m: :math:`z \sim q_m(z|x_m)`, scored by :math:`q_\Phi(z|X)`; unstratified:
        the mixture itself."""
        loc, scale = self.expert_params(data)
        qz = StratifiedMixture(loc, scale, present, family=self.posterior_family)
        return qz if strata is not None else qz.marginal()

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """For one source, its expert; for several, a randomly chosen present expert per row.

        A uniform mixture has no useful mean (it falls between the modes), so conditional
        generation from a subset uses the mean of one expert drawn from the mixture weights,
        which is how MMVAE samples from :math:`q(z|X_S)`.
        """
        sources = self._check_names(sources, "source")
        return self.joint_posterior({s: data[s] for s in sources}).choose_component()

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from cached experts: one present source expert per row."""
        mask = self.source_mask(self._check_names(sources, "source"), experts["loc"])
        return StratifiedMixture(experts["loc"], experts["scale"], mask,
                                 family=self.posterior_family).choose_component()
