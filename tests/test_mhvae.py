"""MHVAE (hierarchical latents, top-level PoE, modality dropout) against hand computations."""

import json
import subprocess
import sys

import pyro
import pytest
import torch
from _hierarchical import (
    BETA,
    DM,
    SIGMA,
    SMALL,
    TOP_BETA,
    WEIGHTS,
    B,
    M,
    draws,
    grads,
    make_data,
    mini_data,
    normal_log_prob,
    tiny,
)
from pyro.infer import Predictive

from pyro_mmvae.cli import build_parser
from pyro_mmvae.infer import MHVAEELBO
from pyro_mmvae.infer.base import logmeanexp
from pyro_mmvae.models import MHVAE
from pyro_mmvae.models.hierarchical import draw_kept_modalities
from pyro_mmvae.zoo import build_model, resolve_settings

torch.set_num_threads(1)


def hand_log_weights(vae, data, present, keep, eps):
    r"""Per particle and row, ``(K, B)``: :math:`\sum_{m \in S}[\lambda_m \log p(x_m|z_m)
    + \beta(\log p(z_m|z_c) - \log q(z_m|x_m))] + \beta_c(\log p(z_c) - \log q(z_c|z_K))`,
    with q(z_c|z_K) the product of the prior and the kept experts, written out."""
    names = [n for n in vae.names if f"z_{n}" in eps]
    zs, log_w = {}, 0.0
    precision, weighted = 1.0, 0.0  # the prior expert N(0, I)
    for n in names:
        i = vae.names.index(n)
        x = torch.where(present[i, :, None], data[n], 0.0)
        loc, raw = vae.mods[n].encoder(x)
        scale = vae.scale_fn(raw)
        z = loc + scale * eps[f"z_{n}"][:, 0]  # (K, B, DM)
        zs[n] = z
        log_w = log_w - BETA * present[i] * normal_log_prob(z, loc, scale)
        e_loc, e_raw = vae.top_experts[n](z)
        e_prec = vae.scale_fn(e_raw) ** -2 * keep[i, :, None]
        precision = precision + e_prec
        weighted = weighted + e_prec * e_loc
    c_loc, c_scale = weighted / precision, precision ** -0.5
    z_c = c_loc + c_scale * eps["z"][:, 0]
    log_w = log_w + TOP_BETA * (normal_log_prob(z_c, torch.zeros(()), torch.ones(()))
                                - normal_log_prob(z_c, c_loc, c_scale))
    for n in names:
        i = vae.names.index(n)
        d_loc, d_raw = vae.top_decoders[n](z_c)
        log_w = log_w + BETA * present[i] * normal_log_prob(zs[n], d_loc, vae.scale_fn(d_raw))
        x_loc = vae.mods[n].decoder(zs[n])
        log_w = log_w + WEIGHTS[i] * present[i] * normal_log_prob(
            data[n], x_loc, torch.tensor(SIGMA))
    return log_w


@pytest.mark.parametrize("estimator, K", [("elbo", 1), ("elbo", 3), ("iwae", 4)])
def test_objective_matches_hand_computation(estimator, K):
    """Values and gradients of every parameter, with missing rows and a dropout pattern."""
    vae = tiny(MHVAE)
    data, mask, present = make_data()
    keep = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    kept = keep & present
    kept[:, 0] = present[:, 0]  # row 0 keeps m0 only: its kept set would be empty
    elbo = MHVAEELBO(num_particles=K, estimator=estimator)
    eps = draws(elbo, vae, (data, mask), {"keep": keep}, seed=3)
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(vae.model, vae.guide, data, mask, keep=keep)
    loss.backward()
    got = grads(vae)
    vae.zero_grad()
    log_w = hand_log_weights(vae, data, present, kept, eps)
    reduce = log_w.mean(0) if estimator == "elbo" else logmeanexp(log_w, 0)
    expected = -reduce.sum()
    expected.backward()
    want = grads(vae)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-4), (loss, expected)
    assert got.keys() == want.keys() and len(got) == len(list(vae.parameters()))
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-4), name


def test_modality_absent_from_the_batch_has_no_site_and_no_term():
    vae = tiny(MHVAE)
    data, _, _ = make_data()
    partial = {"m0": data["m0"], "m2": data["m2"]}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1] = False
    elbo = MHVAEELBO()
    eps = draws(elbo, vae, (partial,), {}, seed=5)
    assert "z_m1" not in eps and {"z_m0", "z_m2", "z"} <= set(eps)
    vae.eval()  # no dropout
    pyro.set_rng_seed(5)
    loss = elbo.loss(vae.model, vae.guide, partial)
    with torch.no_grad():
        expected = -hand_log_weights(vae, data, present, present, eps).mean(0).sum()
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_dreg_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="mhvae supports the estimator.*elbo, iwae.*'dreg'"):
        MHVAEELBO(num_particles=4, estimator="dreg")
    with pytest.raises(ValueError, match="estimator"):
        build_model("mhvae", mini_data()[0], **SMALL, estimator="dreg", num_particles=2)


def test_modality_dropout_keeps_a_nonempty_subset_of_the_present_modalities():
    torch.manual_seed(0)
    present = torch.rand(5, 4000) < 0.7
    present[0, ~present.any(0)] = True
    kept = draw_kept_modalities(present, 0.5)
    assert not (kept & ~present).any() and kept.any(0).all()
    dropped = (kept != present).any(0)
    full = present.sum(0) == 5  # rows with all five: dropped ones keep 1..4 of them
    assert 0.4 < dropped[full].float().mean() < 0.6
    sizes = kept[:, full & dropped].sum(0)
    assert set(sizes.tolist()) == {1, 2, 3, 4}
    assert torch.equal(draw_kept_modalities(present, 0.0), present)


def test_dropout_acts_only_in_training_mode():
    vae = tiny(MHVAE, modality_dropout=1.0)
    data, _, _ = make_data()
    everything = torch.ones(M, B, dtype=torch.bool)

    def top_loc():
        pyro.set_rng_seed(0)
        return pyro.poutine.trace(vae.guide).get_trace(data).nodes["z"]["fn"].base_dist.loc

    vae.train()
    assert (vae.kept(everything, None).sum(0) < M).all()  # rate 1: every row drops some
    dropped = top_loc()
    vae.eval()
    assert torch.equal(vae.kept(everything, None), everything)
    assert not torch.allclose(dropped, top_loc())
    fixed = vae.kept(everything, torch.tensor([True, False, False]))
    assert fixed.sum(0).tolist() == [1] * B


def test_cross_generation_goes_through_the_hierarchy():
    r"""``generate`` from m0 decodes :math:`x_1` at the mean of :math:`p(z_1|z_c)`, with
    :math:`z_c` the mean of :math:`q(z_c|\mu_0)`, :math:`\mu_0` the mean of
    :math:`q(z_0|x_0)`; the cached-expert path gives the same."""
    vae = tiny(MHVAE).eval()
    data, _, _ = make_data()
    with torch.no_grad():
        out = vae.generate(data, ["m0"], ["m1", "m0"])
        mu0, _ = vae.mods["m0"].encoder(data["m0"])
        e_loc, e_raw = vae.top_experts["m0"](mu0)
        prec = 1 + vae.scale_fn(e_raw) ** -2
        z_c = prec ** -1 * vae.scale_fn(e_raw) ** -2 * e_loc
        z_1 = vae.top_decoders["m1"](z_c)[0]
        assert torch.allclose(out["m1"], vae.mods["m1"].decoder(z_1), atol=1e-6)
        assert torch.allclose(out["m0"], vae.mods["m0"].decoder(mu0), atol=1e-6)
        latents = vae.generation_latents(vae.encode_experts(data), ["m0"], ["m1"])
        assert torch.allclose(latents["m1"], z_1, atol=1e-6)
        assert vae.posterior(data, ["m0"]).mean.shape == (B, vae.latent_dim)
        assert vae.sample(7)["m2"].shape == (7, 3)


def test_predictive_and_render_model():
    train, test = mini_data()
    vae = build_model("mhvae", train, **SMALL).vae.eval()
    samples = Predictive(vae.model, num_samples=2)(batch_size=5)
    assert samples["z"].shape == (2, 5, 4) and samples["z_m3"].shape == (2, 5, 3)
    assert samples["x_m4"].shape == (2, 5, 3, 28, 28)
    batch = next(iter(test.batches(6)))[0]
    partial = {"m0": batch["m0"], "m2": batch["m2"]}
    samples = Predictive(vae.model, guide=vae.guide, num_samples=2)(partial,
                                                                    sample_missing=True)
    assert torch.equal(samples["x_m0"][1], batch["m0"])
    assert samples["x_m1"].shape == (2, 6, 3, 28, 28)
    pytest.importorskip("graphviz")
    source = pyro.render_model(vae.model, model_args=(batch,)).source
    for site in ("z", "z_m0", "x_m0", "x_m4", "data"):
        assert site in source


def test_zoo_settings_and_bad_values():
    full = resolve_settings("mhvae", "mhvae_polymnist")
    assert (full["nets"], full["hier_modality_dim"], full["latent_dim"]) == ("resnet", 512, 64)
    assert build_parser().parse_args(["train", "--model", "mhvae"]).model == "mhvae"
    settings = resolve_settings("mhvae", dataset_name="polymnist-mini")
    assert settings["beta"] == 0.1  # the polymnist-mini default
    assert settings["hier_modality_dropout"] == 0.5 and settings["posterior"] == "normal"
    spec = build_model("mhvae", mini_data()[0], **SMALL, hier_top_beta=0.5)
    assert isinstance(spec.vae, MHVAE) and isinstance(spec.elbo, MHVAEELBO)
    assert spec.vae.modality_dim == 3 and spec.vae.top_beta == 0.5
    assert spec.vae.mods["m0"].decoder.latent_dim == 3
    with pytest.raises(ValueError, match="hier_modality_dropout"):
        resolve_settings("mhvae", hier_modality_dropout=1.5)
    with pytest.raises(ValueError, match="Normal posteriors"):
        build_model("mhvae", mini_data()[0], **SMALL, posterior="laplace")
    assert DM == tiny(MHVAE).modality_dim


@pytest.mark.slow
def test_default_mini_run_beats_chance(tmp_path):
    subprocess.run([sys.executable, "-m", "pyro_mmvae", "train", "--model", "mhvae",
                    "--precision", "32", "--out", str(tmp_path / "run"), "--no-progress"],
                   check=True)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    # measured 0.471 (seed 0, 16 epochs; chance 0.1)
    assert summary["conditional_coherence"] > 0.3, summary["coherence_matrix"]
