"""Shared pieces of tests/test_mhvae.py and tests/test_nexus.py: a tiny hierarchical model,
its data, Normal log-densities written out, and the draws a guide trace made."""

from __future__ import annotations

import math

import pyro
import torch
from torch import nn

from pyro_mmvae.data import polymnist_mini
from pyro_mmvae.modality import Modality

M, B, X, DM, D = 3, 4, 3, 2, 3
SIGMA, BETA, TOP_BETA, WEIGHTS = 0.5, 1.7, 0.6, (1.0, 2.0, 0.5)
SMALL = {"hidden": (32,), "latent_dim": 4, "hier_modality_dim": 3}


class LinearEncoder(nn.Module):
    """x -> (loc, raw), two independent linear maps."""

    def __init__(self):
        super().__init__()
        self.loc, self.raw = nn.Linear(X, DM), nn.Linear(X, DM)

    def forward(self, x):
        return self.loc(x), self.raw(x)


def tiny(cls, seed=0, **kwargs):
    """A 3-modality model of ``cls`` on vectors of size 3, Normal likelihoods (scale 0.5),
    weights 1, 2, 0.5."""
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(DM, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    kwargs.setdefault("top_hidden", (5,))
    return cls(mods, D, DM, beta=BETA, top_beta=TOP_BETA, **kwargs)


def make_data(seed=1):
    """Data, the presence masks and their ``(M, B)`` table: row 0 lacks m1 and m2, row 3
    lacks m0."""
    torch.manual_seed(seed)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1, 0] = present[2, 0] = present[0, 3] = False
    mask = {f"m{i}": present[i] for i in range(M)}
    return data, mask, present


def normal_log_prob(x, loc, scale):
    """:math:`\\sum_d \\log \\mathcal{N}(x_d; \\mu_d, \\sigma_d)`, written out."""
    return (-0.5 * ((x - loc) / scale) ** 2 - torch.log(scale)
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def draws(elbo, vae, args, kwargs, seed):
    """The standard-normal noise behind every latent of the guide trace drawn with ``seed``:
    site name -> eps ``(K, 1, B, D)``."""
    pyro.set_rng_seed(seed)
    _, guide_trace = elbo.get_traces(vae.model, vae.guide, args, kwargs)
    out = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and name.startswith("z"):
            base = site["fn"].base_dist
            out[name] = ((site["value"] - base.loc) / base.scale).detach()
    return out


def grads(vae):
    return {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def mini_data():
    data = polymnist_mini("train")
    return data.subset(torch.arange(64)), polymnist_mini("test").subset(torch.arange(16))
