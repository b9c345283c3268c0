"""The conditional VAE (Sohn et al. 2015) against a hand computation on a tiny model."""

import json
import math
import subprocess
import sys

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO
from torch import nn
from torch.nn.functional import leaky_relu, softplus

from pyro_mmvae.data import MultimodalTensorDataset
from pyro_mmvae.infer import CVAEELBO
from pyro_mmvae.metrics.coherence import conditional_coherence
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import CVAE
from pyro_mmvae.zoo import build_model

torch.set_num_threads(1)
B, X, F, D, H = 5, 3, 2, 2, 4
SIGMA, BETA, WEIGHT = 0.5, 1.3, 2.0


class LinearEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(X, F), nn.Linear(X, F)

    def forward(self, x):
        return self.a(x), self.b(x)


def tiny(prior="conditional", seed=0):
    torch.manual_seed(seed)
    src = Modality("s", (X,), "normal", LinearEncoder(), nn.Identity())
    tgt = Modality("t", (X,), "normal", LinearEncoder(), nn.Linear(D + 2 * F, X), weight=WEIGHT)
    tgt.likelihood.scale = SIGMA
    return CVAE(src, tgt, D, feature_dim=F, hidden=H, prior=prior, beta=BETA)


def make_data(seed=1):
    torch.manual_seed(seed)
    data = {"s": torch.randn(B, X), "t": torch.randn(B, X)}
    mask = {"s": torch.tensor([1, 1, 1, 0, 1]).bool(), "t": torch.tensor([0, 1, 1, 1, 1]).bool()}
    return data, mask


def log_normal(x, loc, scale):
    z = (x - loc) / scale
    return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def head(net, h):
    loc, raw = net(h).chunk(2, -1)
    return loc, softplus(raw) + 1e-6


def hand_log_weights(vae, data, mask, K, seed):
    """log w_k = lambda log p(x_t|z_k, x_s) + beta [log p(z_k|x_s) - log q(z_k|x_s, x_t)]."""
    rows = mask["s"] & mask["t"]
    x_s = torch.where(mask["s"][:, None], data["s"], 0.0)
    x_t = torch.where(mask["t"][:, None], data["t"], 0.0)
    enc_s, enc_t = vae.mods["s"].encoder, vae.mods["t"].encoder
    h = leaky_relu(torch.cat([enc_s.a(x_s), enc_s.b(x_s)], -1), 0.2)
    h_t = leaky_relu(torch.cat([enc_t.a(x_t), enc_t.b(x_t)], -1), 0.2)
    q_loc, q_scale = head(vae.posterior_head, torch.cat([h, h_t], -1))
    if vae.prior_head is None:
        p_loc, p_scale = torch.zeros(D), torch.ones(D)
    else:
        p_loc, p_scale = head(vae.prior_head, h)
    pyro.set_rng_seed(seed)
    z = q_loc + q_scale * torch.randn(K, B, D)
    mean = vae.mods["t"].decoder(torch.cat([z, h.expand(K, B, 2 * F)], -1))
    lw = (WEIGHT * log_normal(x_t, mean, torch.tensor(SIGMA))
          + BETA * (log_normal(z, p_loc, p_scale) - log_normal(z, q_loc, q_scale)))
    return lw, rows


@pytest.mark.parametrize("prior", ["conditional", "standard"])
@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("elbo", 3), ("iwae", 3)])
def test_objective_and_gradients_match_hand_computation(prior, estimator, K):
    """Masked rows (no source or no target) contribute nothing."""
    vae, ref = tiny(prior), tiny(prior)
    data, mask = make_data()
    pyro.set_rng_seed(5)
    loss = CVAEELBO(num_particles=K, estimator=estimator).differentiable_loss(
        vae.model, vae.guide, data, mask)
    loss.backward()
    lw, rows = hand_log_weights(ref, data, mask, K, seed=5)
    reduced = lw.mean(0) if estimator == "elbo" else torch.logsumexp(lw, 0) - math.log(K)
    expected = -(rows * reduced).sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)
    ours = dict(vae.named_parameters())
    for name, param in ref.named_parameters():
        got = ours[name].grad if ours[name].grad is not None else torch.zeros_like(param)
        want = param.grad if param.grad is not None else torch.zeros_like(param)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), name


def test_dreg_has_the_iwae_value_and_trace_elbo_agrees():
    vae = tiny()
    data, mask = make_data()
    pyro.set_rng_seed(3)
    dreg = CVAEELBO(num_particles=4, estimator="dreg").loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(3)
    iwae = CVAEELBO(num_particles=4, estimator="iwae").loss(vae.model, vae.guide, data, mask)
    assert dreg == pytest.approx(iwae, rel=1e-6)
    pyro.set_rng_seed(2)
    ours = CVAEELBO().loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(2)
    theirs = Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, data, mask)
    assert theirs == pytest.approx(ours, rel=1e-5)


def test_generation_only_from_source_to_target():
    vae = tiny()
    data, _ = make_data()
    with torch.no_grad():
        out = vae.generate(data, ["s"])
        experts = vae.encode_experts(data)
        h = experts["h"]
        loc, _ = head(vae.prior_head, h)
        assert torch.allclose(out["t"], vae.mods["t"].decoder(torch.cat([loc, h], -1)))
        assert vae.reconstruct(data)["t"].shape == (B, X)
    with pytest.raises(ValueError, match="generates only 't' from 's'"):
        vae.generate(data, ["t"], ["s"])
    with pytest.raises(NotImplementedError):
        vae.sample(2)
    assert vae.generation_pairs == ((("s",), "t"),)


def test_predictive_and_render_model():
    vae = tiny()
    data, _ = make_data()
    samples = Predictive(vae.model, guide=vae.guide, num_samples=3)({"s": data["s"]},
                                                                    sample_missing=True)
    assert samples["x_t"].shape == (3, B, X) and samples["z"].shape == (3, B, D)
    with pytest.raises(ValueError, match="source modality 's'"):
        vae.model(batch_size=3)
    pytest.importorskip("graphviz")
    source = pyro.render_model(vae.model, model_args=(data,)).source
    for site in ("z", "x_t", "data"):
        assert site in source


class LabelClassifiers:
    """Reads the label off pixel 0 of a generated image (a perfect judge)."""

    names = ("a", "b", "c")
    device = torch.device("cpu")
    test_accuracy = {"a": 1.0, "b": 1.0, "c": 1.0}

    def predict(self, name, images):
        return images.flatten(1)[:, 0].round().long()


class PairOnlyVAE:
    """Generates b from a (perfectly) and refuses every other pair, like the CVAE."""

    names = ("a", "b", "c")
    generation_pairs = ((("a",), "b"),)

    def generate(self, data, sources, targets=None):
        if list(sources) != ["a"] or list(targets) != ["b"]:
            raise ValueError(f"cannot generate {targets} from {sources}")
        return {"b": data["a"].clone()}


def test_coherence_measures_only_the_pairs_a_model_defines():
    labels = torch.arange(8) % 10
    images = labels.float().view(-1, 1).expand(8, 4).clone()
    ds = MultimodalTensorDataset({m: images.clone() for m in "abc"}, labels, name="fake")
    result = conditional_coherence(PairOnlyVAE(), ds, LabelClassifiers(), subset_sizes=(1, 2))
    assert result["by_subset"] == {"a": {"b": 1.0}}
    assert result["mean_single_source"] == 1.0 and result["single_source_matrix"] == {
        "a": {"b": 1.0}}


def fake_dataset(n=6, seed=0, modalities=3):
    g = torch.Generator().manual_seed(seed)
    return MultimodalTensorDataset({f"m{i}": torch.rand(n, 3, 28, 28, generator=g)
                                    for i in range(modalities)},
                                   torch.randint(0, 10, (n,), generator=g), name="fake")


def test_zoo_builds_it_from_the_settings():
    ds = fake_dataset()
    spec = build_model("cvae", ds, latent_dim=4, hidden=(8,), joint_features=3)
    assert isinstance(spec.vae, CVAE) and isinstance(spec.elbo, CVAEELBO)
    assert (spec.vae.source, spec.vae.target, spec.vae.prior_kind) == ("m0", "m1", "conditional")
    batch, _ = next(iter(ds.batches(3)))  # every modality: the others are ignored
    assert math.isfinite(spec.elbo.loss(spec.vae.model, spec.vae.guide, batch))
    other = build_model("cvae", ds, latent_dim=4, hidden=(8,), cvae_source="m2",
                        cvae_target="m0", cvae_prior="standard").vae
    assert (other.source, other.target, other.prior_head) == ("m2", "m0", None)
    with pytest.raises(ValueError, match="cvae_source"):
        build_model("cvae", ds, cvae_source="m9")
    with pytest.raises(ValueError, match="cvae_target"):
        build_model("cvae", ds, cvae_source="m1", cvae_target="m1")
    with pytest.raises(ValueError, match="cvae_prior"):
        build_model("cvae", ds, cvae_prior="flat")
    with pytest.raises(ValueError, match="cvae_source must be a string"):
        build_model("cvae", ds, cvae_source=3)


@pytest.mark.slow
def test_default_mini_run_is_above_chance(tmp_path):
    subprocess.run([sys.executable, "-m", "pyro_mmvae", "train", "--model", "cvae",
                    "--out", str(tmp_path / "run"), "--no-progress", "--precision", "32"],
                   check=True)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["conditional_coherence"] > 0.5, summary["coherence_matrix"]
