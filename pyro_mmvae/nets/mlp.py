"""Fully connected encoders and decoders for any fixed-shape modality.

Also home of the small input-shape checks the other networks share, so that a wrong
input gives a sentence naming the problem instead of a matmul traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

OUTPUT_ACTIVATIONS = (None, "sigmoid")


def check_trailing_shape(x: Tensor, expected: Sequence[int], net: str) -> None:
    """Raise ValueError unless ``x`` has shape ``(B, *expected)``.

    Args:
        x: the network's input (anything; a non-tensor is refused too).
        expected: the event shape the network was built for, without the batch dimension.
        net: the network's name, for the error message.
    """
    expected = tuple(int(s) for s in expected)
    if not isinstance(x, Tensor):
        raise ValueError(f"{net} expects a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        dims = ", ".join(map(str, expected))
        raise ValueError(
            f"{net} expects input of shape (batch, {dims}), got {tuple(x.shape)}; "
            "flatten extra leading dims into the batch dim and check that the network "
            "was built for this modality's event shape."
        )


def check_latent_shape(z: Tensor, latent_dim: int, net: str) -> None:
    """Raise ValueError unless ``z`` has shape (N, latent_dim).

    Args:
        z: the decoder's input (anything; a non-tensor is refused too).
        latent_dim: the latent size D the decoder was built for.
        net: the decoder's name, for the error message.
    """
    if not isinstance(z, Tensor):
        raise ValueError(f"{net} expects a torch.Tensor, got {type(z).__name__}.")
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(
            f"{net} expects latents of shape (N, {latent_dim}), got {tuple(z.shape)}; "
            "flatten particle/expert dims into N before calling the decoder."
        )


def _check_positive_dims(values: Sequence[int], what: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive integers, got {values}.")
    return values


def _mlp_trunk(
    in_features: int, hidden: Sequence[int], activation: type[nn.Module]
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``x (B, *in_shape) -> (loc (B, D), raw_scale (B, D))``.

    The input is standardised as ``(x - input_offset) / input_scale``, flattened, passed
    through ``Linear -> activation`` layers of widths ``hidden`` and then two linear heads.
    ``raw_scale`` is unconstrained: the model maps it to a positive scale (softplus or the
    MMVAE+ softmax parameterisation).

    Centre inputs that are not centred (images in [0, 1]: offset 0.5, scale 0.5): with a
    constant-ish input the first layer's outputs barely differ between data points, the
    latent noise swamps the signal and the VAE collapses onto its prior before it learns to
    use z (observed on PolyMNIST-style images).

    Args:
        in_shape: the shape of one data point (event shape, without the batch dimension).
        latent_dim: D, the size of ``loc`` and ``raw_scale``.
        hidden: widths of the hidden layers (default ``(400, 400)``; empty: linear heads
            on the flattened input).
        activation: the ``nn.Module`` class applied after each hidden layer (default
            ``nn.ReLU``).
        input_offset: subtracted from the input first (0.5 for images in [0, 1]).
        input_scale: the centred input is divided by it; positive (0.5 for images).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (400, 400),
        activation: type[nn.Module] = nn.ReLU,
        input_offset: float = 0.0,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.input_offset, self.input_scale = float(input_offset), float(input_scale)
        self.in_shape = _check_positive_dims(in_shape, "in_shape")
        (self.latent_dim,) = _check_positive_dims([latent_dim], "latent_dim")
        hidden = _check_positive_dims(hidden, "hidden widths")
        self.trunk = _mlp_trunk(math.prod(self.in_shape), hidden, activation)
        width = hidden[-1] if hidden else math.prod(self.in_shape)
        self.loc = nn.Linear(width, self.latent_dim)
        self.raw_scale = nn.Linear(width, self.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, raw_scale)``, each ``(B, latent_dim)``.

        Args:
            x: float data points ``(B, *in_shape)``.
        """
        check_trailing_shape(x, self.in_shape, type(self).__name__)
        x = (x.reshape(x.shape[0], -1) - self.input_offset) / self.input_scale
        h = self.trunk(x)
        return self.loc(h), self.raw_scale(h)


class PairedEncoder(nn.Module):
    """Two encoders of one modality side by side: ``x -> (loc_z, raw_z, loc_w, raw_w)``.

    The shared latent z and the private latent w get encoders with no layer in common, as in
    the official MMVAE+ code (Palumbo et al. 2023), instead of one trunk with two heads.

    Args:
        shared: the encoder of z, ``x -> (loc (B, Dz), raw_scale (B, Dz))``.
        private: the encoder of w, ``x -> (loc (B, Dw), raw_scale (B, Dw))``.
    """

    def __init__(self, shared: nn.Module, private: nn.Module) -> None:
        super().__init__()
        self.shared, self.private = shared, private

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(loc_z, raw_z, loc_w, raw_w)`` of a batch.

        Args:
            x: one modality's batch ``(B, *in_shape)``.
        """
        return (*self.shared(x), *self.private(x))


class MLPDecoder(nn.Module):
    """``z (N, D) -> (N, *out_shape)``: the likelihood's location parameter per element.

    ``Linear -> ReLU`` layers of widths ``hidden`` then a linear layer to
    ``prod(out_shape)`` values, reshaped. ``output_activation="sigmoid"`` squashes to
    (0, 1) (e.g. for Bernoulli probabilities or bounded means); ``None`` leaves it raw.

    Args:
        latent_dim: D, the size of the latent code decoded (for MMVAE+: shared plus private).
        out_shape: the shape of one output data point (the modality's event shape).
        hidden: widths of the hidden layers (default ``(400, 400)``; empty: one linear
            layer).
        output_activation: None (default, raw output) or ``"sigmoid"``.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (400, 400),
        output_activation: str | None = None,
    ) -> None:
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}."
            )
        (self.latent_dim,) = _check_positive_dims([latent_dim], "latent_dim")
        self.out_shape = _check_positive_dims(out_shape, "out_shape")
        hidden = _check_positive_dims(hidden, "hidden widths")
        self.trunk = _mlp_trunk(self.latent_dim, hidden, nn.ReLU)
        width = hidden[-1] if hidden else self.latent_dim
        self.head = nn.Linear(width, math.prod(self.out_shape))
        self.output_activation = output_activation

    def forward(self, z: Tensor) -> Tensor:
        """The likelihood's location ``(N, *out_shape)``.

        Args:
            z: latent codes ``(N, latent_dim)`` (particle and batch dims flattened into N).
        """
        check_latent_shape(z, self.latent_dim, type(self).__name__)
        out = self.head(self.trunk(z)).reshape(z.shape[0], *self.out_shape)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
