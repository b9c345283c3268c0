"""Neural networks: encoders x -> (loc, raw_scale), decoders z -> likelihood parameters."""

from pyro_mmvae.nets.classifier import DigitClassifier
from pyro_mmvae.nets.conv import PolyMNISTConvDecoder, PolyMNISTConvEncoder
from pyro_mmvae.nets.joint import EncoderFeatures, JointEncoder
from pyro_mmvae.nets.mlp import MLPDecoder, MLPEncoder, PairedEncoder
from pyro_mmvae.nets.polymnist import (
    PolyMNISTResNetDecoder,
    PolyMNISTResNetEncoder,
    ResidualBlock,
)
from pyro_mmvae.nets.text import TextClassifier, TextDecoder, TextEncoder

__all__ = [
    "DigitClassifier",
    "EncoderFeatures",
    "JointEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "PairedEncoder",
    "PolyMNISTConvDecoder",
    "PolyMNISTConvEncoder",
    "PolyMNISTResNetDecoder",
    "PolyMNISTResNetEncoder",
    "ResidualBlock",
    "TextClassifier",
    "TextDecoder",
    "TextEncoder",
]
