"""Shapes, input checks and trainability of the networks in pyro_mmvae.nets."""

import pytest
import torch
from torch import nn

from pyro_mmvae.nets import (
    DigitClassifier,
    MLPDecoder,
    MLPEncoder,
    PolyMNISTConvDecoder,
    PolyMNISTConvEncoder,
    PolyMNISTResNetDecoder,
    PolyMNISTResNetEncoder,
)

torch.set_num_threads(1)

IMAGE = (3, 28, 28)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("in_shape", [(10,), IMAGE])
def test_mlp_encoder_shapes(batch, in_shape):
    enc = MLPEncoder(in_shape, latent_dim=6, hidden=(32, 16))
    loc, raw_scale = enc(torch.rand(batch, *in_shape))
    assert loc.shape == (batch, 6) and raw_scale.shape == (batch, 6)


@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_decoder_shapes_and_sigmoid(batch):
    z = 10 * torch.randn(batch, 6)
    raw = MLPDecoder(6, IMAGE, hidden=(32,))(z)
    squashed = MLPDecoder(6, IMAGE, hidden=(32,), output_activation="sigmoid")(z)
    assert raw.shape == squashed.shape == (batch, *IMAGE)
    assert squashed.min() >= 0 and squashed.max() <= 1


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="output_activation"):
        MLPDecoder(4, (3,), output_activation="tanh")
    with pytest.raises(ValueError, match="positive"):
        MLPEncoder((3, 0), 4)


@pytest.mark.parametrize("batch", [1, 5])
def test_resnet_encoder_shapes(batch):
    x = torch.rand(batch, *IMAGE)
    shared_only = PolyMNISTResNetEncoder(latent_dim=8)(x)
    assert [t.shape for t in shared_only] == [(batch, 8)] * 2
    with_private = PolyMNISTResNetEncoder(latent_dim=8, private_dim=4)(x)
    assert [t.shape for t in with_private] == [(batch, 8), (batch, 8), (batch, 4), (batch, 4)]


def test_resnet_encoder_private_head_is_trained():
    enc = PolyMNISTResNetEncoder(latent_dim=3, private_dim=2)
    sum(t.sum() for t in enc(torch.rand(2, *IMAGE))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("batch", [1, 5])
def test_resnet_decoder_shapes(batch):
    dec = PolyMNISTResNetDecoder(latent_dim=12)
    assert dec(torch.randn(batch, 12)).shape == (batch, *IMAGE)
    squashed = PolyMNISTResNetDecoder(12, output_activation="sigmoid")(10 * torch.randn(batch, 12))
    assert squashed.min() >= 0 and squashed.max() <= 1


@pytest.mark.parametrize("batch", [1, 5])
def test_conv_networks_shapes_private_tower_and_sigmoid(batch):
    x = torch.rand(batch, *IMAGE)
    assert [t.shape for t in PolyMNISTConvEncoder(8)(x)] == [(batch, 8)] * 2
    with_private = PolyMNISTConvEncoder(8, private_dim=4)(x)
    assert [t.shape for t in with_private] == [(batch, 8), (batch, 8), (batch, 4), (batch, 4)]
    out = PolyMNISTConvDecoder(12, output_activation="sigmoid")(10 * torch.randn(batch, 12))
    assert out.shape == (batch, *IMAGE) and out.min() >= 0 and out.max() <= 1
    raw = PolyMNISTConvDecoder(12)(10 * torch.randn(batch, 12))
    assert raw.shape == (batch, *IMAGE)


def test_conv_networks_are_much_cheaper_than_the_resnets():
    """FLOPs of one forward pass (torch's counter): the conv nets are >10x cheaper."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(net, x):
        with FlopCounterMode(display=False) as counter:
            net(x)
        return counter.get_total_flops()

    z, x = torch.randn(1, 32), torch.rand(1, *IMAGE)
    assert flops(PolyMNISTConvDecoder(32), z) * 10 < flops(PolyMNISTResNetDecoder(32), z)
    assert flops(PolyMNISTConvEncoder(32), x) * 10 < flops(PolyMNISTResNetEncoder(32), x)


def test_conv_networks_reject_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        PolyMNISTConvEncoder(4, channels=(8, 8))
    with pytest.raises(ValueError, match="latent_dim"):
        PolyMNISTConvDecoder(0)
    with pytest.raises(ValueError, match="output_activation"):
        PolyMNISTConvDecoder(4, output_activation="tanh")


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("in_shape", [IMAGE, (1, 28, 28)])
def test_classifier_shapes(batch, in_shape):
    logits = DigitClassifier(in_shape, num_classes=10)(torch.rand(batch, *in_shape))
    assert logits.shape == (batch, 10)


@pytest.mark.parametrize(
    "net, bad_input",
    [
        (MLPEncoder((3, 28, 28), 4, hidden=(8,)), torch.rand(5, 3, 32, 32)),
        (MLPEncoder((10,), 4, hidden=(8,)), torch.rand(10)),
        (PolyMNISTResNetEncoder(4), torch.rand(5, 28, 28)),
        (PolyMNISTResNetEncoder(4), torch.rand(2, 5, 3, 28, 28)),
        (DigitClassifier(), torch.rand(5, 1, 28, 28)),
        (MLPDecoder(4, (3,), hidden=(8,)), torch.randn(5, 7)),
        (PolyMNISTResNetDecoder(4), torch.randn(2, 5, 4)),
        (PolyMNISTResNetDecoder(4), torch.randn(5, 3)),
        (PolyMNISTConvEncoder(4), torch.rand(5, 1, 28, 28)),
        (PolyMNISTConvDecoder(4), torch.randn(5, 3)),
    ],
)
def test_wrong_input_shape_raises_value_error(net, bad_input):
    with pytest.raises(ValueError, match="expects"):
        net(bad_input)


def _block_images(n: int) -> torch.Tensor:
    """Coloured squares at different places: a small structured image batch."""
    x = torch.full((n, *IMAGE), 0.1)
    for i in range(n):
        r, c = 4 + 5 * (i % 4), 4 + 5 * ((i // 4) % 4)
        x[i, i % 3, r : r + 8, c : c + 8] = 1.0
    return x


@pytest.mark.parametrize("family, steps", [("resnet", 30), ("conv", 150)])
def test_image_autoencoder_learns(family, steps):
    torch.manual_seed(0)
    if family == "resnet":
        enc, dec = PolyMNISTResNetEncoder(latent_dim=8), PolyMNISTResNetDecoder(latent_dim=8)
    else:
        enc, dec = PolyMNISTConvEncoder(latent_dim=8), PolyMNISTConvDecoder(latent_dim=8)
    params = [*enc.parameters(), *dec.parameters()]
    optim = torch.optim.Adam(params, lr=1e-3)
    x = _block_images(4)
    mean_image_loss = nn.functional.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(dec(enc(x)[0]), x)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    # below the best constant image: the code carries information about each input
    assert losses[-1] < 0.7 * mean_image_loss, (losses, mean_image_loss)
