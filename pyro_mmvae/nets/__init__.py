"""Neural networks: encoders x -> (loc, raw_scale), decoders z -> likelihood parameters."""

from pyro_mmvae.nets.classifier import DigitClassifier
from pyro_mmvae.nets.mlp import MLPDecoder, MLPEncoder
from pyro_mmvae.nets.polymnist import (
    PolyMNISTResNetDecoder,
    PolyMNISTResNetEncoder,
    ResidualBlock,
)

__all__ = [
    "DigitClassifier",
    "MLPDecoder",
    "MLPEncoder",
    "PolyMNISTResNetDecoder",
    "PolyMNISTResNetEncoder",
    "ResidualBlock",
]
