"""JNF (Senellart et al. 2023): the objective against a hand computation (values and
gradients, complete and masked rows) on a tiny linear model whose unimodal posteriors are
Pyro MAFs, the flow posteriors, the two training stages, generation, Pyro idioms and the
default polymnist-mini run."""

import copy
import json
import math
import subprocess
import sys

import pyro
import pytest
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.infer import Predictive
from torch import nn

from pyro_mmvae.checkpoint import load_checkpoint
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.infer import JNFDCCAELBO, JNFELBO
from pyro_mmvae.infer.jnf import cca_correlation
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import JNF, JNFDCCA
from pyro_mmvae.models.jnf import DCCAEncoder, FlowPosterior, FlowSubsetPosterior
from pyro_mmvae.presets import JNF_DCCA_STAGES
from pyro_mmvae.stages import as_stages, check_patterns, freeze, unfreeze
from pyro_mmvae.train import TrainConfig, train
from pyro_mmvae.zoo import build_model

torch.set_num_threads(1)
M, B, D, X = 3, 4, 2, 3
SIGMA, BETA, WEIGHTS = 0.5, 1.3, (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc, self.raw = nn.Linear(X, D), nn.Linear(X, D)

    def forward(self, x):
        return self.loc(x), self.raw(x)


class LinearJointEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc, self.raw = nn.Linear(M * X, D), nn.Linear(M * X, D)

    def forward(self, data, present=None):
        x = torch.cat([data[f"m{i}"] * (1.0 if present is None else
                                        present[f"m{i}"].unsqueeze(-1).float())
                       for i in range(M)], -1)
        return self.loc(x), self.raw(x)


def make_vae(seed=0, **kwargs):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(D, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    return JNF(mods, D, joint_encoder=LinearJointEncoder(), num_flows=2, flow_hidden=(5,),
               beta=BETA, **kwargs)


def batch(missing=True):
    torch.manual_seed(1)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    if missing:
        present[1, 0] = present[2, 0] = present[0, 3] = False
    return data, {f"m{i}": present[i] for i in range(M)}, present


# ------------------------------------------------------------------------ hand computation
def log_normal(x, loc, scale):
    z = (x - loc) / scale
    return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def softplus_scale(raw):
    return torch.nn.functional.softplus(raw) + 1e-6


def maf_log_density(vae, m, z, mu, sd):
    r"""log q_m(z|x_m) by hand: the flow is x -> l_2^{-1}(l_1^{-1}(x)), so its inverse applies
    each layer's one-pass map y = e^{s(y)} y + mu(y) from the last layer down, and
    log q = log N(x_0; mu, sd) + sum of the log-scales."""
    x, log_det = z, torch.zeros(())
    for layer in reversed(list(vae.flows[f"m{m}"])):
        shift, log_scale = layer.arn(x)
        log_scale = log_scale.clamp(-5.0, 3.0)
        x = torch.exp(log_scale) * x + shift
        log_det = log_det + log_scale.sum(-1)
    return log_normal(x, mu, sd) + log_det


def base_normal(vae, m, x):
    """(mu, sd) of the base Normal of q_m(z|x_m): the encoder's heads, or for JNF-DCCA the
    head on the detached linear embedding."""
    enc = vae.mods[f"m{m}"].encoder
    if isinstance(enc, DCCAEncoder):
        x, enc = enc.embed.loc(x).detach(), enc.head
    return enc.loc(x), softplus_scale(enc.raw(x))


def hand_objective(vae, data, present, eps, b, beta_t):
    """R - beta_t KL(q||p) - sum_m C_m for row b (stop-gradients written out)."""
    x = torch.cat([data[f"m{i}"][b] * float(present[i, b]) for i in range(M)])
    mu, sd = vae.joint_encoder.loc(x), softplus_scale(vae.joint_encoder.raw(x))
    particles = eps.size(0)
    total = torch.zeros(())
    for k in range(particles):
        z = mu + sd * eps[k, 0, b]
        for n in range(M):
            if present[n, b]:
                mean = vae.mods[f"m{n}"].decoder(z)
                total = total + WEIGHTS[n] * log_normal(data[f"m{n}"][b], mean,
                                                        torch.tensor(SIGMA)) / particles
        for m in range(M):
            if present[m, b]:
                mu_m, sd_m = base_normal(vae, m, data[f"m{m}"][b])
                zd = z.detach()
                c_m = log_normal(zd, mu.detach(), sd.detach()) - maf_log_density(
                    vae, m, zd, mu_m, sd_m)
                total = total - c_m / particles
    kl = (0.5 * (sd**2 + mu**2 - 1) - torch.log(sd)).sum(-1)
    return total - beta_t * kl


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "masked"])
def test_objective_and_gradients_match_hand_computation(missing):
    particles = 2
    vae = make_vae(kl_warmup_epochs=4)
    vae.start_epoch(1)  # beta_t = beta / 2
    data, mask, present = batch(missing)
    elbo = JNFELBO(num_particles=particles)
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(vae.model, vae.guide, data, mask)
    ours = torch.autograd.grad(loss, list(vae.parameters()))
    pyro.set_rng_seed(5)
    eps = torch.randn(particles, 1, B, D)
    hand = -sum(hand_objective(vae, data, present, eps, b, BETA / 2) for b in range(B))
    theirs = torch.autograd.grad(hand, list(vae.parameters()))
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    for (name, _), g1, g2 in zip(vae.named_parameters(), ours, theirs, strict=True):
        assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-4), name
    grads = dict(zip([n for n, _ in vae.named_parameters()], ours, strict=True))
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("flows."))
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("joint_encoder."))


def test_flow_terms_leave_the_joint_encoder_and_decoders_alone():
    """The C_m see the joint posterior through a stop-gradient: the joint encoder's and the
    decoders' gradients are those of the joint ELBO alone (the flows' weights do not move
    them), and the flows get gradients from nothing else."""
    vae = make_vae()
    data, mask, _ = batch()
    elbo = JNFELBO()

    def grads():
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(vae.model, vae.guide, data, mask)
        return dict(zip([n for n, _ in vae.named_parameters()],
                        torch.autograd.grad(loss, list(vae.parameters())), strict=True))

    before = grads()
    with torch.no_grad():
        for p in vae.flows.parameters():
            p.add_(torch.randn_like(p))
    after = grads()
    joint_side = [n for n in before if n.startswith("joint_encoder.") or ".decoder." in n]
    assert joint_side
    for name in joint_side:
        assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("flows."))


def test_flows_are_pyros_and_the_flow_posterior_is_their_transformed_normal():
    vae = make_vae()
    data, _, _ = batch(False)
    layers = list(vae.flows["m0"])
    assert len(layers) == 2 and all(isinstance(t, AffineAutoregressive) for t in layers)
    q = vae.posterior(data, ["m0"])
    assert isinstance(q, FlowPosterior)
    assert isinstance(q, pyro.distributions.TransformedDistribution)
    enc = vae.mods["m0"].encoder
    mu, sd = enc.loc(data["m0"]), softplus_scale(enc.raw(data["m0"]))
    with torch.no_grad():
        z = q.sample()
        assert torch.allclose(q.log_prob(z), maf_log_density(vae, 0, z, mu, sd), atol=1e-5)
        point = q.mean  # the flow's image of the base mean: its inverse gives mu back
        back = point
        for layer in reversed(layers):
            shift, log_scale = layer.arn(back)
            back = torch.exp(log_scale.clamp(-5, 3)) * back + shift
        assert torch.allclose(back, mu, atol=1e-4)


def test_subset_posterior_is_the_joint_or_the_mixture_of_present_flows():
    vae = make_vae()
    data, _, _ = batch(False)
    with torch.no_grad():
        experts = vae.encode_experts(data)
        joint = vae.posterior(data, ["m0", "m1", "m2"])
        assert torch.allclose(joint.mean, experts["joint_loc"])
        mixture = vae.posterior(data, ["m0", "m2"])
        assert isinstance(mixture, FlowSubsetPosterior)
        z = torch.randn(B, D)
        flows = [vae.posterior(data, [m]) for m in ("m0", "m2")]
        expected = torch.logsumexp(torch.stack([q.log_prob(z) for q in flows]), 0) - math.log(2)
        assert torch.allclose(mixture.log_prob(z), expected, atol=1e-5)
        assert torch.allclose(mixture.mean, (flows[0].mean + flows[1].mean) / 2, atol=1e-5)
        # the unstratified guide: joint encoder on complete rows, present flows elsewhere
        _, _, present = batch(True)
        filled, _ = vae.prepare(data)
        loc, scale = vae.expert_params(filled)
        q = FlowSubsetPosterior(experts["joint_loc"], experts["joint_scale"],
                                vae.flow_posteriors(loc, scale), present)
        lp = q.log_prob(z)
        assert torch.allclose(lp[1:3], torch.distributions.Normal(
            experts["joint_loc"], experts["joint_scale"]).log_prob(z).sum(-1)[1:3])
        assert torch.allclose(lp[0], vae.posterior(data, ["m0"]).log_prob(z)[0], atol=1e-5)
        assert q.rsample((7,)).shape == (7, B, D)
        joint_var = experts["joint_scale"] ** 2
        assert torch.allclose(q.variance[1:3], joint_var[1:3]) and (q.variance > 0).all()


def test_generation_from_one_source_reads_only_that_source():
    vae = make_vae()
    data, mask, _ = batch()
    with torch.no_grad():
        out = vae.generate(data, ["m1"], ["m0"])
        changed = vae.generate(dict(data, m0=data["m0"] + 100, m2=data["m2"] - 5), ["m1"], ["m0"])
        expected = vae.mods["m0"].mean(vae.posterior(data, ["m1"]).mean)
        both = vae.generate(data, ["m0", "m1"], ["m2"], posterior="sample")
    assert torch.equal(out["m0"], changed["m0"]) and torch.allclose(out["m0"], expected)
    assert both["m2"].shape == (B, X)


def test_only_the_elbo_estimator():
    with pytest.raises(ValueError, match="elbo"):
        JNFELBO(estimator="iwae", num_particles=2)
    with pytest.raises(ValueError, match="latent_dim"):
        JNF([Modality("a", (X,), "normal", LinearEncoder(), nn.Linear(1, X))], 1,
            joint_encoder=LinearJointEncoder())


def test_predictive_and_render_model():
    vae = make_vae()
    data, mask, _ = batch()
    samples = Predictive(vae.model, guide=vae.guide, num_samples=3)(
        {"m0": data["m0"]}, sample_missing=True)
    assert samples["z"].shape == (3, B, D) and samples["x_m2"].shape == (3, B, X)
    prior = Predictive(vae.model, num_samples=2)(batch_size=5)
    assert prior["x_m1"].shape == (2, 5, X)
    trace = pyro.poutine.trace(vae.guide).get_trace(data, mask, stratify=False)
    assert trace.nodes["z"]["fn"].log_prob(trace.nodes["z"]["value"]).shape == (B,)
    pytest.importorskip("graphviz")
    source = pyro.render_model(vae.model, model_args=(data, mask)).source
    for site in ("z", "x_m0", "x_m2", "data", "strata"):
        assert site in source


# ------------------------------------------------------------------------ stages
def tiny_dataset(split, size=32):
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    data = {f"m{i}": torch.randn(size, X, generator=generator) for i in range(M)}
    return MultimodalTensorDataset(data, torch.zeros(size, dtype=torch.long), name="tiny")


BUILT: dict = {}


def tiny_jnf(dataset, settings):
    vae = make_vae()
    BUILT.update(vae=vae, initial=copy.deepcopy(vae.state_dict()))
    return vae, JNFELBO()


def test_two_stages_train_the_joint_vae_then_the_flows(tmp_path, sandbox_registry):
    zoo, registry = sandbox_registry
    stages = ((1, ("mods.*.encoder", "flows")), (None, ("joint_encoder", "mods.*.decoder")))
    zoo.register_model("tiny_jnf", tiny_jnf, {"lr": 0.05, "amsgrad": False, "batch_size": 8,
                                               "epochs": 2, "stages": stages})
    registry.register_dataset("tiny", lambda _root, split: tiny_dataset(split))
    out = tmp_path / "run"

    def config(epochs, resume=False):
        return TrainConfig(model="tiny_jnf", dataset="tiny", device="cpu", out=str(out),
                           epochs=epochs, resume=resume, precision="32")

    train(config(1), progress=False)
    stage1 = load_checkpoint(out / "checkpoint.pt")["vae_state"]
    initial = BUILT["initial"]
    train(config(2, resume=True), progress=False)
    stage2 = load_checkpoint(out / "checkpoint.pt")["vae_state"]
    unimodal = [k for k in stage1 if k.startswith("flows.") or ".encoder." in k]
    unimodal = [k for k in unimodal if not k.startswith("joint_encoder")]
    rest = [k for k, _ in BUILT["vae"].named_parameters() if k not in unimodal]
    unimodal = [k for k, _ in BUILT["vae"].named_parameters() if k in unimodal]
    assert any(k.startswith("flows.") for k in unimodal) and rest
    for k in unimodal:
        assert torch.equal(stage1[k], initial[k]), k
        assert not torch.equal(stage2[k], stage1[k]), k
    for k in rest:
        assert not torch.equal(stage1[k], initial[k]), k
        assert torch.equal(stage2[k], stage1[k]), k


def test_zoo_builds_jnf_with_its_stages_and_settings():
    data = {f"m{i}": torch.rand(6, 1, 4, 4) for i in range(2)}
    dataset = MultimodalTensorDataset(data, torch.zeros(6, dtype=torch.long), name="tiny")
    spec = build_model("jnf", dataset, hidden=(16,), latent_dim=3, jnf_flows=3,
                       jnf_flow_hidden=(7,))
    assert isinstance(spec.elbo, JNFELBO) and len(spec.vae.flows["m0"]) == 3
    assert spec.train_defaults["stages"][0][1] == ("mods.*.encoder", "flows")
    batch_data, _ = next(iter(dataset.batches(6)))
    assert math.isfinite(spec.elbo.loss(spec.vae.model, spec.vae.guide, batch_data))
    with pytest.raises(ValueError, match="posterior=normal"):
        build_model("jnf", dataset, posterior="laplace")
    with pytest.raises(ValueError, match="jnf_flows"):
        build_model("jnf", dataset, jnf_flows=-1)


# ------------------------------------------------------------------------ JNF-DCCA
E = 2


class LinearHeads(nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()
        self.loc, self.raw = nn.Linear(inputs, outputs), nn.Linear(inputs, outputs)

    def forward(self, x):
        return self.loc(x), self.raw(x)


def make_dcca_vae(seed=0):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", DCCAEncoder(LinearHeads(X, E), LinearHeads(E, D)),
                     nn.Linear(D, X), weight=w) for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    return JNFDCCA(mods, D, joint_encoder=LinearJointEncoder(), num_flows=2, flow_hidden=(5,),
                   beta=BETA)


def cca_by_hand(h1, h2, reg):
    """Sum of the singular values of S11^-1/2 S12 S22^-1/2 (symmetric square roots), float64."""
    h1, h2 = h1.double(), h2.double()
    n = h1.size(0)
    c1, c2 = h1 - h1.mean(0), h2 - h2.mean(0)
    eye = torch.eye(h1.size(1), dtype=torch.float64)

    def inv_sqrt(s):
        values, vectors = torch.linalg.eigh(s)
        return vectors @ torch.diag(values.rsqrt()) @ vectors.T

    s11, s22 = c1.T @ c1 / (n - 1) + reg * eye, c2.T @ c2 / (n - 1) + reg * eye
    t = inv_sqrt(s11) @ (c1.T @ c2 / (n - 1)) @ inv_sqrt(s22)
    return torch.linalg.svd(t).S.sum()


def test_cca_correlation_matches_the_textbook_formula_and_weights_select_rows():
    torch.manual_seed(0)
    h1 = torch.randn(12, 3)
    h2 = h1 @ torch.randn(3, 3) + 0.3 * torch.randn(12, 3)
    assert cca_correlation(h1, h2, reg=1e-3).item() == pytest.approx(
        cca_by_hand(h1, h2, 1e-3).item(), rel=1e-4)
    rows = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert cca_correlation(h1, h2, rows).item() == pytest.approx(
        cca_by_hand(h1[rows], h2[rows], 1e-3).item(), rel=1e-4)
    assert 2.5 < cca_correlation(h1, h1 + 1e-3 * torch.randn(12, 3)).item() <= 3.0
    # a pair with one common row only: finite value and gradient
    h = torch.randn(4, 2, requires_grad=True)
    value = cca_correlation(h, torch.randn(4, 2), torch.tensor([True, False, False, False]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "masked"])
def test_jnf_dcca_objective_and_gradients_match_hand_computation(missing):
    vae = make_dcca_vae()
    data, mask, present = batch(missing)
    elbo = JNFDCCAELBO(reg=1e-3)
    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(vae.model, vae.guide, data, mask)
    ours = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
    pyro.set_rng_seed(7)
    eps = torch.randn(1, 1, B, D)
    hand = -sum(hand_objective(vae, data, present, eps, b, BETA) for b in range(B))
    emb = [vae.mods[f"m{i}"].encoder.embed.loc(data[f"m{i}"]) for i in range(M)]
    for i in range(M):
        for j in range(i + 1, M):
            rows = present[i] & present[j]
            hand = hand - cca_by_hand(emb[i][rows], emb[j][rows], 1e-3).float()
    theirs = torch.autograd.grad(hand, list(vae.parameters()), allow_unused=True)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-4)
    for (name, _), g1, g2 in zip(vae.named_parameters(), ours, theirs, strict=True):
        if g2 is None:  # the embeddings' unused scale heads
            assert g1 is None or not g1.any(), name
            continue
        assert torch.allclose(g1, g2, atol=1e-4, rtol=1e-3), name


def test_jnf_dcca_stages_train_embeddings_then_joint_vae_then_heads():
    data = {f"m{i}": torch.rand(6, 1, 4, 4) for i in range(2)}
    dataset = MultimodalTensorDataset(data, torch.zeros(6, dtype=torch.long), name="tiny")
    spec = build_model("jnf_dcca", dataset, hidden=(16,), latent_dim=3, jnf_dcca_dim=4)
    vae = spec.vae
    assert isinstance(spec.elbo, JNFDCCAELBO) and spec.train_defaults["stages"] == JNF_DCCA_STAGES
    stages = as_stages(JNF_DCCA_STAGES)
    check_patterns(vae, stages)
    names = [n for n, _ in vae.named_parameters()]
    trainable = []
    for stage in stages:
        frozen = set(freeze(vae, stage.frozen))
        trainable.append({n for n in names if n not in frozen})
    embed = {n for n in names if ".encoder.embed." in n}
    assert trainable[0] == embed
    assert trainable[1] == {n for n in names if n.startswith("joint_encoder.")
                            or ".decoder." in n}
    assert trainable[2] == {n for n in names if n.startswith("flows.")
                            or ".encoder.head." in n}
    unfreeze(vae)
    batch_data, _ = next(iter(dataset.batches(6)))
    assert math.isfinite(spec.elbo.loss(vae.model, vae.guide, batch_data))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["jnf", "jnf_dcca"])
def test_default_mini_run_is_above_chance(model, tmp_path):
    """Measured (fp32, CPU): jnf 0.616, jnf_dcca 0.691 (chance 0.1)."""
    subprocess.run([sys.executable, "-m", "pyro_mmvae", "train", "--model", model, "--out",
                    str(tmp_path / "run"), "--no-progress", "--precision", "32"], check=True)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["conditional_coherence"] > 0.5, summary.get("coherence_matrix")


def test_a_trained_model_can_be_deep_copied():
    """Pyro's transforms cache their last (x, y); the flow posteriors drop that cache, so no
    autograd graph stays in the model."""
    vae = make_vae()
    data, mask, _ = batch()
    JNFELBO().differentiable_loss(vae.model, vae.guide, data, mask).backward()
    with torch.no_grad():
        vae.generate(data, ["m0"], posterior="sample")
    twin = copy.deepcopy(vae)
    assert torch.equal(twin.flows["m0"][0].arn.layers[0].weight,
                       vae.flows["m0"][0].arn.layers[0].weight)
