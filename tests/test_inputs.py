"""Bad input gets a clear error: names, shapes, batch sizes, NaNs, supports."""

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.infer import MixtureELBO
from pyro_mmvae.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    LaplaceLikelihood,
    get_likelihood,
)
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import MMVAE

torch.set_num_threads(1)


class Enc(nn.Module):
    def __init__(self, n, d=2):
        super().__init__()
        self.lin = nn.Linear(n, 2 * d)

    def forward(self, x):
        return self.lin(x.float().reshape(x.shape[0], -1)).chunk(2, -1)


class TokenDecoder(nn.Module):
    def __init__(self, d, length, vocab):
        super().__init__()
        self.lin = nn.Linear(d, length * vocab)
        self.shape = (length, vocab)

    def forward(self, z):
        return self.lin(z).reshape(-1, *self.shape)


def vae_with(likelihoods=("laplace", "bernoulli")):
    mods = [Modality(f"m{i}", (4,), lik, Enc(4), nn.Linear(2, 4))
            for i, lik in enumerate(likelihoods)]
    return MMVAE(mods, 2)


def loss(vae, data, mask=None):
    with pyro.validation_enabled(True):
        return MixtureELBO().loss(vae.model, vae.guide, data, mask)


def good_batch(n=3):
    return {"m0": torch.randn(n, 4), "m1": torch.rand(n, 4).round()}


def test_good_batch_runs():
    assert torch.isfinite(torch.tensor(loss(vae_with(), good_batch())))


def test_unknown_modality_name():
    data = good_batch()
    data["image"] = data.pop("m0")
    with pytest.raises(ValueError, match=r"unknown modality name\(s\) \['image'\]"):
        loss(vae_with(), data)


def test_unknown_name_in_mask():
    with pytest.raises(ValueError, match="unknown modality"):
        loss(vae_with(), good_batch(), {"m7": torch.ones(3, dtype=torch.bool)})


def test_mismatched_batch_sizes():
    data = good_batch()
    data["m1"] = data["m1"][:2]
    with pytest.raises(ValueError, match="different batch sizes"):
        loss(vae_with(), data)


def test_wrong_event_shape():
    data = good_batch()
    data["m0"] = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"modality 'm0': expected shape \(batch, 4\)"):
        loss(vae_with(), data)


def test_nan_values():
    data = good_batch()
    data["m0"][1, 2] = float("nan")
    with pytest.raises(ValueError, match="'m0' contains NaN"):
        loss(vae_with(), data)


def test_nan_in_a_masked_row_is_ignored():
    data = good_batch()
    data["m0"][1, 2] = float("nan")
    mask = {"m0": torch.tensor([True, False, True])}
    assert torch.isfinite(torch.tensor(loss(vae_with(), data, mask)))


def test_values_outside_bernoulli_support():
    data = good_batch()
    data["m1"][0, 0] = 2.0
    with pytest.raises(ValueError, match=r"'m1' has a Bernoulli likelihood but values outside"):
        loss(vae_with(), data)


def test_categorical_tokens_support_and_training_shape():
    mods = [Modality("img", (4,), "laplace", Enc(4), nn.Linear(2, 4)),
            Modality("text", (5,), CategoricalLikelihood(7), Enc(5), TokenDecoder(2, 5, 7))]
    vae = MMVAE(mods, 2)
    data = {"img": torch.randn(3, 4), "text": torch.randint(0, 7, (3, 5)).float()}
    assert torch.isfinite(torch.tensor(loss(vae, data)))
    data["text"][0, 0] = 7
    with pytest.raises(ValueError, match=r"integers in \[0, 7\)"):
        loss(vae, data)


def test_categorical_tokens_of_integer_dtype_but_not_bool():
    mods = [Modality("img", (4,), "laplace", Enc(4), nn.Linear(2, 4)),
            Modality("text", (5,), CategoricalLikelihood(7), Enc(5), TokenDecoder(2, 5, 7))]
    vae = MMVAE(mods, 2)
    tokens = torch.randint(0, 7, (3, 5))
    assert torch.isfinite(torch.tensor(loss(vae, {"img": torch.randn(3, 4), "text": tokens})))
    assert torch.isfinite(torch.tensor(loss(vae, {"text": tokens})))  # img filled as float
    with pytest.raises(ValueError, match=r"'text' has dtype bool.*x.long\(\)"):
        loss(vae, {"img": torch.randn(3, 4), "text": tokens > 3})


def test_mask_shape_checked():
    with pytest.raises(ValueError, match=r"mask for 'm0' must have shape \(3,\)"):
        loss(vae_with(), good_batch(), {"m0": torch.ones(4, dtype=torch.bool)})


def test_row_without_any_modality():
    mask = {"m0": torch.tensor([True, False, True]), "m1": torch.tensor([True, False, False])}
    with pytest.raises(ValueError, match="at least one present modality"):
        loss(vae_with(), good_batch(), mask)


def test_empty_batch_dict():
    with pytest.raises(ValueError, match="no modality"):
        loss(vae_with(), {})


def test_model_construction_errors():
    with pytest.raises(ValueError, match="unique"):
        MMVAE([Modality("a", (4,), "laplace", Enc(4), nn.Linear(2, 4))] * 2, 2)
    with pytest.raises(ValueError, match="identifier"):
        Modality("a.b", (4,), "laplace", Enc(4), nn.Linear(2, 4))
    with pytest.raises(ValueError, match="unknown likelihood"):
        get_likelihood("poisson")
    with pytest.raises(ValueError, match="positive"):
        LaplaceLikelihood(scale=0.0)
    with pytest.raises(ValueError, match="unknown posterior"):
        MMVAE([Modality("a", (4,), "laplace", Enc(4), nn.Linear(2, 4))], 2, posterior="cauchy")


def test_generate_rejects_unknown_names():
    vae = vae_with()
    with torch.no_grad(), pytest.raises(ValueError, match="unknown source"):
        vae.generate(good_batch(), sources=["m9"])
    with torch.no_grad(), pytest.raises(ValueError, match="unknown target"):
        vae.generate(good_batch(), sources=["m0"], targets=["x"])


def test_generate_and_sample_shapes():
    vae = vae_with()
    with torch.no_grad():
        out = vae.generate(good_batch(5), sources=["m0"])
        both = vae.generate(good_batch(5), sources=["m0", "m1"], targets=["m1"])
        samples = vae.sample(6)
    assert out["m0"].shape == out["m1"].shape == (5, 4)
    assert both["m1"].shape == (5, 4)
    assert samples["m1"].shape == (6, 4)
    # Bernoulli means are probabilities
    assert ((out["m1"] >= 0) & (out["m1"] <= 1)).all()


def test_likelihood_means():
    params = torch.randn(2, 4)
    assert torch.equal(LaplaceLikelihood().mean(params), params)
    assert torch.allclose(BernoulliLikelihood().mean(params), torch.sigmoid(params))
    assert CategoricalLikelihood(4).mean(params).shape == (2,)


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_fixed_scale_likelihoods_match_torch(family):
    import pyro.distributions as dist

    lik = get_likelihood(family, scale=0.75)
    loc, x = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    ours = lik.distribution(loc, event_dim=1).log_prob(x)
    ref_cls = dist.Laplace if family == "laplace" else dist.Normal
    ref = ref_cls(loc, torch.full_like(loc, 0.75)).to_event(1).log_prob(x)
    assert torch.allclose(ours, ref, atol=1e-5)
    torch.manual_seed(0)
    draws = lik.distribution(torch.zeros(20000), event_dim=0).rsample()
    spread = draws.abs().mean() if family == "laplace" else draws.std()
    assert float(spread) == pytest.approx(0.75, rel=0.05)


def test_unstratified_model_skips_absent_modalities():
    """log p(x_0, z) is the same whether m1 is left out (no decoder pass, no site) or given
    and masked in every row."""
    from pyro import poutine

    vae = vae_with()
    batch = good_batch(5)
    guide = poutine.trace(vae.guide).get_trace({"m0": batch["m0"]}, stratify=False)
    replayed = poutine.replay(vae.model, trace=guide)
    left_out = poutine.trace(replayed).get_trace({"m0": batch["m0"]}, stratify=False)
    masked = poutine.trace(replayed).get_trace(batch, {"m1": torch.zeros(5, dtype=torch.bool)},
                                               stratify=False)
    assert "x_m1" not in left_out.nodes and "x_m1" in masked.nodes
    assert torch.allclose(left_out.log_prob_sum(), masked.log_prob_sum())


def test_a_second_model_under_the_same_pyro_name_trains():
    """Two models of one class share Pyro names: the one that runs must be the one SVI
    steps (Pyro alone would step the first model's stored parameters instead)."""
    pyro.clear_param_store()
    batch = good_batch(8)
    for _ in range(2):
        vae = vae_with()
        before = [p.detach().clone() for p in vae.parameters()]
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.1}), MixtureELBO())
        svi.step(batch)
        assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters(), strict=True))
