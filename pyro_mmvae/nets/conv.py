"""Small convolutional encoder and decoder for 3x28x28 PolyMNIST images.

The layout of the PolyMNIST networks of MoPoE (Sutter et al. 2021, "Generalized multimodal
ELBO", ICLR; public code thomassutter/MoPoE), re-written here: three stride-2 convolutions
and their transposes, 1/46 (decoder: 4.6 vs 212 MFLOP per image) and 1/38 (encoder: 5.6 vs
213) of the floating-point work of the ResNets (:mod:`pyro_mmvae.nets.polymnist`). (The CPU
reproduction protocol measured them against the MLPs and chose the MLPs, which cost a third
per step and learned faster in its budget: ``benchmarks/results/reproduction-progress.md``.)

Encoder tower (``channels = (c1, c2, c3)``, default (32, 64, 128)), ReLU after each layer::

    conv 3x3 stride 2 pad 1, 3 -> c1      (c1 x 14 x 14)
    conv 3x3 stride 2 pad 1, c1 -> c2     (c2 x 7 x 7)
    conv 3x3 stride 2 pad 1, c2 -> c3     (c3 x 4 x 4)
    flatten, linear 16 c3 -> F            (F = feature_dim, default 256)

then two linear heads F -> D (``loc``, ``raw_scale``). The decoder mirrors it: linear
D -> 16 c3, reshape, three transposed convolutions (4 -> 7 -> 14 -> 28) with ReLU between
them, and no output squashing by default, as the ResNet decoder: MoPoE puts a sigmoid
there, but a saturated sigmoid stops the gradient of its pixels (measured: a conv
autoencoder with it stalls at 2.2x the best constant image's error on four block images,
without it it reaches 0.05x in 150 Adam steps; ``tests/test_nets.py``). Generated images
are clamped to [0, 1] for display and classification.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyro_mmvae.nets.mlp import OUTPUT_ACTIVATIONS, check_latent_shape, check_trailing_shape
from pyro_mmvae.nets.polymnist import GaussianHead

POLYMNIST_SHAPE = (3, 28, 28)
DEFAULT_CHANNELS = (32, 64, 128)
_TOP_SIZE = 4


def _tower(channels: tuple[int, int, int], feature_dim: int) -> nn.Sequential:
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, stride=2, padding=1), nn.ReLU(),    # 28 -> 14
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),   # 14 -> 7
        nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(),   # 7 -> 4
        nn.Flatten(),
        nn.Linear(c3 * _TOP_SIZE * _TOP_SIZE, feature_dim), nn.ReLU(),
    )


def _check_channels(channels) -> tuple[int, int, int]:
    channels = tuple(int(c) for c in channels)
    if len(channels) != 3 or min(channels) < 1:
        raise ValueError(f"channels must be three positive ints, got {channels}")
    return channels  # type: ignore[return-value]


def _conv_head(out_dim: int, channels: tuple[int, int, int], feature_dim: int) -> GaussianHead:
    return GaussianHead(_tower(channels, feature_dim), feature_dim, out_dim)


class PolyMNISTConvEncoder(nn.Module):
    """x (B, 3, 28, 28) -> (loc, raw_scale) [+ (private_loc, private_raw_scale)].

    With ``private_dim > 0`` a second tower of the same shape gives the private latent's
    parameters (shared and private codes share no features, as with the ResNet encoder).
    Inputs in [0, 1] are centred to [-1, 1] first.

    Args:
        latent_dim: D, the size of the shared latent's ``loc`` and ``raw_scale``.
        private_dim: size of the private (modality-specific) latent; 0 (default): none,
            and ``forward`` returns two tensors.
        channels: the three convolutions' output channels ``(c1, c2, c3)``, default
            ``(32, 64, 128)``.
        feature_dim: F, the width of the linear feature layer before the heads (default
            256).
    """

    def __init__(self, latent_dim: int, private_dim: int = 0,
                 channels=DEFAULT_CHANNELS, feature_dim: int = 256) -> None:
        super().__init__()
        if latent_dim <= 0 or private_dim < 0 or feature_dim <= 0:
            raise ValueError(f"latent_dim and feature_dim must be > 0 and private_dim >= 0, "
                             f"got {latent_dim}, {feature_dim} and {private_dim}.")
        channels = _check_channels(channels)
        self.latent_dim, self.private_dim = int(latent_dim), int(private_dim)
        self.shared = _conv_head(self.latent_dim, channels, feature_dim)
        self.private = (_conv_head(self.private_dim, channels, feature_dim)
                        if self.private_dim > 0 else None)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(loc, raw_scale)``, each ``(B, latent_dim)``, then with ``private_dim > 0``
        ``(private_loc, private_raw_scale)``, each ``(B, private_dim)``.

        Args:
            x: float images ``(B, 3, 28, 28)`` in [0, 1].
        """
        check_trailing_shape(x, POLYMNIST_SHAPE, type(self).__name__)
        x = 2 * x - 1
        loc, raw_scale = self.shared(x)
        if self.private is None:
            return loc, raw_scale
        return (loc, raw_scale, *self.private(x))


class PolyMNISTConvDecoder(nn.Module):
    """z (N, latent_dim) -> (N, 3, 28, 28): the per-pixel location of the likelihood
    (unbounded by default; ``output_activation="sigmoid"`` squashes it to (0, 1)).

    Args:
        latent_dim: D, the size of the latent code decoded (for MMVAE+: shared plus private).
        channels: the encoder's channels ``(c1, c2, c3)``, used in reverse order; default
            ``(32, 64, 128)``.
        output_activation: None (default, raw output) or ``"sigmoid"``.
    """

    def __init__(self, latent_dim: int, channels=DEFAULT_CHANNELS,
                 output_activation: str | None = None) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be > 0, got {latent_dim}.")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got "
                             f"{output_activation!r}.")
        c1, c2, c3 = _check_channels(channels)
        self.latent_dim, self.top_channels = int(latent_dim), c3
        self.output_activation = output_activation
        self.fc = nn.Sequential(nn.Linear(latent_dim, c3 * _TOP_SIZE * _TOP_SIZE), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 3, stride=2, padding=1), nn.ReLU(),         # 4 -> 7
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1),  # 7 -> 14
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 3, 3, stride=2, padding=1, output_padding=1),   # 14 -> 28
        )

    def forward(self, z: Tensor) -> Tensor:
        """The likelihood's location ``(N, 3, 28, 28)``.

        Args:
            z: latent codes ``(N, latent_dim)`` (particle and batch dims flattened into N).
        """
        check_latent_shape(z, self.latent_dim, type(self).__name__)
        h = self.fc(z).reshape(z.shape[0], self.top_channels, _TOP_SIZE, _TOP_SIZE)
        out = self.deconv(h)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
