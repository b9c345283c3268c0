"""MMVAE+ with separate encoders for the shared and the private latent (``private_encoder``)."""

from __future__ import annotations

import pytest
import torch

from pyro_mmvae.nets.mlp import PairedEncoder
from pyro_mmvae.zoo import build_model


@pytest.fixture(scope="module")
def mini():
    from pyro_mmvae.data import polymnist_mini

    return polymnist_mini("train").subset(torch.arange(16))


@pytest.mark.parametrize("model", ["mmvae_plus", "mmvae_private"])
def test_separate_encoders_share_no_layer_and_train(mini, model):
    settings = {"hidden": (16,), "latent_dim": 3, "private_dim": 2}
    shared = build_model(model, mini, **settings)
    separate = build_model(model, mini, private_encoder="separate", **settings)
    encoder = separate.vae.mods[mini.modalities[0]].encoder
    assert isinstance(encoder, PairedEncoder)
    assert not isinstance(shared.vae.mods[mini.modalities[0]].encoder, PairedEncoder)
    assert {id(p) for p in encoder.shared.parameters()}.isdisjoint(
        id(p) for p in encoder.private.parameters())
    batch = next(iter(mini.batches(8)))[0]
    x = batch[mini.modalities[0]]
    loc_z, raw_z, loc_w, raw_w = encoder(x)
    assert loc_z.shape == raw_z.shape == (8, 3) and loc_w.shape == raw_w.shape == (8, 2)
    loss = separate.elbo.differentiable_loss(separate.vae.model, separate.vae.guide, batch)
    loss.backward()
    assert torch.isfinite(loss)
    # z's encoder gets gradient from the z terms, w's from the w terms: both train
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.shared.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in encoder.private.parameters())


def test_unknown_private_encoder_is_refused(mini):
    with pytest.raises(ValueError, match="private_encoder"):
        build_model("mmvae_plus", mini, private_encoder="twin")
