"""MMVAE+ and the private-latent MMVAE baseline against hand computations on a tiny model."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.nn.functional import softplus

from pyro_mmvae.cli import build_parser
from pyro_mmvae.data import MultimodalTensorDataset
from pyro_mmvae.distributions import StratifiedMixture
from pyro_mmvae.infer import MMVAEPlusELBO
from pyro_mmvae.infer.base import site_log_prob
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import MMVAEPlus
from pyro_mmvae.train import TrainConfig, train
from pyro_mmvae.zoo import PRESETS, build_model, resolve_settings

torch.set_num_threads(1)
M, B, DZ, DW, X = 3, 4, 2, 3, 3
SIGMA, BETA, WEIGHTS = 0.5, 1.7, (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    """x -> (loc_z, raw_z, loc_w, raw_w), four independent linear maps."""

    def __init__(self):
        super().__init__()
        self.loc_z, self.raw_z = nn.Linear(X, DZ), nn.Linear(X, DZ)
        self.loc_w, self.raw_w = nn.Linear(X, DW), nn.Linear(X, DW)

    def forward(self, x):
        return self.loc_z(x), self.raw_z(x), self.loc_w(x), self.raw_w(x)


def tiny(aux_prior="learned", seed=0, **kwargs):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(DZ + DW, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    vae = MMVAEPlus(mods, DZ, DW, aux_prior=aux_prior, beta=BETA, **kwargs)
    if vae.aux_raw_scale is not None:  # a learned scale away from its initial value 1
        with torch.no_grad():
            vae.aux_raw_scale.copy_(torch.randn(M, DW))
    return vae


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
    """Stacked (M, B, .) expert parameters, written out with softplus + 1e-6."""
    out = {"loc_z": [], "scale_z": [], "loc_w": [], "scale_w": []}
    for i in range(M):
        enc, x = vae.mods[f"m{i}"].encoder, filled[f"m{i}"]
        out["loc_z"].append(enc.loc_z(x))
        out["scale_z"].append(softplus(enc.raw_z(x)) + 1e-6)
        out["loc_w"].append(enc.loc_w(x))
        out["scale_w"].append(softplus(enc.raw_w(x)) + 1e-6)
    return {k: torch.stack(v) for k, v in out.items()}


def draw_noise(K, seed):
    """The guide's noise, in its order: z (K, M, B, Dz), then w_m0, w_m1, w_m2."""
    pyro.set_rng_seed(seed)
    eps_z = torch.randn(K, M, B, DZ)
    eps_w = [torch.randn(K, M, B, DW) for _ in range(M)]
    return eps_z, eps_w


def private_samples(vae, p, eps_w, aux_prior):
    """Site values w_d (K, M, B, Dw): q_d in stratum d, else r_d (or q_d for the baseline)."""
    values = []
    for d in range(M):
        q_draw = p["loc_w"][d] + p["scale_w"][d] * eps_w[d]
        if aux_prior == "posterior":
            values.append(q_draw)
            continue
        r_scale = softplus(vae.aux_raw_scale[d]) + 1e-6 if aux_prior == "learned" else 1.0
        own = (torch.arange(M) == d).view(1, M, 1, 1)
        values.append(torch.where(own, q_draw, r_scale * eps_w[d]))
    return values


def hand_log_weights(vae, filled, present, eps_z, eps_w, aux_prior, detach_q=False,
                     latents=None):
    """lw[k, r, b] of MODELS.md section 5, term by term; ``latents`` overrides (z, w)."""
    p = encoders(vae, filled)
    z = p["loc_z"] + p["scale_z"] * eps_z
    w = private_samples(vae, p, eps_w, aux_prior)
    if latents is not None:
        z, w = latents
    q = {k: v.detach() for k, v in p.items()} if detach_q else p
    comp = log_normal(z.unsqueeze(2), q["loc_z"], q["scale_z"])  # (K, r, e, B)
    log_mix = torch.where(present, -present.sum(0).float().log(), -math.inf)
    log_q_moe = torch.logsumexp(comp + log_mix, dim=2)
    own_w = torch.stack([w[r][:, r] for r in range(M)], 1)  # w_r of stratum r
    log_q_w = log_normal(own_w, q["loc_w"], q["scale_w"])
    log_p_w = log_normal(own_w, torch.zeros(DW), torch.ones(DW))
    log_p_z = log_normal(z, torch.zeros(DZ), torch.ones(DZ))
    log_lik = 0.0
    for d in range(M):
        dec = vae.mods[f"m{d}"].decoder
        mean = dec(torch.cat([z, w[d]], -1))  # x_d decoded from (z_r, w_d of stratum r)
        ll = log_normal(filled[f"m{d}"], mean, torch.tensor(SIGMA))
        log_lik = log_lik + WEIGHTS[d] * present[d] * ll
    return log_lik + BETA * (log_p_z + log_p_w - log_q_moe - log_q_w), (z, w)


def stratified(values, present):
    return ((present.float() / present.float().sum(0)) * values).sum()


def reduce(lw, estimator):
    return lw.mean(0) if estimator == "elbo" else torch.logsumexp(lw, 0) - math.log(lw.size(0))


@pytest.mark.parametrize("aux_prior", ["learned", "fixed", "posterior"])
@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("elbo", 3), ("iwae", 3)])
def test_objective_matches_hand_computation(aux_prior, estimator, K):
    vae = tiny(aux_prior)
    data, mask, present, filled = make_data()
    elbo = MMVAEPlusELBO(num_particles=K, estimator=estimator)
    pyro.set_rng_seed(5)
    loss = elbo.loss(vae.model, vae.guide, data, mask)
    eps_z, eps_w = draw_noise(K, seed=5)
    lw, _ = hand_log_weights(vae, filled, present, eps_z, eps_w, aux_prior)
    expected = -stratified(reduce(lw, estimator), present)
    assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("family,scale_param", [("laplace", "softmax"), ("laplace", "softplus"),
                                                ("normal", "softmax")])
def test_log_weights_match_formula_for_other_families(family, scale_param):
    """Given the sampled values, the traces' log-weights are the section-5 formula."""
    vae = tiny("learned", posterior=family, scale_param=scale_param)
    data, mask, present, filled = make_data()
    elbo = MMVAEPlusELBO(num_particles=2)
    model_trace, guide_trace = elbo.get_traces(vae.model, vae.guide, (data, mask), {})
    lw = elbo.weigh(model_trace, guide_trace).log_weights
    z = guide_trace.nodes["z"]["value"]
    w = [guide_trace.nodes[f"w_m{d}"]["value"] for d in range(M)]
    scale_fn = vae.scale_fn
    dist = torch.distributions.Laplace if family == "laplace" else torch.distributions.Normal

    def logp(x, loc, scale):
        return dist(loc, scale).log_prob(x).sum(-1)

    locs, scales, wlocs, wscales = [], [], [], []
    for i in range(M):
        enc, x = vae.mods[f"m{i}"].encoder, filled[f"m{i}"]
        locs.append(enc.loc_z(x))
        scales.append(scale_fn(enc.raw_z(x)))
        wlocs.append(enc.loc_w(x))
        wscales.append(scale_fn(enc.raw_w(x)))
    loc, scale = torch.stack(locs), torch.stack(scales)
    log_mix = torch.where(present, -present.sum(0).float().log(), -math.inf)
    log_q = torch.logsumexp(logp(z.unsqueeze(2), loc, scale) + log_mix, 2)
    own = torch.stack([w[r][:, r] for r in range(M)], 1)
    prior_ratio = (logp(z, torch.zeros(DZ), torch.ones(DZ)) + logp(own, torch.zeros(DW),
                   torch.ones(DW)) - log_q - logp(own, torch.stack(wlocs), torch.stack(wscales)))
    lik = sum(WEIGHTS[d] * present[d] * log_normal(
        filled[f"m{d}"], vae.mods[f"m{d}"].decoder(torch.cat([z, w[d]], -1)),
        torch.tensor(SIGMA)) for d in range(M))
    expected = lik + BETA * prior_ratio
    available = present.unsqueeze(0).expand_as(lw)
    assert torch.allclose(lw[available], expected[available], rtol=1e-5, atol=1e-4)
    # the cross-modal w~_d of the learned auxiliary prior is zero-mean with scale s_d
    aux = vae.aux_scale()
    assert torch.allclose(aux, scale_fn(vae.aux_raw_scale))
    assert guide_trace.nodes["w_m0"]["fn"].base_dist.scale[:, 1:].sub(aux[0]).abs().max() < 1e-6


@pytest.mark.parametrize("aux_prior", ["learned", "posterior"])
def test_dreg_gradients_match_reference(aux_prior):
    """Tucker et al. 2019: scored latents (z, w_r) get w~^2 on the encoder path, the
    unscored cross-modal w~_d gets w~ (the IWAE pathwise gradient), decoders get w~."""
    K = 4
    data, mask, present, filled = make_data()
    vae = tiny(aux_prior)
    pyro.set_rng_seed(11)
    loss = MMVAEPlusELBO(num_particles=K, estimator="dreg").differentiable_loss(
        vae.model, vae.guide, data, mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters()}

    ref = tiny(aux_prior)
    eps_z, eps_w = draw_noise(K, seed=11)
    p = encoders(ref, filled)
    z = p["loc_z"] + p["scale_z"] * eps_z
    w = private_samples(ref, p, eps_w, aux_prior)
    z_leaf = z.detach().requires_grad_()
    w_leaf = [v.detach().requires_grad_() for v in w]
    lw, _ = hand_log_weights(ref, filled, present, eps_z, eps_w, aux_prior, detach_q=True,
                             latents=(z_leaf, w_leaf))
    w_tilde = torch.softmax(lw.detach(), 0)
    surrogate = -stratified((w_tilde * lw).sum(0), present)
    dec = [q for n, q in ref.named_parameters() if "decoder" in n]
    g = torch.autograd.grad(surrogate, [z_leaf, *w_leaf, *dec])
    g_z, g_w, g_dec = g[0], g[1:1 + M], g[1 + M:]
    own = (torch.arange(M).view(1, M, 1, 1) == torch.arange(M).view(M, 1, 1, 1, 1))  # (d,1,r,1,1)
    outputs = [w_tilde.unsqueeze(-1) * g_z]
    for d in range(M):
        factor = torch.where(own[d], w_tilde.unsqueeze(-1), torch.ones(()))
        outputs.append(factor * g_w[d])
    enc_params = [q for n, q in ref.named_parameters() if "decoder" not in n]
    g_enc = torch.autograd.grad([z, *w], enc_params, grad_outputs=outputs, allow_unused=True)
    enc_names = [n for n, _ in ref.named_parameters() if "decoder" not in n]
    for name, expected in zip(enc_names, g_enc, strict=True):
        expected = torch.zeros_like(grads[name]) if expected is None else expected
        assert torch.allclose(grads[name], expected, atol=1e-5), name
    dec_names = [n for n, _ in ref.named_parameters() if "decoder" in n]
    for name, expected in zip(dec_names, g_dec, strict=True):
        assert torch.allclose(grads[name], expected, atol=1e-5), name
    pyro.set_rng_seed(11)
    iwae = MMVAEPlusELBO(num_particles=K, estimator="iwae").loss(vae.model, vae.guide, data,
                                                                 mask)
    assert float(loss.detach()) == pytest.approx(iwae, rel=1e-5)
    if aux_prior == "learned":
        assert grads["aux_raw_scale"].abs().sum() > 0


def test_pyro_trace_elbo_sums_the_strata():
    """Plain Trace_ELBO on the same model/guide sums the M strata: M x our ELBO."""
    vae = tiny("learned")
    data, _, _, _ = make_data()
    pyro.set_rng_seed(2)
    ours = MMVAEPlusELBO().loss(vae.model, vae.guide, data)
    pyro.set_rng_seed(2)
    theirs = Trace_ELBO(max_plate_nesting=2).loss(vae.model, vae.guide, data)
    assert theirs == pytest.approx(M * ours, rel=1e-5)


def test_baseline_differs_only_in_where_the_cross_modal_private_latent_comes_from():
    data, mask, present, filled = make_data()
    traces = {}
    for aux in ("learned", "posterior"):
        vae = tiny(aux)
        pyro.set_rng_seed(3)
        traces[aux] = (vae, MMVAEPlusELBO(num_particles=2).get_traces(
            vae.model, vae.guide, (data, mask), {}))
    (plus, (m_plus, g_plus)), (base, (m_base, g_base)) = traces["learned"], traces["posterior"]
    assert torch.equal(g_plus.nodes["z"]["value"], g_base.nodes["z"]["value"])
    p = encoders(base, filled)
    scales = plus.aux_scale()
    for d in range(M):
        name = f"w_m{d}"
        v_plus, v_base = g_plus.nodes[name]["value"], g_base.nodes[name]["value"]
        assert torch.allclose(v_plus[:, d], v_base[:, d])  # own stratum: q_d in both
        eps = v_plus / scales[d]  # the shared noise, recovered from r_d = (0, s_d)
        q_draw = p["loc_w"][d] + p["scale_w"][d] * eps
        others = torch.arange(M) != d
        assert torch.allclose(v_base[:, others], q_draw[:, others], atol=1e-5)
        assert not torch.allclose(v_plus[:, others], v_base[:, others])
        # prior-ratio terms identical (they count in stratum d only) ...
        for trace_a, trace_b in ((m_plus, m_base), (g_plus, g_base)):
            a, b = site_log_prob(trace_a.nodes[name]), site_log_prob(trace_b.nodes[name])
            assert torch.allclose(a, b) and not a[:, others].any()
        # ... and x_d is scored the same in its own stratum, differently elsewhere
        lp_plus = site_log_prob(m_plus.nodes[f"x_m{d}"])
        lp_base = site_log_prob(m_base.nodes[f"x_m{d}"])
        assert torch.allclose(lp_plus[:, d], lp_base[:, d])
        assert not torch.allclose(lp_plus[:, others], lp_base[:, others])


@pytest.mark.parametrize("aux_prior", ["learned", "posterior"])
def test_absent_modality_gets_no_gradient_and_its_strata_are_masked(aux_prior):
    vae = tiny(aux_prior)
    data, _, _, _ = make_data()
    partial = {"m0": data["m0"], "m1": data["m1"]}  # m2 absent for every row
    elbo = MMVAEPlusELBO(num_particles=3, estimator="dreg")
    elbo.differentiable_loss(vae.model, vae.guide, partial).backward()
    for p in vae.mods["m2"].parameters():
        assert p.grad is None or not p.grad.any()
    assert vae.mods["m0"].encoder.loc_w.weight.grad.abs().sum() > 0
    assert vae.mods["m1"].decoder.weight.grad.abs().sum() > 0
    if aux_prior == "learned":
        grad = vae.aux_raw_scale.grad
        assert not grad[2].any() and grad[:2].abs().sum() > 0
    # the objective equals that of a model without modality m2 in stratum weights: 1/2 each
    model_trace, guide_trace = elbo.get_traces(vae.model, vae.guide, (partial,), {})
    weights = elbo.weigh(model_trace, guide_trace).stratum_weights
    assert torch.allclose(weights, torch.tensor([[0.5] * B, [0.5] * B, [0.0] * B]))


def test_learned_aux_prior_scale_is_a_parameter_only_for_mmvae_plus():
    assert tiny("learned").aux_raw_scale.requires_grad
    assert tiny("fixed").aux_raw_scale is None
    assert tiny("posterior").aux_raw_scale is None
    assert torch.equal(tiny("fixed").aux_scale(), torch.ones(M, DW))
    with pytest.raises(ValueError, match="aux_prior"):
        tiny("prior")
    with pytest.raises(ValueError, match="private_dim"):
        MMVAEPlus(list(tiny().mods.values()), DZ, 0)


@pytest.mark.parametrize("family", ["normal", "laplace"])
@pytest.mark.parametrize("scale_param", ["softplus", "softmax"])
@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("dreg", 3)])
def test_families_and_scale_maps_train(family, scale_param, estimator, K):
    vae = tiny("learned", posterior=family, scale_param=scale_param)
    data, mask, _, _ = make_data()
    loss = MMVAEPlusELBO(num_particles=K, estimator=estimator).differentiable_loss(
        vae.model, vae.guide, data, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    assert vae.aux_raw_scale.grad.abs().sum() > 0


@pytest.mark.parametrize("aux_prior", ["learned", "posterior"])
def test_training_reduces_loss_with_missing_modalities(aux_prior):
    vae = tiny(aux_prior)
    data, mask, _, _ = make_data()
    elbo = MMVAEPlusELBO(num_particles=2, estimator="dreg")
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    pyro.set_rng_seed(0)
    first = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(20)) / 20
    for _ in range(150):
        svi.step(data, mask)
    last = sum(elbo.loss(vae.model, vae.guide, data, mask) for _ in range(20)) / 20
    assert last < first - 5


def test_unstratified_mode_is_a_proper_importance_proposal():
    """stratify=False: one z and one w_m per row; an absent w_m comes from p(w_m) and cancels."""
    vae = tiny("learned")
    data, mask, present, filled = make_data()
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(data, mask, stratify=False)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)
                                     ).get_trace(data, mask, stratify=False)
    assert guide_trace.nodes["z"]["value"].shape == (B, DZ)
    p = encoders(vae, filled)
    for d in range(M):
        name = f"w_m{d}"
        assert guide_trace.nodes[name]["value"].shape == (B, DW)
        q_fn = guide_trace.nodes[name]["fn"].base_dist
        here = present[d]
        assert torch.allclose(q_fn.loc[here], p["loc_w"][d][here])
        assert torch.allclose(q_fn.scale[here], p["scale_w"][d][here])
        ratio = site_log_prob(model_trace.nodes[name]) - site_log_prob(guide_trace.nodes[name])
        assert torch.allclose(ratio[~here], torch.zeros(()))
        assert ratio[here].abs().min() > 0
    z = guide_trace.nodes["z"]["value"]
    log_mix = torch.where(present, -present.sum(0).float().log(), -math.inf)
    log_q = torch.logsumexp(log_normal(z, p["loc_z"], p["scale_z"]) + log_mix, 0)
    assert torch.allclose(site_log_prob(guide_trace.nodes["z"]) / BETA, log_q, atol=1e-5)


def test_generation_uses_posterior_mean_and_prior_private_latents():
    vae = tiny("learned")
    data, _, _, _ = make_data()
    with torch.no_grad():
        pyro.set_rng_seed(7)
        out = vae.generate(data, sources=["m0"], targets=["m0", "m1"])
        enc = vae.mods["m0"].encoder
        z = enc.loc_z(data["m0"])
        pyro.set_rng_seed(7)
        StratifiedMixture(z.unsqueeze(0), torch.ones(1, B, DZ)).select_component()
        w1 = torch.randn(B, DW)  # cross-generation: w_m1 ~ p(w_m1), standard Normal
        expected_cross = vae.mods["m1"].decoder(torch.cat([z, w1], -1))
        expected_self = vae.mods["m0"].decoder(torch.cat([z, enc.loc_w(data["m0"])], -1))
        assert torch.allclose(out["m1"], expected_cross, atol=1e-6)
        assert torch.allclose(out["m0"], expected_self, atol=1e-6)
        again = vae.generate(data, sources=["m0"], targets=["m0", "m1"])
        assert torch.allclose(again["m0"], out["m0"])  # self-reconstruction: posterior means
        assert not torch.allclose(again["m1"], out["m1"])  # cross: w drawn from p(w)
        several = vae.generate({"m1": data["m1"], "m2": data["m2"]}, ["m1", "m2"])
        assert set(several) == {"m0", "m1", "m2"} and several["m0"].shape == (B, X)
        samples = vae.sample(5)
        assert {k: v.shape for k, v in samples.items()} == {f"m{i}": (5, X) for i in range(M)}
    with pytest.raises(ValueError, match="not in the data"):
        vae.generate({"m0": data["m0"]}, sources=["m1"])


def test_encoder_with_wrong_widths_gives_a_clear_error():
    vae = tiny()

    class TooNarrow(nn.Module):
        def forward(self, x):
            return x, x  # width X, not Dz + Dw

    vae.mods["m0"].encoder = TooNarrow()
    data, _, _, _ = make_data()
    with pytest.raises(ValueError, match="MMVAE\\+ encoder must return"):
        MMVAEPlusELBO().loss(vae.model, vae.guide, data)


# --------------------------------------------------------------------------- zoo and training
def fake_polymnist(n, seed=0, modalities=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    data = {f"m{i}": torch.rand(n, 3, 28, 28, generator=g) for i in range(modalities)}
    return MultimodalTensorDataset(data, labels, name="fake")


def test_zoo_builds_both_models_and_the_paper_preset():
    ds = fake_polymnist(4)
    settings = resolve_settings("mmvae_plus", "mmvae_plus_polymnist")
    expected = {"latent_dim": 32, "private_dim": 32, "beta": 2.5, "likelihood": "laplace",
                "likelihood_scale": 0.75, "lr": 1e-3, "amsgrad": True, "batch_size": 128,
                "nets": "resnet", "posterior": "laplace", "scale_param": "softmax"}
    assert {k: settings[k] for k in expected} == expected
    assert PRESETS["mmvae_private_polymnist"]["aux_prior"] == "posterior"
    spec = build_model("mmvae_plus", ds, "mmvae_plus_polymnist")
    assert isinstance(spec.vae, MMVAEPlus) and isinstance(spec.elbo, MMVAEPlusELBO)
    assert spec.vae.private_dim == 32 and spec.vae.aux_prior == "learned"
    enc = spec.vae.mods["m0"].encoder
    assert enc.private_dim == 32 and spec.vae.mods["m0"].decoder.latent_dim == 64
    data, _ = next(iter(ds.batches(2)))
    loss = spec.elbo.loss(spec.vae.model, spec.vae.guide, data)
    assert math.isfinite(loss)
    private = build_model("mmvae_private", ds, latent_dim=4, private_dim=3, hidden=(8,))
    assert private.vae.aux_prior == "posterior" and private.vae.aux_raw_scale is None
    assert private.vae.mods["m0"].encoder.latent_dim == 7  # MLP: Dz + Dw, split by the model
    with torch.no_grad():
        out = private.vae.generate(data, ["m0"])
    assert out["m1"].shape == (2, 3, 28, 28)


def test_cli_accepts_the_models_and_the_preset():
    args = build_parser().parse_args(["train", "--model", "mmvae_plus", "--preset",
                                      "mmvae_plus_polymnist"])
    assert (args.model, args.preset) == ("mmvae_plus", "mmvae_plus_polymnist")
    assert build_parser().parse_args(["train", "--model", "mmvae_private"]).model == \
        "mmvae_private"


def test_short_training_run_through_the_trainer(tmp_path, monkeypatch):
    data = fake_polymnist(96), fake_polymnist(32, seed=1)
    config = TrainConfig(model="mmvae_plus", epochs=3, batch_size=32, lr=3e-3,
                         out=str(tmp_path / "run"),
                         settings={"hidden": (32,), "latent_dim": 4, "private_dim": 2})
    summary = train(config, progress=False, datasets=data)
    assert summary["model"] == "mmvae_plus" and summary["epochs"] == 3
    assert math.isfinite(summary["final_loss"])
