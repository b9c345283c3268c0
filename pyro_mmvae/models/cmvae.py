r"""CMVAE: MMVAE+ with a mixture-of-clusters prior on the shared latent (Palumbo et al. 2024).

*Deep Generative Clustering with Multimodal Diffusion Variational Autoencoders*, E. Palumbo,
L. Manduchi, S. Laguna, D. Chopard, J. E. Vogt, ICLR 2024
(https://openreview.net/forum?id=k5THrhXDV3). The generative model is MMVAE+'s with a
discrete cluster c above the shared latent z:

.. math:: c \sim \mathrm{Cat}(\pi),\quad z \mid c \sim \mathcal{F}(\mu_c, \sigma_c),\quad
          w_m \sim p(w_m),\quad x_m \sim p_\theta(x_m \mid z, w_m)

with learnable :math:`\pi` (logits), cluster locations :math:`\mu_c` and scales
:math:`\sigma_c` (:math:`\mathcal{F}` the posterior family, Normal or Laplace). The guide is
MMVAE+'s, :math:`q_\Phi(z|X)\prod_m q(w_m|\cdot)`; c is not in it. Its optimal posterior given
z is the model's own :math:`p(c \mid z) \propto \pi_c\,p(z \mid c)`, and with it the cluster
part of the ELBO is exactly the marginal

.. math:: \mathbb{E}_{p(c|z)}\Big[\log \frac{p(c)\,p(z|c)}{p(c|z)}\Big]
          = \log \sum_{c=1}^{C} \pi_c\, p(z \mid c) = \log p(z),

which :class:`~pyro_mmvae.infer.CMVAEELBO` computes by *enumerating* c: the model's site
``c`` carries ``infer={"enumerate": "parallel"}``, Pyro's :class:`~pyro.poutine.enum`
handler gives it all C values in a dim left of the particles, and the objective sums over
it (no Gumbel-softmax, no score function).

Pyro layout: sites ``c`` and ``z`` (both scaled by :math:`\beta`, in the ``strata`` and
``data`` plates) and ``w_<name>`` as in :class:`~pyro_mmvae.models.MMVAEPlus`. The
*unstratified* guide (``stratify=False``: importance sampling of :math:`\log p(X)`,
:class:`pyro.infer.Predictive`) also draws :math:`c \sim p(c \mid z)`, the exact conditional,
so :math:`\log p(c) + \log p(z|c) - \log p(c|z) = \log p(z)` for every draw and importance
weights stay those of the marginal prior.

Clusters of a data point: :meth:`CMVAE.cluster_posterior`,
:math:`\frac{1}{|S|}\sum_{m \in S} p(c \mid z = \mathbb{E}[q_m(z|x_m)])`, the cluster
posterior averaged over the present experts' means.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from pyro_mmvae.distributions.experts import component_distribution
from pyro_mmvae.distributions.scales import unit_scale_raw
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import Data, Mask, Strata
from pyro_mmvae.models.mmvae_plus import MMVAEPlus, concat_latents

__all__ = ["CMVAE"]


class CMVAE(MMVAEPlus):
    r"""MMVAE+ whose shared latent has a learnable mixture prior over C clusters.

    Args:
        modalities: the modalities, as for :class:`~pyro_mmvae.models.MMVAEPlus` (encoders
            return the shared and private parts, decoders read ``[z, w_m]``).
        latent_dim: :math:`D_z`, the size of the shared latent z.
        private_dim: :math:`D_w \geq 1`, the size of each private latent :math:`w_m`.
        num_clusters: C >= 1, the number of clusters of the prior :math:`p(c)`.
        aux_prior: where the cross-modal :math:`\tilde w_d` comes from, as for
            :class:`~pyro_mmvae.models.MMVAEPlus` (default ``"learned"``).
        cluster_spread: standard deviation of the random initial cluster locations
            :math:`\mu_c` (default 1.0; the scales start at 1).
        **kwargs: ``posterior``, ``scale_param``, ``beta``, ``kl_warmup_epochs`` as for
            :class:`~pyro_mmvae.models.MultimodalVAE`.
    """

    pyro_name = "cmvae"

    def __init__(
        self,
        modalities: Sequence[Modality],
        latent_dim: int,
        private_dim: int,
        num_clusters: int = 10,
        aux_prior: str = "learned",
        cluster_spread: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(modalities, latent_dim, private_dim, aux_prior=aux_prior, **kwargs)
        if isinstance(num_clusters, bool) or int(num_clusters) < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {num_clusters!r}")
        self.num_clusters = int(num_clusters)
        self.cluster_logits = nn.Parameter(torch.zeros(self.num_clusters))
        self.cluster_loc = nn.Parameter(float(cluster_spread)
                                        * torch.randn(self.num_clusters, self.latent_dim))
        raw = unit_scale_raw(self.latent_dim, self.scale_param)
        self.cluster_raw_scale = nn.Parameter(raw.repeat(self.num_clusters, 1))

    # ------------------------------------------------------------------ distributions
    def cluster_prior(self) -> TorchDistribution:
        r""":math:`p(c) = \mathrm{Cat}(\mathrm{softmax}(\text{logits}))`, batch shape ``()``."""
        return dist.Categorical(logits=self.cluster_logits)

    def cluster_scale(self) -> Tensor:
        r"""The scales :math:`\sigma_c`, ``(C, D_z)``, through the model's scale map."""
        return self.scale_fn(self.cluster_raw_scale)

    def latent_given_cluster(self, c: Tensor) -> TorchDistribution:
        r""":math:`p(z \mid c)`: the family with location :math:`\mu_c` and scale
        :math:`\sigma_c`, batch shape ``c.shape``, event shape ``(D_z,)``.

        Args:
            c: cluster indices (long), any shape (an enumerated ``(C, 1, ..., 1)`` included).
        """
        return component_distribution(self.posterior_family, self.cluster_loc[c],
                                      self.cluster_scale()[c])

    def cluster_log_joint(self, z: Tensor) -> Tensor:
        r""":math:`\log \pi_c + \log p(z \mid c)` for every cluster, ``(*batch, C)``.

        Args:
            z: shared latents ``(*batch, D_z)``.
        """
        c = torch.arange(self.num_clusters, device=z.device)
        log_pz = self.latent_given_cluster(c).log_prob(z.unsqueeze(-2))  # (*batch, C)
        return torch.log_softmax(self.cluster_logits, -1) + log_pz

    def cluster_log_posterior(self, z: Tensor) -> Tensor:
        r""":math:`\log p(c \mid z)`, normalised over the C clusters, ``(*batch, C)``.

        Args:
            z: shared latents ``(*batch, D_z)``.
        """
        return torch.log_softmax(self.cluster_log_joint(z), dim=-1)

    def marginal_prior_log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\log p(z) = \log \sum_c \pi_c\, p(z \mid c)`, ``(*batch,)``.

        Args:
            z: shared latents ``(*batch, D_z)``.
        """
        return torch.logsumexp(self.cluster_log_joint(z), dim=-1)

    def sample_prior_latent(self, num: int) -> Tensor:
        r"""``num`` draws :math:`z \sim \sum_c \pi_c\,p(z|c)` (ancestral), ``(num, D_z)``.

        Args:
            num: the number of draws.
        """
        c = self.cluster_prior().sample((num,))
        return self.latent_given_cluster(c).sample()

    # ------------------------------------------------------------------ Pyro programs
    def sample_latents(self, present: Tensor, strata: Strata | None) -> dict[str, Tensor]:
        r""":math:`c \sim p(c)` (enumerated in training), :math:`z \sim p(z|c)` and
        :math:`w_m \sim p(w_m)` as in MMVAE+, all scaled by :math:`\beta`.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).

        Returns:
            Dict modality name -> decoder input ``[z, w_m]``.
        """
        with poutine.scale(scale=self.current_beta):
            c = pyro.sample("c", self.cluster_prior(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.latent_given_cluster(c))
            latents = {}
            for i, name in enumerate(self.names):
                with poutine.mask(mask=self._private_mask(i, present, strata)):
                    w = pyro.sample(f"w_{name}", self.private_prior())
                latents[name] = concat_latents(z, w)
        return latents

    def guide_shared_extras(self, z: Tensor, strata: Strata | None) -> None:
        r"""Unstratified, draw :math:`c \sim p(c \mid z)` after z (exact: the importance
        sampling and :class:`~pyro.infer.Predictive` guide). Stratified (training), c is left
        to the model, where the objective enumerates it.

        Args:
            z: the shared latent just drawn.
            strata: the layout from :meth:`layout`, or ``None``.
        """
        if strata is None:
            pyro.sample("c", dist.Categorical(logits=self.cluster_log_posterior(z)))

    # ------------------------------------------------------------------ clusters
    def cluster_posterior(self, data: Data, mask: Mask = None) -> Tensor:
        r"""Cluster probabilities ``(B, C)``: :math:`p(c \mid z)` at each present expert's
        mean :math:`\mathbb{E}[q_m(z|x_m)]`, averaged over the present experts.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
            mask: optional dict modality name -> bool ``(B,)`` presence.
        """
        filled, present = self.prepare(data, mask)
        loc_z, _, _, _ = self.encode_all(filled)  # (M, B, Dz)
        probs = self.cluster_log_posterior(loc_z).exp()  # (M, B, C)
        weight = present.to(probs.dtype).unsqueeze(-1)
        return (probs * weight).sum(0) / weight.sum(0).clamp_min(1.0)

    def assign_clusters(self, data: Data, mask: Mask = None) -> Tensor:
        """The most probable cluster of each row, ``(B,)`` long (argmax of
        :meth:`cluster_posterior`).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
            mask: optional dict modality name -> bool ``(B,)`` presence.
        """
        return self.cluster_posterior(data, mask).argmax(-1)

    # ------------------------------------------------------------------ generation
    def sample(self, num: int) -> dict[str, Tensor]:
        r"""Unconditional generation: decoder means for :math:`c \sim p(c)`,
        :math:`z \sim p(z|c)`, :math:`w_m \sim p(w_m)` (one z shared by all modalities).

        Args:
            num: the number of samples N.

        Returns:
            Dict modality name -> decoder mean ``(N, *event_shape)``.
        """
        z = self.sample_prior_latent(num)
        return {name: mod.mean(concat_latents(z, self.private_prior().sample((num,))))
                for name, mod in self.mods.items()}
