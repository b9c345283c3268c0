"""DMVAE (Lee & Pavlovic 2021) against a hand computation on a tiny model."""

import json
import math
import subprocess
import sys

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO
from torch import nn
from torch.nn.functional import softplus

from pyro_mmvae.data import MultimodalTensorDataset
from pyro_mmvae.infer import DMVAEELBO
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import DMVAE
from pyro_mmvae.zoo import build_model

torch.set_num_threads(1)
M, B, DZ, DW, X = 3, 4, 2, 3, 3
S = M + 1  # strata: the PoE, then one per modality
SIGMA, BETA, BETA_W, WEIGHTS = 0.5, 1.7, 0.6, (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    """x -> (loc_z, raw_z, loc_w, raw_w), four independent linear maps."""

    def __init__(self):
        super().__init__()
        self.loc_z, self.raw_z = nn.Linear(X, DZ), nn.Linear(X, DZ)
        self.loc_w, self.raw_w = nn.Linear(X, DW), nn.Linear(X, DW)

    def forward(self, x):
        return self.loc_z(x), self.raw_z(x), self.loc_w(x), self.raw_w(x)


def tiny(seed=0):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(DZ + DW, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    return DMVAE(mods, DZ, DW, private_beta=BETA_W, beta=BETA)


def make_data(seed=1):
    torch.manual_seed(seed)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1, 0] = present[2, 0] = present[0, 3] = False
    mask = {f"m{i}": present[i] for i in range(M)}
    filled = {k: torch.where(present[i, :, None], v, 0.0) for i, (k, v) in enumerate(data.items())}
    return data, mask, present, filled


def log_normal(x, loc, scale):
    z = (x - loc) / scale
    return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def encoders(vae, filled):
    out = {"loc_z": [], "scale_z": [], "loc_w": [], "scale_w": []}
    for i in range(M):
        enc, x = vae.mods[f"m{i}"].encoder, filled[f"m{i}"]
        out["loc_z"].append(enc.loc_z(x))
        out["scale_z"].append(softplus(enc.raw_z(x)) + 1e-6)
        out["loc_w"].append(enc.loc_w(x))
        out["scale_w"].append(softplus(enc.raw_w(x)) + 1e-6)
    return {k: torch.stack(v) for k, v in out.items()}


def poe(loc, scale, present):
    """Product of the present Gaussian experts and N(0, I), written out."""
    precision = 1.0 + (present.unsqueeze(-1) / scale**2).sum(0)
    mean = (present.unsqueeze(-1) * loc / scale**2).sum(0) / precision
    return mean, precision.rsqrt()


def hand_log_weights(vae, filled, present, K, seed):
    """lw[k, s, b]: s = 0 the PoE ELBO, s = 1 + m the ELBO of q_m(z|x_m); every ELBO
    reconstructs every present modality n from [z_s, w_n], w_n ~ q_n(w_n|x_n)."""
    p = encoders(vae, filled)
    pyro.set_rng_seed(seed)  # the guide's noise, in its order: z, then w_m0, w_m1, w_m2
    eps_z = torch.randn(K, S, B, DZ)
    eps_w = [torch.randn(K, S, B, DW) for _ in range(M)]
    j_loc, j_scale = poe(p["loc_z"], p["scale_z"], present)
    loc = torch.cat([j_loc[None], p["loc_z"]])
    scale = torch.cat([j_scale[None], p["scale_z"]])
    z = loc + scale * eps_z
    kl_z = log_normal(z, torch.zeros(DZ), torch.ones(DZ)) - log_normal(z, loc, scale)
    lw = BETA * kl_z
    for n in range(M):
        w = p["loc_w"][n] + p["scale_w"][n] * eps_w[n]
        mean = vae.mods[f"m{n}"].decoder(torch.cat([z, w], -1))
        lik = log_normal(filled[f"m{n}"], mean, torch.tensor(SIGMA))
        kl_w = (log_normal(w, torch.zeros(DW), torch.ones(DW))
                - log_normal(w, p["loc_w"][n], p["scale_w"][n]))
        lw = lw + present[n] * (WEIGHTS[n] * lik + BETA_W * kl_w)
    available = torch.cat([torch.ones(1, B, dtype=torch.bool), present])
    return lw, available


def reduce(lw, estimator):
    return lw.mean(0) if estimator == "elbo" else torch.logsumexp(lw, 0) - math.log(lw.size(0))


@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("elbo", 3), ("iwae", 3)])
def test_objective_and_gradients_match_hand_computation(estimator, K):
    """The loss is -(joint ELBO + sum of the present unimodal ELBOs), as MultiVae's DMVAE,
    masks included; the gradients are those of the hand computation."""
    vae, ref = tiny(), tiny()
    data, mask, present, filled = make_data()
    pyro.set_rng_seed(5)
    loss = DMVAEELBO(num_particles=K, estimator=estimator).differentiable_loss(
        vae.model, vae.guide, data, mask)
    loss.backward()
    lw, available = hand_log_weights(ref, filled, present, K, seed=5)
    expected = -(available * reduce(lw, estimator)).sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)
    ours = dict(vae.named_parameters())
    for name, param in ref.named_parameters():
        assert torch.allclose(ours[name].grad, param.grad, atol=1e-4, rtol=1e-4), name


def test_dreg_has_the_iwae_value_and_decoder_gradients():
    """DReG changes only the encoder gradients (Tucker et al. 2019)."""
    data, mask, _, _ = make_data()
    grads = {}
    for estimator in ("iwae", "dreg"):
        vae = tiny()
        pyro.set_rng_seed(7)
        loss = DMVAEELBO(num_particles=4, estimator=estimator).differentiable_loss(
            vae.model, vae.guide, data, mask)
        loss.backward()
        grads[estimator] = (loss.item(), {n: p.grad.clone() for n, p in vae.named_parameters()})
    assert grads["dreg"][0] == pytest.approx(grads["iwae"][0], rel=1e-6)
    iwae, dreg = grads["iwae"][1], grads["dreg"][1]
    for name in iwae:
        if "decoder" in name:
            assert torch.allclose(iwae[name], dreg[name], rtol=1e-4, atol=1e-3), name
    assert any(not torch.allclose(iwae[n], dreg[n]) for n in iwae if "encoder" in n)


def test_pyro_trace_elbo_gives_the_same_sum():
    """The ELBOs are summed with weight 1: plain Pyro Trace_ELBO on the same programs agrees."""
    vae = tiny()
    data, mask, _, _ = make_data()
    pyro.set_rng_seed(2)
    ours = DMVAEELBO().loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(2)
    theirs = Trace_ELBO(max_plate_nesting=2).loss(vae.model, vae.guide, data, mask)
    assert theirs == pytest.approx(ours, rel=1e-5)


def test_absent_modality_gets_no_gradient():
    vae = tiny()
    data, mask, _, _ = make_data()
    mask = {**mask, "m2": torch.zeros(B, dtype=torch.bool)}
    DMVAEELBO().differentiable_loss(vae.model, vae.guide, data, mask).backward()
    for name, p in vae.mods["m2"].named_parameters():
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name


def test_generation_uses_one_expert_or_the_poe_and_prior_private_latents():
    vae = tiny()
    data, _, _, _ = make_data()
    p = encoders(vae, data)
    with torch.no_grad():
        own = vae.generate(data, ["m0"], ["m0"])["m0"]
        assert torch.allclose(own, vae.mods["m0"].decoder(
            torch.cat([p["loc_z"][0], p["loc_w"][0]], -1)), atol=1e-6)
        experts = vae.encode_experts(data)
        two = vae.generation_latents(experts, ["m0", "m1"], ["m0", "m2"])
        loc, _ = poe(p["loc_z"][:2], p["scale_z"][:2], torch.ones(2, B, dtype=torch.bool))
        assert torch.allclose(two["m0"][:, :DZ], loc, atol=1e-6)
        assert torch.allclose(two["m2"][:, :DZ], loc, atol=1e-6)
        assert not torch.allclose(two["m2"][:, DZ:], p["loc_w"][2])  # w_2 ~ p(w_2)
        q = vae.posterior(data, ["m1"])
        assert torch.allclose(q.mean, p["loc_z"][1], atol=1e-6)


def test_predictive_and_render_model():
    vae = tiny()
    data, _, _, _ = make_data()
    samples = Predictive(vae.model, num_samples=2)(batch_size=5)
    assert samples["z"].shape == (2, 5, DZ) and samples["w_m1"].shape == (2, 5, DW)
    assert samples["x_m2"].shape == (2, 5, X)
    cond = Predictive(vae.model, guide=vae.guide, num_samples=2)({"m0": data["m0"]},
                                                                 sample_missing=True)
    assert cond["x_m1"].shape == (2, B, X) and torch.equal(cond["x_m0"][0], data["m0"])
    pytest.importorskip("graphviz")
    source = pyro.render_model(vae.model, model_args=(data,)).source
    for site in ("z", "w_m0", "x_m2", "strata", "data"):
        assert site in source


def test_zoo_builds_it_and_checks_its_settings():
    g = torch.Generator().manual_seed(0)
    ds = MultimodalTensorDataset({f"m{i}": torch.rand(6, 3, 28, 28, generator=g)
                                  for i in range(2)}, torch.randint(0, 10, (6,)), name="fake")
    spec = build_model("dmvae", ds, latent_dim=4, private_dim=3, hidden=(8,),
                       dmvae_private_beta=0.5)
    assert isinstance(spec.vae, DMVAE) and isinstance(spec.elbo, DMVAEELBO)
    assert spec.vae.private_beta == 0.5 and spec.vae.mods["m0"].decoder.latent_dim == 7
    batch, _ = next(iter(ds.batches(3)))
    assert math.isfinite(spec.elbo.loss(spec.vae.model, spec.vae.guide, batch))
    with pytest.raises(ValueError, match="dmvae_private_beta"):
        build_model("dmvae", ds, dmvae_private_beta=-1.0)
    with pytest.raises(ValueError, match="Normal"):
        build_model("dmvae", ds, posterior="laplace", hidden=(8,))


@pytest.mark.slow
def test_default_mini_run_is_above_chance(tmp_path):
    subprocess.run([sys.executable, "-m", "pyro_mmvae", "train", "--model", "dmvae",
                    "--out", str(tmp_path / "run"), "--no-progress", "--precision", "32"],
                   check=True)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["conditional_coherence"] > 0.4, summary["coherence_matrix"]
