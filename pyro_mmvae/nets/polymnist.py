"""Residual convolutional encoder and decoder for 3x28x28 PolyMNIST images.

The layout follows the ResNet networks of the MMVAE+ reference implementation
(Palumbo et al. 2023, "MMVAE+: Enhancing the generative quality of multimodal VAEs without
compromises", ICLR; public code srl-ethz/mmvaeplus), which in turn use the residual blocks
of Mescheder et al. 2018. It is re-written here, not copied.

Residual block ``ResidualBlock(c_in, c_out)`` (pre-activation, no normalisation)::

    h   = conv3x3(c_in -> c_mid)(leaky_relu_0.2(x)),   c_mid = min(c_in, c_out)
    dx  = conv3x3(c_mid -> c_out)(leaky_relu_0.2(h))
    out = shortcut(x) + 0.1 * dx

where ``shortcut`` is the identity when c_in == c_out and a bias-free 1x1 convolution
otherwise. All 3x3 convolutions have stride 1 and padding 1 (size preserving); the
0.1 factor keeps every block close to its shortcut at initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_mmvae.nets.mlp import OUTPUT_ACTIVATIONS, check_latent_shape, check_trailing_shape

POLYMNIST_SHAPE = (3, 28, 28)
_BASE_CHANNELS = 64  # channels at 28x28
_TOP_CHANNELS = 256  # channels at 7x7 (64 * 2**2)
_TOP_SIZE = 7
_LEAK = 0.2
_RESIDUAL_GAIN = 0.1


def _leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, _LEAK)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: shortcut(x) + 0.1 * conv(lrelu(conv(lrelu(x)))).

    Args:
        c_in: input channels.
        c_out: output channels (a 1x1 convolution shortcut when it differs from ``c_in``).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        c_mid = min(c_in, c_out)
        self.conv_in = nn.Conv2d(c_in, c_mid, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1)
        self.shortcut = (
            nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_out, H, W)``, the same spatial size.

        Args:
            x: a feature map ``(B, c_in, H, W)``.
        """
        dx = self.conv_out(_leaky(self.conv_in(_leaky(x))))
        return self.shortcut(x) + _RESIDUAL_GAIN * dx


def _downsampling_tower() -> nn.Sequential:
    """3x28x28 image -> 256x7x7 feature map (see PolyMNISTResNetEncoder)."""
    return nn.Sequential(
        nn.Conv2d(3, _BASE_CHANNELS, kernel_size=3, padding=1),
        ResidualBlock(64, 64),
        nn.AvgPool2d(kernel_size=3, stride=2, padding=1),  # 28 -> 14
        ResidualBlock(64, 128),
        nn.AvgPool2d(kernel_size=3, stride=2, padding=1),  # 14 -> 7
        ResidualBlock(128, _TOP_CHANNELS),
        nn.Flatten(),
    )


class GaussianHead(nn.Module):
    """A feature tower ``x -> (B, features)`` followed by two linear heads: (loc, raw_scale).
    The image encoders build their shared and private codes from one each.

    Args:
        tower: a feature network ``x -> (B, features)``.
        features: the width of the tower's output.
        out_dim: the size of ``loc`` and ``raw_scale``.
    """

    def __init__(self, tower: nn.Module, features: int, out_dim: int) -> None:
        super().__init__()
        self.tower = tower
        self.loc = nn.Linear(features, out_dim)
        self.raw_scale = nn.Linear(features, out_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, raw_scale)``, each ``(B, out_dim)``.

        Args:
            x: the tower's input batch, e.g. images ``(B, 3, 28, 28)``.
        """
        h = self.tower(x)
        return self.loc(h), self.raw_scale(h)


def _resnet_head(out_dim: int) -> GaussianHead:
    return GaussianHead(_downsampling_tower(), _TOP_CHANNELS * _TOP_SIZE * _TOP_SIZE, out_dim)


class PolyMNISTResNetEncoder(nn.Module):
    """x (B, 3, 28, 28) -> (loc, raw_scale) [+ (private_loc, private_raw_scale)].

    Architecture (one "tower"):
      1. conv 3x3, 3 -> 64 channels, stride 1, padding 1           (64 x 28 x 28)
      2. residual block 64 -> 64                                   (64 x 28 x 28)
      3. average pool 3x3, stride 2, padding 1                     (64 x 14 x 14)
      4. residual block 64 -> 128                                  (128 x 14 x 14)
      5. average pool 3x3, stride 2, padding 1                     (128 x 7 x 7)
      6. residual block 128 -> 256                                 (256 x 7 x 7)
      7. flatten (12544 features) and two linear heads -> loc, raw_scale (latent_dim each)

    With ``private_dim > 0`` a second, independent tower of the same shape produces the
    private (modality-specific) latent parameters, as in the MMVAE+ reference, where the
    shared and private codes do not share convolutional features. ``raw_scale`` values are
    unconstrained; the model maps them to positive scales (softplus(v) + eps, or the
    official softmax(v) * D + eps).

    Args:
        latent_dim: D, the size of the shared latent's ``loc`` and ``raw_scale``.
        private_dim: size of the private latent; 0 (default): none, and ``forward``
            returns two tensors.
    """

    def __init__(self, latent_dim: int, private_dim: int = 0) -> None:
        super().__init__()
        if latent_dim <= 0 or private_dim < 0:
            raise ValueError(
                f"latent_dim must be > 0 and private_dim >= 0, got {latent_dim} and {private_dim}."
            )
        self.latent_dim = int(latent_dim)
        self.private_dim = int(private_dim)
        self.shared = _resnet_head(self.latent_dim)
        self.private = _resnet_head(self.private_dim) if self.private_dim > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(loc, raw_scale)``, each ``(B, latent_dim)``, then with ``private_dim > 0``
        ``(private_loc, private_raw_scale)``, each ``(B, private_dim)``.

        Args:
            x: float images ``(B, 3, 28, 28)`` in [0, 1] (not centred here).
        """
        check_trailing_shape(x, POLYMNIST_SHAPE, type(self).__name__)
        loc, raw_scale = self.shared(x)
        if self.private is None:
            return loc, raw_scale
        private_loc, private_raw_scale = self.private(x)
        return loc, raw_scale, private_loc, private_raw_scale


class PolyMNISTResNetDecoder(nn.Module):
    """z (N, latent_dim) -> (N, 3, 28, 28): the per-pixel location of the likelihood.

    Architecture (mirror of the encoder tower):
      1. linear latent_dim -> 256 * 7 * 7, reshaped                (256 x 7 x 7)
      2. residual block 256 -> 128, nearest-neighbour upsample x2  (128 x 14 x 14)
      3. residual block 128 -> 64, nearest-neighbour upsample x2   (64 x 28 x 28)
      4. residual block 64 -> 64                                   (64 x 28 x 28)
      5. leaky ReLU(0.2), conv 3x3, 64 -> 3 channels, stride 1, padding 1

    For MMVAE+-style models, ``latent_dim`` is the size of the concatenation [z, w_m] of
    the shared and private latents; the model concatenates before calling the decoder.

    Output squashing: none by default, as in the reference, whose decoder output is used
    directly as the Laplace location (scale 0.75) of pixels in [0, 1]; a sigmoid would
    cap the likelihood's location away from exactly 0/1 and change the objective the
    published numbers were obtained with. Generated images are clamped to [0, 1] only
    for display/classification (see ``pyro_mmvae.metrics``). ``output_activation=
    "sigmoid"`` is offered for likelihoods that need a bounded mean.

    Args:
        latent_dim: D, the size of the latent code decoded (for MMVAE+: shared plus private).
        output_activation: None (default, raw output) or ``"sigmoid"``.
    """

    def __init__(self, latent_dim: int, output_activation: str | None = None) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be > 0, got {latent_dim}.")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}."
            )
        self.latent_dim = int(latent_dim)
        self.output_activation = output_activation
        self.fc = nn.Linear(self.latent_dim, _TOP_CHANNELS * _TOP_SIZE * _TOP_SIZE)
        self.blocks = nn.Sequential(
            ResidualBlock(_TOP_CHANNELS, 128),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 7 -> 14
            ResidualBlock(128, _BASE_CHANNELS),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 14 -> 28
            ResidualBlock(_BASE_CHANNELS, _BASE_CHANNELS),
        )
        self.to_image = nn.Conv2d(_BASE_CHANNELS, POLYMNIST_SHAPE[0], kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """The likelihood's location ``(N, 3, 28, 28)``.

        Args:
            z: latent codes ``(N, latent_dim)`` (particle and batch dims flattened into N).
        """
        check_latent_shape(z, self.latent_dim, type(self).__name__)
        h = self.fc(z).reshape(z.shape[0], _TOP_CHANNELS, _TOP_SIZE, _TOP_SIZE)
        out = self.to_image(_leaky(self.blocks(h)))
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
