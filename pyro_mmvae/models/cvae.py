r"""The conditional VAE (Sohn et al. 2015) as a baseline: :math:`p(x_t \mid x_s)` for one pair.

*Learning Structured Output Representation using Deep Conditional Generative Models*,
NeurIPS 2015 (https://papers.nips.cc/paper/5775).

One source modality :math:`x_s` conditions the generation of one target :math:`x_t`
(settings ``cvae_source`` and ``cvae_target``; default the dataset's first modality and the
next one):

.. math:: z \sim p_\psi(z \mid x_s), \qquad x_t \sim p_\theta(x_t \mid z, x_s),
          \qquad q_\phi(z \mid x_s, x_t)

and the objective (:class:`~pyro_mmvae.infer.CVAEELBO`) is the conditional ELBO

.. math:: \mathcal{L}(x_t \mid x_s) = \mathbb{E}_{q_\phi(z|x_s,x_t)}\big[\lambda_t
          \log p_\theta(x_t|z,x_s)\big] - \beta\,\mathrm{KL}\big(q_\phi(z|x_s,x_t)\,\|\,
          p_\psi(z|x_s)\big).

The prior is the learned conditional :math:`p_\psi(z|x_s)` of Sohn et al.
(``cvae_prior="conditional"``, the default) or :math:`\mathcal{N}(0, I)`
(``cvae_prior="standard"``: MultiVae's ``CVAE`` without a prior network).

**Networks.** The source's encoder (its :class:`~pyro_mmvae.modality.Modality` in
:attr:`mods`) is a feature network :math:`h(x_s)` (``2F`` features,
:class:`~pyro_mmvae.nets.joint.EncoderFeatures`) read by the prior head, the posterior head and
the decoder; the target's encoder gives the posterior head its :math:`x_t` features; the
target's decoder reads ``[z, h(x_s)]``. The source modality is never generated (its decoder
is the identity and it has no observe site).

**Pyro layout.** Site ``z`` and the observe site ``x_<target>`` in the ``data`` plate (no
strata); both are masked to the rows that observe the source *and* the target (another row
has no conditional likelihood). The model needs the source: with ``sample_missing=True``
and the target left out, :class:`pyro.infer.Predictive` on the guide draws
:math:`z \sim p(z|x_s)` and samples :math:`x_t` — the conditional generation.

**Generation and coherence.** Only :math:`s \to t` is defined (:attr:`generation_pairs`):
conditional coherence measures that one pair (``conditional_coherence`` is then
:math:`C(s \to t)`), and asking the model for another source or target is a
``ValueError``. There is no unconditional generation (:meth:`sample` raises).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from pyro_mmvae.distributions.experts import component_distribution
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
from pyro_mmvae.nets.joint import EncoderFeatures

#: The priors of z: learned ``p(z|x_s)`` or ``N(0, I)``.
CVAE_PRIORS = ("conditional", "standard")


def _head(features: int, hidden: int, latent_dim: int) -> nn.Module:
    """``features -> hidden (ReLU) -> 2 D``: the location and raw scale of a latent."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))


class CVAE(MultimodalVAE):
    r"""Conditional VAE :math:`p(x_t|x_s)`: prior :math:`p(z|x_s)` (or :math:`\mathcal{N}(0,I)`),
    posterior :math:`q(z|x_s,x_t)`, decoder :math:`p(x_t|z,x_s)`.

    Args:
        source: the conditioning modality; its encoder maps :math:`x_s` to ``(a, b)`` of
            width F each (the features :math:`h(x_s) = \mathrm{LeakyReLU}([a, b])`, 2F), its
            decoder is unused.
        target: the generated modality; its encoder maps :math:`x_t` to ``(a, b)`` of width
            F each (features of the posterior head), its decoder reads ``[z, h(x_s)]``
            (:math:`D + 2F` inputs).
        latent_dim: D, the size of z.
        feature_dim: F, the width of each encoder head (default 64).
        hidden: width of the prior and posterior heads' hidden layer (default 256).
        prior: ``"conditional"`` (default; :math:`p_\psi(z|x_s)`, Sohn et al.) or
            ``"standard"`` (:math:`\mathcal{N}(0, I)`).
        **kwargs: ``beta``, ``kl_warmup_epochs``, ``scale_param`` of
            :class:`~pyro_mmvae.models.MultimodalVAE` (the family is Normal).
    """

    #: What ``pyro-mmvae evaluate`` can measure: coherence of the one pair s -> t. It has no
    #: prior over all modalities (no unconditional samples, no Fréchet distances of them) and
    #: no joint likelihood p(X), only p(x_t | x_s).
    evaluation_metrics = ("coherence",)

    pyro_name = "cvae"

    def __init__(self, source: Modality, target: Modality, latent_dim: int,
                 feature_dim: int = 64, hidden: int = 256, prior: str = "conditional",
                 **kwargs: Any) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__([source, target], latent_dim, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError("the conditional VAE uses Normal latents; got "
                             f"posterior={self.posterior_family!r}")
        if prior not in CVAE_PRIORS:
            raise ValueError(f"unknown cvae_prior {prior!r}; choose one of: "
                             f"{', '.join(CVAE_PRIORS)}")
        self.source, self.target, self.prior_kind = source.name, target.name, prior
        self.feature_dim = int(feature_dim)
        features = 2 * self.feature_dim
        self.source_features = EncoderFeatures(source.encoder)
        self.target_features = EncoderFeatures(target.encoder)
        self.posterior_head = _head(2 * features, int(hidden), self.latent_dim)
        self.prior_head = (_head(features, int(hidden), self.latent_dim)
                           if prior == "conditional" else None)

    @property
    def generation_pairs(self) -> tuple[tuple[tuple[str, ...], str], ...]:
        """The (sources, target) pairs this model generates: only ``((source,), target)``."""
        return (((self.source,), self.target),)

    # ------------------------------------------------------------------ distributions
    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        return loc, self.scale_fn(raw)

    def conditional_prior(self, h: Tensor) -> TorchDistribution:
        r""":math:`p(z|x_s)` from the source features ``h`` ``(B, 2F)``, or
        :math:`\mathcal{N}(0, I)` (batch ``(B,)``) with ``prior="standard"``.

        Args:
            h: the source features :math:`h(x_s)`, ``(B, 2F)``.
        """
        if self.prior_head is None:
            loc = self._prior_loc.expand(h.size(0), self.latent_dim)
            return component_distribution("normal", loc, self._prior_scale.expand_as(loc))
        return component_distribution("normal", *self._split(self.prior_head(h)))

    def recognition(self, h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``loc``, ``scale`` ``(B, D)`` of :math:`q(z|x_s, x_t)`.

        Args:
            h: the source features :math:`h(x_s)`, ``(B, 2F)``.
            x_t: the target batch ``(B, *event_shape)``.
        """
        return self._split(self.posterior_head(torch.cat([h, self.target_features(x_t)], -1)))

    def prepare(self, data: Data, mask: Mask = None) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`MultimodalVAE.prepare` on the source and target only: the dataset's other
        modalities (and their masks) are ignored, and a row observing neither is allowed (it
        is masked out of the objective, see :meth:`model`).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
            mask: optional dict modality name -> bool ``(B,)`` presence (else the batch's).
        """
        if not isinstance(data, Mapping):
            return super().prepare(data, mask)
        mask = getattr(data, "mask", None) if mask is None else mask
        filled, present = super().prepare({k: v for k, v in data.items() if k in self.names})
        if mask is None:
            return filled, present
        rows = [present[i] if mask.get(n) is None else present[i] & mask[n].bool()
                for i, n in enumerate(self.names)]
        for i, (name, mod) in enumerate(self.mods.items()):
            keep = rows[i].view(-1, *[1] * len(mod.event_shape))
            filled[name] = torch.where(keep, filled[name], filled[name].new_zeros(()))
        return filled, torch.stack(rows)

    def _rows(self, present: Tensor) -> Tensor:
        """Bool ``(B,)``: the rows observing both the source and the target."""
        return present[self.names.index(self.source)] & present[self.names.index(self.target)]

    # ------------------------------------------------------------------ Pyro programs
    def model(self, data: Data = None, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        r""":math:`z \sim p(z|x_s)` (scaled by :math:`\beta`), :math:`x_t \sim p(x_t|z, x_s)`
        observed (or sampled with ``sample_missing`` when the target is left out), both
        masked to the rows observing source and target.

        Args:
            data: dict modality name -> ``(B, *event_shape)``; must hold the source.
            mask: optional dict modality name -> bool ``(B,)`` presence.
            subsets: must be ``None`` (no modality subsets).
            stratify: unused (one z per data point either way).
            batch_size: unused: the model needs the source (keyword only).
            sample_missing: sample the target when it is not in ``data`` (keyword only).
        """
        self.register()
        if subsets is not None:
            raise ValueError("the conditional VAE takes no modality subsets")
        if not _has_data(data) or data.get(self.source) is None:
            raise ValueError(f"the conditional VAE needs its source modality {self.source!r} "
                             "in the data (it has no unconditional generation)")
        sample = sample_missing and data.get(self.target) is None
        data, present = self.prepare(data, mask)
        rows = self._rows(present) if not sample else present[self.names.index(self.source)]
        h = self.source_features(data[self.source])
        target = self.mods[self.target]
        with pyro.plate("data", present.size(1), dim=DATA_DIM), poutine.mask(mask=rows):
            with poutine.scale(scale=self.current_beta):
                z = pyro.sample("z", self.conditional_prior(h))
            latent = torch.cat([z, h.expand(*z.shape[:-1], h.size(-1))], -1)
            fn = target.likelihood.distribution(target.decode(latent), len(target.event_shape))
            with poutine.scale(scale=target.weight):
                pyro.sample(f"x_{self.target}", fn,
                            obs=None if sample else data[self.target])

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        r""":math:`z \sim q(z|x_s, x_t)`; on rows without the target (generation with
        ``sample_missing``), :math:`z \sim p(z|x_s)`.

        Args:
            data: the batch, as in :meth:`model`.
            mask: optional dict modality name -> bool ``(B,)`` presence.
            subsets: must be ``None``.
            stratify: unused.
            batch_size: unused (keyword only).
            sample_missing: as in :meth:`model` (keyword only).
        """
        self.register()
        if data is None or data.get(self.source) is None:
            raise ValueError(f"the conditional VAE needs its source modality {self.source!r} "
                             "in the data")
        sample = sample_missing and data.get(self.target) is None
        data, present = self.prepare(data, mask)
        h = self.source_features(data[self.source])
        if sample:
            qz = self.conditional_prior(h)
            rows = present[self.names.index(self.source)]
        else:
            qz = component_distribution("normal", *self.recognition(h, data[self.target]))
            rows = self._rows(present)
        with pyro.plate("data", present.size(1), dim=DATA_DIM), poutine.mask(mask=rows):
            with poutine.scale(scale=self.current_beta):
                pyro.sample("z", qz)

    # ------------------------------------------------------------------ generation
    def _check_pair(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        if self.source not in sources or any(t != self.target for t in targets):
            raise ValueError(f"the conditional VAE generates only {self.target!r} from "
                             f"{self.source!r} (settings cvae_source, cvae_target); asked for "
                             f"{list(targets)} from {list(sources)}")

    def encode_experts(self, data: Data) -> dict[str, Tensor]:
        """The source features ``h`` ``(B, 2F)`` and the prior's ``loc``/``scale`` ``(B, D)``;
        with the target in ``data`` also the recognition posterior's ``joint_loc`` and
        ``joint_scale``.

        Args:
            data: dict modality name -> ``(B, *event_shape)``; must hold the source.
        """
        if data.get(self.source) is None:
            raise ValueError(f"source modality {self.source!r} not in the data")
        filled, _ = self.prepare(data)
        h = self.source_features(filled[self.source])
        prior = self.conditional_prior(h)
        out = {"h": h, "loc": prior.mean, "scale": prior.stddev}
        if data.get(self.target) is not None:
            out["joint_loc"], out["joint_scale"] = self.recognition(h, filled[self.target])
        return out

    def posterior_from_experts(self, experts: Mapping[str, Tensor],
                               sources: Sequence[str]) -> TorchDistribution:
        r""":math:`p(z|x_s)` for ``sources == [source]``; :math:`q(z|x_s, x_t)` for both.

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the source alone, or source and target.
        """
        sources = self._check_names(sources, "source")
        if set(sources) == {self.source}:
            return component_distribution("normal", experts["loc"], experts["scale"])
        if set(sources) == {self.source, self.target} and "joint_loc" in experts:
            return component_distribution("normal", experts["joint_loc"],
                                          experts["joint_scale"])
        raise ValueError(f"the conditional VAE conditions on {self.source!r} (or on "
                         f"{self.source!r} and {self.target!r} together); got {sources}")

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """:meth:`posterior_from_experts` of ``data``.

        Args:
            data: dict modality name -> ``(B, *event_shape)``; must hold the sources.
            sources: the source alone, or source and target.
        """
        return self.posterior_from_experts(
            self.encode_experts({s: data[s] for s in sources}), sources)

    def generation_latents(self, experts, sources, targets, posterior: str = "mean"
                           ) -> dict[str, Tensor]:
        """``{target: [z, h(x_s)]}``, z the mean of (or a draw from) :meth:`posterior_from_experts`.

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the source (and optionally the target).
            targets: must be ``[target]``.
            posterior: ``"mean"`` (default) or ``"sample"``.
        """
        targets = self._check_names(targets, "target")
        self._check_pair(sources, targets)
        z = posterior_point(self.posterior_from_experts(experts, sources), posterior)
        return {self.target: torch.cat([z, experts["h"]], -1)}

    def generate(self, data: Data, sources: Sequence[str], targets: Sequence[str] | None = None,
                 posterior: str = "mean") -> dict[str, Tensor]:
        """Decoder mean of the target given the source (and, to reconstruct, the target).

        Args:
            data: dict modality name -> ``(B, *event_shape)``; must hold the sources.
            sources: ``[source]`` (or ``[source, target]``).
            targets: ``[target]`` or ``None`` (the same).
            posterior: ``"mean"`` (default) or ``"sample"``.
        """
        check_posterior_point(posterior)
        targets = [self.target] if targets is None else list(targets)
        self._check_pair(list(sources), targets)
        return super().generate(data, sources, targets, posterior)

    def sample(self, num: int) -> dict[str, Tensor]:
        """Not defined: the conditional VAE has no unconditional generation.

        Args:
            num: the number of samples (unused).
        """
        raise NotImplementedError("the conditional VAE has no unconditional generation; use "
                                  "generate() from the source modality")

