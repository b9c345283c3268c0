"""MMVAE's stratified objective against a direct hand computation on a tiny linear model."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_mmvae.infer import MixtureELBO
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import MMVAE

torch.set_num_threads(1)
M, B, D, X = 3, 4, 2, 3
SIGMA = 0.5
BETA = 1.7
WEIGHTS = (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(X, D)
        self.raw = nn.Linear(X, D)

    def forward(self, x):
        return self.loc(x), self.raw(x)


def tiny_mmvae(seed=0):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(D, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    # the likelihood scale is fixed at SIGMA
    for m in mods:
        m.likelihood.scale = SIGMA
    return MMVAE(mods, D, beta=BETA)


def log_normal(x, loc, scale):
    z = (x - loc) / scale
    return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_log_weights(vae, data, present, eps, detach_q=False):
    """lw[k, m, b] for stratum m, written out with explicit formulas."""
    locs, scales = [], []
    for i in range(M):
        enc = vae.mods[f"m{i}"].encoder
        locs.append(enc.loc(data[f"m{i}"]))
        scales.append(torch.nn.functional.softplus(enc.raw(data[f"m{i}"])) + 1e-6)
    loc, scale = torch.stack(locs), torch.stack(scales)  # (M, B, D)
    z = loc + scale * eps  # (K, M, B, D): stratum m drawn from expert m
    q_loc, q_scale = (loc.detach(), scale.detach()) if detach_q else (loc, scale)
    comp = log_normal(z.unsqueeze(2), q_loc, q_scale)  # (K, M, E, B)
    log_mix_w = torch.where(present, -present.sum(0).float().log(), -math.inf)  # (E, B)
    log_q = torch.logsumexp(comp + log_mix_w, dim=2)
    log_prior = log_normal(z, torch.zeros(D), torch.ones(D))
    log_lik = 0
    for n in range(M):
        dec = vae.mods[f"m{n}"].decoder
        ll = log_normal(data[f"m{n}"], dec(z), torch.tensor(SIGMA))
        log_lik = log_lik + WEIGHTS[n] * present[n] * ll
    return log_lik + BETA * (log_prior - log_q), z


def make_data(seed=1):
    torch.manual_seed(seed)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1, 0] = present[2, 0] = present[0, 3] = False
    mask = {f"m{i}": present[i] for i in range(M)}
    return data, mask, present


def stratified(values, present):
    w = present.float() / present.float().sum(0)
    return (w * values).sum()


@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("elbo", 3), ("iwae", 3), ("dreg", 3)])
def test_objective_matches_hand_computation(estimator, K):
    vae = tiny_mmvae()
    data, mask, present = make_data()
    data_filled = {k: torch.where(present[i, :, None], v, 0.0)
                   for i, (k, v) in enumerate(data.items())}
    elbo = MixtureELBO(num_particles=K, estimator=estimator)
    pyro.set_rng_seed(5)
    loss = elbo.loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(5)
    eps = torch.randn(K, M, B, D)
    lw, _ = hand_log_weights(vae, data_filled, present, eps)
    if estimator == "elbo":
        per_stratum = lw.mean(0)
    else:
        per_stratum = torch.logsumexp(lw, 0) - math.log(K)
    expected = -stratified(per_stratum, present)
    assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)


def test_differentiable_loss_equals_loss_and_is_sum_over_batch():
    vae = tiny_mmvae()
    data, mask, _ = make_data()
    elbo = MixtureELBO(num_particles=2, estimator="iwae")
    pyro.set_rng_seed(0)
    a = elbo.loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(0)
    b = elbo.differentiable_loss(vae.model, vae.guide, data, mask)
    assert a == pytest.approx(b.item(), rel=1e-6)


def test_dreg_gradients_match_reference():
    K = 4
    data, mask, present = make_data()
    data_filled = {k: torch.where(present[i, :, None], v, 0.0)
                   for i, (k, v) in enumerate(data.items())}
    vae = tiny_mmvae()
    pyro.set_rng_seed(11)
    loss = MixtureELBO(num_particles=K, estimator="dreg").differentiable_loss(
        vae.model, vae.guide, data, mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters()}

    ref = tiny_mmvae()
    pyro.set_rng_seed(11)
    eps = torch.randn(K, M, B, D)
    lw, _ = hand_log_weights(ref, data_filled, present, eps, detach_q=True)
    w_tilde = torch.softmax(lw.detach(), 0)
    enc = [p for n, p in ref.named_parameters() if "encoder" in n]
    dec = [p for n, p in ref.named_parameters() if "decoder" in n]
    # Tucker et al. 2019: encoder grad = sum_k w~^2 dlw/dz dz/dphi (q's parameters held fixed);
    # decoder grad = the IWAE one, sum_k w~ dlw/dtheta.
    enc_grad = torch.autograd.grad(-stratified((w_tilde**2 * lw).sum(0), present), enc,
                                   retain_graph=True)
    dec_grad = torch.autograd.grad(-stratified((w_tilde * lw).sum(0), present), dec)
    for (name, _p), g in zip([(n, p) for n, p in ref.named_parameters() if "encoder" in n],
                            enc_grad, strict=True):
        assert torch.allclose(grads[name], g, atol=1e-5), name
    for (name, _p), g in zip([(n, p) for n, p in ref.named_parameters() if "decoder" in n],
                            dec_grad, strict=True):
        assert torch.allclose(grads[name], g, atol=1e-5), name
    # value of the DReG loss is the IWAE loss
    pyro.set_rng_seed(11)
    iwae = MixtureELBO(num_particles=K, estimator="iwae").loss(vae.model, vae.guide, data, mask)
    assert float(loss.detach()) == pytest.approx(iwae, rel=1e-5)


def test_dreg_differs_from_iwae_gradient():
    data, mask, _ = make_data()
    grads = []
    for est in ("iwae", "dreg"):
        vae = tiny_mmvae()
        pyro.set_rng_seed(3)
        MixtureELBO(num_particles=4, estimator=est).differentiable_loss(
            vae.model, vae.guide, data, mask).backward()
        grads.append(vae.mods["m0"].encoder.loc.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_pyro_trace_elbo_agrees_with_the_stratified_elbo():
    """Plain Trace_ELBO on the same model/guide sums the strata: M x the MMVAE ELBO."""
    vae = tiny_mmvae()
    data, _, _ = make_data()
    pyro.set_rng_seed(2)
    ours = MixtureELBO().loss(vae.model, vae.guide, data)
    pyro.set_rng_seed(2)
    with pyro.validation_enabled(True):
        theirs = Trace_ELBO(max_plate_nesting=2).loss(vae.model, vae.guide, data)
    assert theirs == pytest.approx(M * ours, rel=1e-5)


def test_absent_modality_does_not_touch_its_networks():
    vae = tiny_mmvae()
    data, _, _ = make_data()
    data = {"m0": data["m0"], "m1": data["m1"]}  # m2 absent for every row
    MixtureELBO().differentiable_loss(vae.model, vae.guide, data).backward()
    for p in vae.mods["m2"].parameters():
        assert p.grad is None or not p.grad.any()
    assert vae.mods["m0"].encoder.loc.weight.grad.abs().sum() > 0


def test_training_reduces_loss_with_missing_modalities():
    vae = tiny_mmvae()
    data, mask, _ = make_data()
    elbo = MixtureELBO(num_particles=2, estimator="dreg")
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    first = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(20)) / 20
    for _ in range(200):
        svi.step(data, mask)
    last = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(20)) / 20
    assert last < first - 5
