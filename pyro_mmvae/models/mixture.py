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

import pyro
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import StratifiedMixture
from pyro_mmvae.models.base import DATA_DIM, Data, Mask, MultimodalVAE, Strata


class MMVAE(MultimodalVAE):
    """Mixture-of-experts joint posterior with one stratum per modality."""

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """One stratum per expert, available where its modality is present."""
        return Strata(available=present)

    def joint_posterior(self, data: Data, mask: Mask = None) -> StratifiedMixture:
        """The stratified mixture over the present experts, batch shape ``(M, B)``."""
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        return StratifiedMixture(loc, scale, present, family=self.posterior_family)

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None) -> None:
        r""":math:`z_m \sim q_m(z|x_m)` in stratum m, scored by :math:`q_\Phi(z|X)`."""
        pyro.module(self.pyro_name, self)
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        qz = StratifiedMixture(loc, scale, present, family=self.posterior_family)
        with self.stratified(self.layout(present)), pyro.plate("data", present.size(1),
                                                                dim=DATA_DIM):
            with poutine.scale(scale=self.current_beta):
                pyro.sample("z", qz)

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """For one source, its expert; for several, a randomly chosen present expert per row.

        A uniform mixture has no useful mean (it falls between the modes), so conditional
        generation from a subset uses the mean of one expert drawn from the mixture weights,
        which is how MMVAE samples from :math:`q(z|X_S)`.
        """
        sources = self._check_names(sources, "source")
        return self.joint_posterior({s: data[s] for s in sources}).choose_component()
