"""JMVAE-KL, TELBO, MVTCAE and CRMVAE: objectives against hand computations on a tiny linear
model with fixed noise, the Gaussian KL, training stages (TELBO) and missing modalities."""

import copy
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.checkpoint import load_checkpoint
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.infer import CRMVAEELBO, JMVAEELBO, MVTCAEELBO, TELBOELBO, gaussian_kl
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import CoordinationVAE
from pyro_mmvae.nets import JointEncoder
from pyro_mmvae.nets.mlp import MLPEncoder
from pyro_mmvae.stages import Stage, as_stages, frozen_patterns, parse_stage
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
    """loc, raw_scale = linear maps of the concatenated modalities (absent ones zeroed when
    ``present`` is given)."""

    def __init__(self):
        super().__init__()
        self.loc, self.raw = nn.Linear(M * X, D), nn.Linear(M * X, D)

    def forward(self, data, present=None):
        x = torch.cat([data[f"m{i}"] * (1.0 if present is None else
                                        present[f"m{i}"].unsqueeze(-1).float())
                       for i in range(M)], -1)
        return self.loc(x), self.raw(x)


def make_vae(joint="poe", targets="none", stop=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(D, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    encoder = LinearJointEncoder() if joint == "encoder" else None
    return CoordinationVAE(mods, D, joint=joint, joint_encoder=encoder, unimodal_targets=targets,
                           decoder_stop_gradient=stop, beta=BETA, **kwargs)


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


def kl_by_hand(mu1, s1, mu2, s2):
    """KL(N(mu1, s1^2) || N(mu2, s2^2)) per dimension from the textbook formula, summed."""
    var1, var2 = s1**2, s2**2
    return (0.5 * (torch.log(var2 / var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1)).sum(-1)


def softplus_scale(raw):
    return torch.nn.functional.softplus(raw) + 1e-6


def posteriors(vae, data, present, b):
    """Expert (loc, scale) per modality and the joint (loc, scale) for row b."""
    experts = []
    for i in range(M):
        x = data[f"m{i}"][b] if present[i, b] else torch.zeros(X)
        enc = vae.mods[f"m{i}"].encoder
        experts.append((enc.loc(x), softplus_scale(enc.raw(x))))
    members = [i for i in range(M) if present[i, b]]
    if vae.joint == "encoder" and (len(members) == M or vae.incomplete_joint == "encoder"):
        x = torch.cat([data[f"m{i}"][b] * float(present[i, b]) for i in range(M)])
        joint = (vae.joint_encoder.loc(x), softplus_scale(vae.joint_encoder.raw(x)))
    else:
        precision = sum(experts[i][1] ** -2 for i in members)
        joint = (sum(experts[i][1] ** -2 * experts[i][0] for i in members) / precision,
                 precision.rsqrt())
    return experts, joint


def reconstruction(vae, data, present, z, targets, b):
    """sum over present targets n of lambda_n log N(x_n; dec_n(z), SIGMA)."""
    total = torch.zeros(())
    for n in targets:
        if present[n, b]:
            mean = vae.mods[f"m{n}"].decoder(z)
            total = total + WEIGHTS[n] * log_normal(data[f"m{n}"][b], mean, torch.tensor(SIGMA))
    return total


def hand_terms(vae, data, present, eps, b, unimodal):
    """(R, [R_m], KL(q||p), [KL(q||q_m)], [KL(q_m||p)]) for row b, mean over particles."""
    experts, (mu, sd) = posteriors(vae, data, present, b)
    zero, one = torch.zeros(D), torch.ones(D)
    particles = eps.size(0)
    rec = sum(reconstruction(vae, data, present, mu + sd * eps[k, 0, b], range(M), b)
              for k in range(particles)) / particles
    uni = []
    for m in range(M):
        if not (unimodal and present[m, b]):
            uni.append(torch.zeros(()))
            continue
        targets = [m] if vae.unimodal_targets == "own" else range(M)
        mu_m, sd_m = experts[m]
        uni.append(sum(reconstruction(vae, data, present, mu_m + sd_m * eps[k, m + 1, b],
                                      targets, b) for k in range(particles)) / particles)
    coord = [kl_by_hand(mu, sd, *experts[m]) if present[m, b] else torch.zeros(())
             for m in range(M)]
    uni_kl = [kl_by_hand(*experts[m], zero, one) if present[m, b] else torch.zeros(())
              for m in range(M)]
    return rec, uni, kl_by_hand(mu, sd, zero, one), coord, uni_kl


def run_loss(elbo, vae, data, mask, seed, particles, strata):
    pyro.set_rng_seed(seed)
    loss = elbo.loss(vae.model, vae.guide, data, mask)
    pyro.set_rng_seed(seed)
    return loss, torch.randn(particles, strata, B, D)


def jmvae_objective(rec, uni, kl, coord, uni_kl, alpha, beta_t, warmup):
    return rec - beta_t * kl - alpha * warmup * sum(coord)


def telbo_objective(rec, uni, kl, coord, uni_kl, beta_t):
    return rec - beta_t * kl + sum(r - beta_t * u for r, u in zip(uni, uni_kl, strict=True))


def mvtcae_objective(rec, uni, kl, coord, uni_kl, alpha, beta_t):
    return (M - alpha) / M * rec - beta_t * ((1 - alpha) * kl + alpha / M * sum(coord))


def crmvae_objective(rec, uni, kl, coord, uni_kl, beta_t):
    pi = 1 / (M + 1)
    return pi * (rec + sum(uni)) - beta_t * pi * (kl + sum(coord))


CASES = {
    # name: (joint, unimodal_targets, ELBO factory, objective)
    "jmvae": ("encoder", "none", lambda K: JMVAEELBO(alpha=0.3, num_particles=K),
              lambda t, bt, w: jmvae_objective(*t, alpha=0.3, beta_t=bt, warmup=w)),
    "telbo": ("encoder", "own", lambda K: TELBOELBO(num_particles=K),
              lambda t, bt, w: telbo_objective(*t, beta_t=bt)),
    "mvtcae": ("poe", "none", lambda K: MVTCAEELBO(alpha=0.7, num_particles=K),
               lambda t, bt, w: mvtcae_objective(*t, alpha=0.7, beta_t=bt)),
    "crmvae": ("poe", "own", lambda K: CRMVAEELBO(num_particles=K),
               lambda t, bt, w: crmvae_objective(*t, beta_t=bt)),
    "crmvae_all": ("poe", "all", lambda K: CRMVAEELBO(num_particles=K),
                   lambda t, bt, w: crmvae_objective(*t, beta_t=bt)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("missing", [False, True])
def test_objective_matches_hand_computation(name, missing):
    joint, targets, make_elbo, objective = CASES[name]
    particles = 2
    vae = make_vae(joint, targets, kl_warmup_epochs=4)
    vae.start_epoch(1)  # warm-up: beta_t = beta / 2, factor 1/2
    data, mask, present = batch(missing)
    strata = 1 if targets == "none" else M + 1
    loss, eps = run_loss(make_elbo(particles), vae, data, mask, 5, particles, strata)
    with torch.no_grad():
        total = sum(objective(hand_terms(vae, data, present, eps, b, targets != "none"),
                              BETA / 2, 0.5) for b in range(B))
    assert loss == pytest.approx(-total.item(), rel=1e-5)


def test_gaussian_kl_matches_closed_form():
    torch.manual_seed(0)
    mu1, mu2 = torch.randn(5, 3), torch.randn(5, 3)
    s1, s2 = torch.rand(5, 3) + 0.1, torch.rand(5, 3) + 0.1
    ours = gaussian_kl(mu1, s1, mu2, s2)
    assert torch.allclose(ours, kl_by_hand(mu1, s1, mu2, s2), atol=1e-6)
    torch_kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu1, s1),
                                                 torch.distributions.Normal(mu2, s2)).sum(-1)
    assert torch.allclose(ours, torch_kl, atol=1e-6)
    # one dimension, by hand: KL(N(1, 2^2) || N(0, 1)) = -log 2 + (4 + 1)/2 - 1/2
    one = gaussian_kl(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), torch.ones(1))
    assert one.item() == pytest.approx(-math.log(2) + 2.0)
    assert gaussian_kl(mu1, s1, mu1, s1).abs().max() < 1e-6


# ------------------------------------------------------------------------ CRMVAE options
def traced_terms(vae, elbo, data, mask, seed=3):
    pyro.set_rng_seed(seed)
    model_trace, guide_trace = elbo.get_traces(vae.model, vae.guide, (data, mask), {})
    return elbo.terms(model_trace, guide_trace)


def test_crmvae_all_targets_changes_only_the_unimodal_reconstructions():
    data, mask, present = batch()
    own = traced_terms(make_vae("poe", "own"), CRMVAEELBO(), data, mask)
    full = traced_terms(make_vae("poe", "all"), CRMVAEELBO(), data, mask)
    for name in ("joint_rec", "joint_kl", "coordination_kl", "unimodal_kl"):
        assert torch.allclose(getattr(own, name), getattr(full, name)), name
    assert not torch.allclose(own.unimodal_rec, full.unimodal_rec)
    # the absent modality's stratum reconstructs nothing in both
    assert own.unimodal_rec[0, 3] == 0 and full.unimodal_rec[0, 3] == 0


class JointPartOfCRMVAE(CRMVAEELBO):
    """CRMVAE without its unimodal reconstruction terms."""

    def combine(self, t):
        weight = 1.0 / (t.num_modalities + 1)
        return weight * t.joint_rec - t.beta * weight * (t.joint_kl + t.coordination_kl.sum(0))


def gradients(vae, elbo, data, mask):
    vae.zero_grad()
    pyro.set_rng_seed(7)
    elbo.differentiable_loss(vae.model, vae.guide, data, mask).backward()
    return {k: p.grad.clone() for k, p in vae.named_parameters()}


def test_decoder_stop_gradient_keeps_unimodal_terms_out_of_the_decoders():
    data, mask, _ = batch()
    free = gradients(make_vae("poe", "own"), CRMVAEELBO(), data, mask)
    stopped = gradients(make_vae("poe", "own", stop=True), CRMVAEELBO(), data, mask)
    joint_only = gradients(make_vae("poe", "own"), JointPartOfCRMVAE(), data, mask)
    decoders = [k for k in free if ".decoder." in k]
    encoders = [k for k in free if ".encoder." in k]
    assert decoders and encoders
    for k in decoders:
        assert torch.allclose(stopped[k], joint_only[k], atol=1e-6), k
    assert any(not torch.allclose(free[k], stopped[k]) for k in decoders)
    for k in encoders:  # the unimodal encoders still learn from reconstructing
        assert torch.allclose(free[k], stopped[k], atol=1e-6), k


def test_objectives_need_their_strata_and_estimator():
    data, mask, _ = batch()
    vae = make_vae("poe", "none")
    with pytest.raises(ValueError, match="unimodal_targets"):
        CRMVAEELBO().loss(vae.model, vae.guide, data, mask)
    with pytest.raises(ValueError, match="estimator"):
        MVTCAEELBO(estimator="iwae")
    mods = list(make_vae().mods.values())
    with pytest.raises(ValueError, match="joint_encoder"):
        CoordinationVAE(mods, D, joint="encoder")
    with pytest.raises(ValueError, match="Normal"):
        CoordinationVAE(mods, D, posterior="laplace")
    with pytest.raises(ValueError, match="unimodal_targets"):
        CoordinationVAE(mods, D, decoder_stop_gradient=True)


# ------------------------------------------------------------------------ missing modalities
def test_joint_encoder_is_used_for_complete_rows_and_poe_elsewhere():
    vae = make_vae("encoder", "none")
    data, mask, present = batch()
    with torch.no_grad():
        loc = vae.posterior(data, ["m0", "m1", "m2"]).mean
        x = torch.cat([data[f"m{i}"] for i in range(M)], -1)
        assert torch.allclose(loc, vae.joint_encoder.loc(x))
        single = vae.posterior(data, ["m1"]).mean  # one source: q_m itself
        assert torch.allclose(single, vae.mods["m1"].encoder.loc(data["m1"]))
        _, filled_present = vae.prepare(data, mask)
        joint_loc, _ = vae.joint_params(vae.prepare(data, mask)[0], filled_present)
    for b in range(B):
        experts, (mu, _) = posteriors(vae, data, present, b)
        assert torch.allclose(joint_loc[b], mu, atol=1e-6)
    assert not torch.allclose(joint_loc[0], loc[0])  # row 0 lacks m1 and m2: PoE of m0


@pytest.mark.parametrize("missing", [False, True])
def test_telbo_with_the_joint_encoder_on_incomplete_rows_matches_hand_computation(missing):
    """incomplete_joint='encoder': q(z|X_S) is the joint encoder on the masked input for
    every row (the hand computation zeroes the absent modalities' inputs), the rest of the
    objective is TELBO's."""
    _, targets, make_elbo, objective = CASES["telbo"]
    vae = make_vae("encoder", targets, kl_warmup_epochs=4, incomplete_joint="encoder")
    vae.start_epoch(1)
    data, mask, present = batch(missing)
    loss, eps = run_loss(make_elbo(2), vae, data, mask, 5, 2, M + 1)
    with torch.no_grad():
        total = sum(objective(hand_terms(vae, data, present, eps, b, True), BETA / 2, 0.5)
                    for b in range(B))
    assert loss == pytest.approx(-total.item(), rel=1e-5)
    poe = make_vae("encoder", targets, kl_warmup_epochs=4)  # the same weights, PoE rows
    poe.start_epoch(1)
    poe_loss, _ = run_loss(make_elbo(2), poe, data, mask, 5, 2, M + 1)
    assert (poe_loss == pytest.approx(loss, rel=1e-6)) == (not missing)


def test_incomplete_rows_train_the_joint_encoder_in_telbos_first_stage():
    """TELBO's first stage (unimodal encoders frozen, decoders behind a stop-gradient in the
    unimodal terms) on rows that all miss a modality: with incomplete_joint='encoder' the
    joint encoder gets the gradient of the joint ELBO and feeds the decoders; with 'poe' it
    gets none and the decoders only see z from the frozen experts."""
    from pyro_mmvae.stages import freeze

    data, mask, present = batch()
    rows = torch.tensor([0, 3])  # both rows miss a modality
    data = {k: v[rows] for k, v in data.items()}
    mask = {k: v[rows] for k, v in mask.items()}
    grads = {}
    for mode in ("poe", "encoder"):
        vae = make_vae("encoder", "own", stop=True, incomplete_joint=mode)
        vae.pyro_register = False  # as the trainer does (frozen parameters stay out)
        freeze(vae, ["mods.*.encoder"])
        TELBOELBO().differentiable_loss(vae.model, vae.guide, data, mask).backward()
        joint = [p.grad for p in vae.joint_encoder.parameters()]
        grads[mode] = sum(0.0 if g is None else g.abs().sum().item() for g in joint)
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in vae.mods["m0"].decoder.parameters())
        with torch.no_grad():  # row 0 observes m0 only: m1 and m2 must not matter
            loc, _ = vae.training_joint_params(*vae.prepare(data, mask))
            other = dict(data, m1=data["m1"] + 5.0, m2=data["m2"] - 3.0)
            loc_other, _ = vae.training_joint_params(*vae.prepare(other, mask))
        assert torch.equal(loc[0], loc_other[0])
    assert grads["poe"] == 0.0 and grads["encoder"] > 0.0


def test_joint_encoder_zeroes_the_features_of_absent_modalities():
    torch.manual_seed(0)
    net = JointEncoder.from_encoders({"a": MLPEncoder((3,), 4), "b": MLPEncoder((2,), 4)}, 4, 2)
    data = {"a": torch.randn(5, 3), "b": torch.randn(5, 2)}
    present = {"a": torch.tensor([True, True, False, True, True]),
               "b": torch.tensor([True, False, True, True, False])}
    loc, raw = net(data, present)
    full_loc, full_raw = net(data)
    complete = present["a"] & present["b"]
    assert torch.equal(loc[complete], full_loc[complete])
    assert not torch.allclose(loc[~complete], full_loc[~complete])
    changed = {"a": data["a"] + 1.0 * ~present["a"].unsqueeze(-1),
               "b": data["b"] - 2.0 * ~present["b"].unsqueeze(-1)}
    assert torch.equal(net(changed, present)[0], loc)  # absent values do not matter
    # what the head sees: the features of b zeroed on row 1
    h = torch.cat([net.features["a"](data["a"][1:2]), torch.zeros(1, 8)], -1)
    assert torch.allclose(net.loc(net.head(h)), loc[1:2])
    with pytest.raises(ValueError, match="incomplete_joint"):
        make_vae("poe", incomplete_joint="encoder")
    with pytest.raises(ValueError, match="incomplete_joint"):
        make_vae("encoder", incomplete_joint="joint")


def test_generation_and_unstratified_guide():
    vae = make_vae("poe", "own")
    data, mask, _ = batch()
    with torch.no_grad():
        out = vae.generate(data, ["m0", "m2"], ["m1"])
        changed = vae.generate(dict(data, m1=data["m1"] + 100), ["m0", "m2"], ["m1"])
        samples = vae.sample(5)
    assert torch.equal(out["m1"], changed["m1"]) and out["m1"].shape == (B, X)
    assert samples["m0"].shape == (5, X)
    trace = pyro.poutine.trace(vae.guide).get_trace(data, mask, stratify=False)
    z = trace.nodes["z"]
    assert z["value"].shape == (B, D)
    assert z["fn"].log_prob(z["value"]).shape == (B,)


# ------------------------------------------------------------------------ stages (TELBO)
def test_stage_parsing_and_boundaries():
    assert parse_stage("0.5:mods.*.encoder, joint_encoder") == Stage(
        0.5, ("mods.*.encoder", "joint_encoder"))
    assert parse_stage("rest:") == Stage(None, ())
    assert as_stages([(2, "a"), ("rest:b")]) == (Stage(2, ("a",)), Stage(None, ("b",)))
    stages = as_stages(["0.5:a", "rest:b"])
    assert [frozen_patterns(stages, e, 10) for e in (1, 5, 6, 10)] == [("a",), ("a",),
                                                                        ("b",), ("b",)]
    for bad in ("5", "x:a", "1.5:a", "0:a"):
        with pytest.raises(ValueError):
            as_stages([bad])
    with pytest.raises(ValueError, match="last stage"):
        as_stages(["rest:a", "2:b"])


def tiny_dataset(split, size=32):
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    data = {f"m{i}": torch.randn(size, X, generator=generator) for i in range(M)}
    return MultimodalTensorDataset(data, torch.zeros(size, dtype=torch.long), name="tiny")


BUILT: dict = {}


def tiny_telbo(dataset, settings):
    vae = make_vae("encoder", "own", stop=True)
    BUILT.update(vae=vae, initial=copy.deepcopy(vae.state_dict()))
    return vae, TELBOELBO()


TINY_TELBO_DEFAULTS = {
    "lr": 0.05, "amsgrad": False, "batch_size": 8, "epochs": 2,
    "stages": ((1, ("mods.*.encoder",)), (None, ("joint_encoder", "mods.*.decoder")))}


@pytest.fixture
def tiny_world(sandbox_registry):
    """The tiny TELBO and its data, registered the way a user adds their own."""
    zoo, registry = sandbox_registry
    zoo.register_model("tiny", tiny_telbo, TINY_TELBO_DEFAULTS)
    registry.register_dataset("tiny", lambda _root, split: tiny_dataset(split))


def vae_state(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["vae_state"]


def test_telbo_stages_freeze_bit_for_bit_and_resume_across_stages(tmp_path, tiny_world):
    def config(out, **kw):
        return TrainConfig(model="tiny", dataset="tiny", device="cpu", out=str(out), **kw)

    train(config(tmp_path / "straight", epochs=2), progress=False)
    straight = vae_state(tmp_path / "straight")
    train(config(tmp_path / "split", epochs=1), progress=False)
    initial, stage1 = BUILT["initial"], vae_state(tmp_path / "split")
    summary = train(config(tmp_path / "split", epochs=2, resume=True), progress=False)
    stage2 = vae_state(tmp_path / "split")

    params = [k for k, _ in BUILT["vae"].named_parameters()]
    unimodal = [k for k in params if ".encoder." in k]
    rest = [k for k in params if k not in unimodal]
    assert unimodal and any(k.startswith("joint_encoder") for k in rest)
    for k in unimodal:  # stage 1 freezes the unimodal encoders ...
        assert torch.equal(stage1[k], initial[k]), k
    assert all(not torch.equal(stage1[k], initial[k]) for k in rest)  # ... trains the rest
    for k in rest:  # stage 2 leaves the joint encoder and the decoders bit-for-bit unchanged
        assert torch.equal(stage2[k], stage1[k]), k
    assert all(not torch.equal(stage2[k], stage1[k]) for k in unimodal)
    for k in straight:  # resuming across the stage boundary is exact
        assert torch.equal(straight[k], stage2[k]), k
    assert summary["stages"] == [[1, ["mods.*.encoder"]],
                                 [None, ["joint_encoder", "mods.*.decoder"]]]
    assert all(p.requires_grad for p in BUILT["vae"].parameters())  # unfrozen after training


def test_stage_pattern_that_matches_nothing_is_refused(tmp_path, tiny_world):
    config = TrainConfig(model="tiny", dataset="tiny", device="cpu", out=str(tmp_path / "r"),
                         stages=["1:decoders_typo"])
    with pytest.raises(ValueError, match="decoders_typo"):
        train(config, progress=False)


# ------------------------------------------------------------------------ zoo
def test_zoo_builds_the_family():
    data = {f"m{i}": torch.rand(6, 1, 4, 4) for i in range(2)}
    dataset = MultimodalTensorDataset(data, torch.zeros(6, dtype=torch.long), name="tiny")
    for name, elbo_type in (("jmvae", JMVAEELBO), ("telbo", TELBOELBO), ("mvtcae", MVTCAEELBO),
                            ("crmvae", CRMVAEELBO)):
        spec = build_model(name, dataset, hidden=(16,), latent_dim=3)
        assert isinstance(spec.elbo, elbo_type)
        batch_data, _ = next(iter(dataset.batches(6)))
        assert math.isfinite(spec.elbo.loss(spec.vae.model, spec.vae.guide, batch_data))
    telbo = build_model("telbo", dataset, hidden=(16,))
    assert telbo.train_defaults["stages"][1][1] == ("joint_encoder", "mods.*.decoder")
    crmvae = build_model("crmvae", dataset, unimodal_targets="all", decoder_stop_gradient=True)
    assert crmvae.vae.unimodal_targets == "all" and crmvae.vae.decoder_stop_gradient
    with pytest.raises(ValueError, match="every modality"):
        JointEncoder.from_encoders({"a": MLPEncoder((2,), 2), "b": MLPEncoder((2,), 2)}, 2, 2)(
            {"a": torch.zeros(1, 2)})
