"""MVAE and MoPoE objectives against direct hand computations on a tiny linear model."""

import itertools
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.infer import MoPoEELBO, SubsampledELBO
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import MVAE, MoPoE

torch.set_num_threads(1)
M, B, D, X = 3, 4, 2, 3
SIGMA, BETA, WEIGHTS = 0.5, 1.3, (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc, self.raw = nn.Linear(X, D), nn.Linear(X, D)

    def forward(self, x):
        return self.loc(x), self.raw(x)


def modalities(seed=0):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(D, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    return mods


def log_normal(x, loc, scale):
    z = (x - loc) / scale
    return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def batch():
    torch.manual_seed(1)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1, 0] = present[2, 0] = present[0, 3] = False
    return data, {f"m{i}": present[i] for i in range(M)}, present


def experts(vae, data, present):
    locs, scales = [], []
    for i in range(M):
        x = torch.where(present[i, :, None], data[f"m{i}"], 0.0)
        enc = vae.mods[f"m{i}"].encoder
        locs.append(enc.loc(x))
        scales.append(torch.nn.functional.softplus(enc.raw(x)) + 1e-6)
    return locs, scales


def poe(locs, scales, members, prior):
    precision = sum(scales[e] ** -2 for e in members) + (1.0 if prior else 0.0)
    mean = sum(scales[e] ** -2 * locs[e] for e in members) / precision
    return mean, precision.rsqrt()


def stratum_log_weight(vae, data, present, loc, scale, eps, reconstruct, b):
    z = loc + scale * eps
    lw = BETA * (log_normal(z, torch.zeros(D), torch.ones(D)) - log_normal(z, loc, scale))
    for n in reconstruct:
        if present[n, b]:
            mean = vae.mods[f"m{n}"].decoder(z)
            lw = lw + WEIGHTS[n] * log_normal(data[f"m{n}"][b], mean, torch.tensor(SIGMA))
    return lw


def test_mvae_subsampled_objective_matches_hand_computation():
    vae = MVAE(modalities(), D, beta=BETA)
    data, mask, present = batch()
    subsets = torch.tensor([[True, True, False]])
    strata = [(0, 1, 2), (0,), (1,), (2,), (0, 1)]
    elbo = SubsampledELBO(M, num_subsets=1)
    pyro.set_rng_seed(3)
    loss = elbo.loss(vae.model, vae.guide, data, mask, subsets=subsets)
    pyro.set_rng_seed(3)
    eps = torch.randn(1, len(strata), B, D)[0]
    locs, scales = experts(vae, data, present)
    total = 0.0
    for b in range(B):
        for s, subset in enumerate(strata):
            members = [e for e in subset if present[e, b]]
            if not members:
                continue  # a subset ELBO of absent modalities does not exist
            loc, scale = poe([v[b] for v in locs], [v[b] for v in scales], members, prior=True)
            total = total + stratum_log_weight(vae, data, present, loc, scale, eps[s, b],
                                               subset, b)
    assert loss == pytest.approx(-total.item(), rel=1e-5)


def test_mvae_draws_random_subsets_of_size_two_to_m_minus_one():
    elbo = SubsampledELBO(4, num_subsets=50)
    subsets = elbo.draw_subsets()
    sizes = subsets.sum(1)
    assert subsets.shape == (50, 4) and (sizes >= 2).all() and (sizes <= 3).all()
    assert SubsampledELBO(2, num_subsets=3).draw_subsets() is None


@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("iwae", 3)])
def test_mopoe_objective_matches_hand_computation(estimator, K):
    vae = MoPoE(modalities(), D, beta=BETA, sampling="stratified")
    data, mask, present = batch()
    subsets = [s for k in range(1, M + 1) for s in itertools.combinations(range(M), k)]
    elbo = MoPoEELBO(num_particles=K, estimator=estimator)
    pyro.set_rng_seed(4)
    loss = elbo.loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(4)
    eps = torch.randn(K, len(subsets), B, D)
    locs, scales = experts(vae, data, present)
    total = 0.0
    for b in range(B):
        available = [j for j, s in enumerate(subsets) if all(present[e, b] for e in s)]
        for j in available:
            loc, scale = poe([v[b] for v in locs], [v[b] for v in scales], subsets[j], False)
            lw = torch.stack([stratum_log_weight(vae, data, present, loc, scale, eps[k, j, b],
                                                 range(M), b) for k in range(K)])
            est = lw.mean() if estimator == "elbo" else torch.logsumexp(lw, 0) - math.log(K)
            total = total + est / len(available)
    assert loss == pytest.approx(-total.item(), rel=1e-5)


def test_mopoe_single_subset_sampling_trains():
    vae = MoPoE(modalities(), D, sampling="single")
    data, mask, _ = batch()
    elbo = MoPoEELBO()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    pyro.set_rng_seed(0)
    first = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(30)) / 30
    for _ in range(150):
        svi.step(data, mask)
    last = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(30)) / 30
    assert last < first - 5


def test_poe_generation_uses_only_the_sources():
    vae = MVAE(modalities(), D)
    data, _, _ = batch()
    with torch.no_grad():
        a = vae.generate(data, ["m0"], ["m1"])["m1"]
        changed = dict(data, m2=data["m2"] + 100)
        b = vae.generate(changed, ["m0"], ["m1"])["m1"]
    assert torch.equal(a, b)


def test_kl_warmup_anneals_beta():
    vae = MVAE(modalities(), D, beta=2.0, kl_warmup_epochs=4)
    betas = []
    for epoch in range(6):
        vae.start_epoch(epoch)
        betas.append(vae.current_beta)
    assert betas == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
