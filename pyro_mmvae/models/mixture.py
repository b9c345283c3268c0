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
    """Mixture-of-experts joint posterior with one stratum per modality.

    Args:
        modalities: the modalities, in a fixed order (as in :class:`MultimodalVAE`).
        latent_dim: D, the size of the shared latent z.
        posterior: family of the experts and the prior, ``"normal"`` (default) or
            ``"laplace"`` (the official PolyMNIST recipe's, with ``scale_param="softmax"``).
        scale_param: ``"softplus"`` (default) or ``"softmax"``, how an encoder's raw output
            becomes a scale.
        beta: :math:`\\beta > 0`, the weight of the KL term (default 1.0).
        kl_warmup_epochs: epochs of linear KL warm-up (default 0: none).
    """

    #: Generation from a subset S decodes one expert of S drawn uniformly (the mixture's
    #: component), which :func:`pyro_mmvae.metrics.conditional_coherence` can average over.
    mixture_generation = True

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """One stratum per expert, available where its modality is present.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: unused (MMVAE has no subset strata).
        """
        return Strata(available=present)

    def joint_posterior(self, data: Data, mask: Mask = None) -> StratifiedMixture:
        """The stratified mixture over the present experts, batch shape ``(M, B)``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
            mask: optional dict modality name -> bool ``(B,)`` presence, as in
                :meth:`prepare`.
        """
        data, present = self.prepare(data, mask)
        loc, scale = self.expert_params(data)
        return StratifiedMixture(loc, scale, present, family=self.posterior_family)

    def latent_posterior(self, data, present, strata, stratify):
        r"""Stratum m: :math:`z \sim q_m(z|x_m)`, scored by :math:`q_\Phi(z|X)`; unstratified:
        the mixture itself.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
            stratify: as in :meth:`MultimodalVAE.latent_posterior`; False gives the mixture itself.
        """
        loc, scale = self.expert_params(data)
        qz = StratifiedMixture(loc, scale, present, family=self.posterior_family)
        return qz if strata is not None else qz.marginal()

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """For one source, its expert; for several, a randomly chosen present expert per row.

        A uniform mixture has no useful mean (it falls between the modes), so conditional
        generation from a subset uses the mean of one expert drawn from the mixture weights,
        which is how MMVAE samples from :math:`q(z|X_S)`.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        return self.joint_posterior({s: data[s] for s in sources}).choose_component()

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from cached experts: one present source expert per row.

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``:
                ``(M, B, D)``).
            sources: the names of the modalities S to condition on.
        """
        mask = self.source_mask(self._check_names(sources, "source"), experts["loc"])
        return StratifiedMixture(experts["loc"], experts["scale"], mask,
                                 family=self.posterior_family).choose_component()
