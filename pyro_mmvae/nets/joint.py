r"""Joint encoders :math:`q_\phi(z \mid X)`: one network reading every modality at once.

JMVAE (Suzuki et al. 2016) and TELBO (Vedantam et al. 2018) infer the joint posterior with a
network on all modalities rather than by aggregating unimodal experts. The default
architecture here is built from the unimodal encoder architecture of each modality:

.. math:: h_m = \operatorname{LeakyReLU}_{0.2}\big([\,a_m, b_m\,]\big),\quad
          (a_m, b_m) = E'_m(x_m) \in \mathbb{R}^{F} \times \mathbb{R}^{F},

.. math:: g = \operatorname{ReLU}\big(W [h_1, \dots, h_M] + c\big) \in \mathbb{R}^{H},\qquad
          \mu = W_\mu g + c_\mu,\quad v = W_v g + c_v,

where :math:`E'_m` is a fresh copy (own weights) of modality m's unimodal encoder
architecture with output size F (its two linear heads read together as one linear feature
layer of width 2F): for images the MLP or PolyMNIST ResNet tower, for vectors an MLP. The
head is one hidden layer of width H. The output is ``(loc, raw_scale)`` like every encoder of
the library (the model maps ``raw_scale`` to a positive scale).

Missing modalities: ``forward(data, present)`` reads a subset :math:`S` of the modalities
by zeroing the features of the absent ones, :math:`h_m \leftarrow \mathbb{1}[m \in S]\,
h_m`, so that one network amortises :math:`q_\phi(z|X_S)` over every subset (the head sees
exact zeros where a modality is absent, whatever the zero-filled input would have given; a
present modality's :math:`h_m` is exactly zero only on a null set). On complete rows the
output is that of ``forward(data)``. The coordination models
(:mod:`pyro_mmvae.models.coordination`) use this in training when their ``incomplete_joint``
is ``"encoder"`` (TELBO); otherwise rows with a missing modality use the product of the
present unimodal experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_LEAK = 0.2


class EncoderFeatures(nn.Module):
    """Read an encoder ``x -> (a, b)`` as a feature network ``x -> LeakyReLU([a, b])``.

    Args:
        encoder: a unimodal encoder ``x (B, *event) -> (a (B, F), b (B, F), ...)``; only its
            first two outputs are used (a private code is ignored).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, 2F)``: ``LeakyReLU_0.2([a, b])``.

        Args:
            x: one modality's batch ``(B, *event)``, as the wrapped encoder takes it.
        """
        a, b = self.encoder(x)[:2]
        return F.leaky_relu(torch.cat([a, b], dim=-1), _LEAK)


class JointEncoder(nn.Module):
    r"""``X -> (loc, raw_scale)``: per-modality features, concatenated, then an MLP head.

    Args:
        features: modality name -> feature network ``x_m (B, *event) -> (B, F_m)``; the
            order of this mapping is the order of the concatenation.
        feature_dims: ``F_m`` for each modality (same keys).
        latent_dim: D, the size of ``loc`` and ``raw_scale``.
        hidden: widths of the head's hidden layers (ReLU), default one layer of 256.
    """

    def __init__(
        self,
        features: Mapping[str, nn.Module],
        feature_dims: Mapping[str, int],
        latent_dim: int,
        hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError("a joint encoder needs at least one modality")
        if set(features) != set(feature_dims):
            raise ValueError(f"features and feature_dims must name the same modalities, got "
                             f"{sorted(features)} and {sorted(feature_dims)}")
        if latent_dim <= 0 or any(int(h) <= 0 for h in hidden):
            raise ValueError(f"latent_dim and hidden widths must be positive, got {latent_dim} "
                             f"and {tuple(hidden)}")
        self.features = nn.ModuleDict(dict(features))
        width = sum(int(feature_dims[name]) for name in features)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.head = nn.Sequential(*layers)
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)
        self.latent_dim = int(latent_dim)

    @property
    def names(self) -> tuple[str, ...]:
        """The modality names the encoder reads, in order."""
        return tuple(self.features.keys())

    @classmethod
    def from_encoders(
        cls,
        encoders: Mapping[str, nn.Module],
        feature_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
    ) -> JointEncoder:
        """The default architecture: each ``encoders[m]`` (output size ``feature_dim`` per
        head, own weights) becomes a feature network of width ``2 * feature_dim``.

        Args:
            encoders: modality name -> a fresh unimodal encoder (not shared with the model's
                experts) whose ``loc``/``raw_scale`` heads have ``feature_dim`` outputs.
            feature_dim: F, the output size of each encoder head.
            latent_dim: D, the size of ``loc`` and ``raw_scale``.
            hidden: widths of the head's hidden layers (ReLU), default one layer of 256.
        """
        features = {name: EncoderFeatures(enc) for name, enc in encoders.items()}
        return cls(features, {name: 2 * int(feature_dim) for name in encoders}, latent_dim,
                   hidden)

    def forward(self, data: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``loc`` and ``raw_scale`` of :math:`q_\\phi(z|X)`, each ``(B, D)``.

        Args:
            data: modality name -> batch ``(B, *event)`` for every modality of
                :attr:`names` (absent rows zero-filled, e.g. a
                :class:`~pyro_mmvae.data.base.MaskedBatch`); a missing key is a
                ``ValueError``.
            present: optional modality name -> bool ``(B,)`` presence: the features of a
                modality are zeroed on the rows where it is absent (:math:`q_\\phi(z|X_S)`);
                None: every row observes every modality.
        """
        missing = [name for name in self.names if data.get(name) is None]
        if missing:
            raise ValueError(f"the joint encoder needs every modality; {missing} missing. "
                             "Use the model's posterior(), which falls back to the product of "
                             "the present unimodal experts")
        feats = []
        for name, net in self.features.items():
            h = net(data[name])
            if present is not None:
                h = h * present[name].to(h.dtype).unsqueeze(-1)
            feats.append(h)
        h = torch.cat(feats, dim=-1)
        h = self.head(h)
        return self.loc(h), self.raw_scale(h)
