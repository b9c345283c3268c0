"""CMVAE: the enumerated cluster against explicit sums over clusters, and the clustering
metrics against hand cases."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch import nn

from pyro_mmvae.cli import build_parser
from pyro_mmvae.data import MultimodalTensorDataset
from pyro_mmvae.infer import CMVAEELBO, MMVAEPlusELBO, MultimodalELBO
from pyro_mmvae.infer.base import logmeanexp
from pyro_mmvae.metrics.clustering import (
    clustering_accuracy,
    clustering_scores,
    evaluate_clustering,
    supports_clustering,
)
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import CMVAE, MMVAEPlus
from pyro_mmvae.zoo import PRESETS, build_model, resolve_settings

torch.set_num_threads(1)
M, B, DZ, DW, X, C = 3, 4, 2, 3, 3, 4
SIGMA, WEIGHTS = 0.5, (1.0, 2.0, 0.5)


class LinearEncoder(nn.Module):
    """x -> (loc_z, raw_z, loc_w, raw_w), four independent linear maps."""

    def __init__(self):
        super().__init__()
        self.loc_z, self.raw_z = nn.Linear(X, DZ), nn.Linear(X, DZ)
        self.loc_w, self.raw_w = nn.Linear(X, DW), nn.Linear(X, DW)

    def forward(self, x):
        return self.loc_z(x), self.raw_z(x), self.loc_w(x), self.raw_w(x)


def tiny(beta=1.7, clusters=C, seed=0):
    """A CMVAE and an MMVAE+ sharing the same modalities and auxiliary scales."""
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (X,), "normal", LinearEncoder(), nn.Linear(DZ + DW, X), weight=w)
            for i, w in enumerate(WEIGHTS)]
    for m in mods:
        m.likelihood.scale = SIGMA
    vae = CMVAE(mods, DZ, DW, num_clusters=clusters, beta=beta)
    plus = MMVAEPlus(mods, DZ, DW, beta=beta)
    with torch.no_grad():  # parameters away from their initial values
        vae.aux_raw_scale.copy_(torch.randn(M, DW))
        vae.cluster_logits.copy_(torch.randn(clusters))
        vae.cluster_raw_scale.copy_(0.5 * torch.randn(clusters, DZ))
    plus.aux_raw_scale = vae.aux_raw_scale  # one parameter, shared
    return vae, plus


def make_data(seed=1):
    torch.manual_seed(seed)
    data = {f"m{i}": torch.randn(B, X) for i in range(M)}
    present = torch.ones(M, B, dtype=torch.bool)
    present[1, 0] = present[2, 0] = present[0, 3] = False
    return data, {f"m{i}": present[i] for i in range(M)}, present


def log_normal(x, loc, scale):
    u = (x - loc) / scale
    return (-0.5 * u**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_mixture_log_prior(vae, z):
    """log sum_c pi_c N(z; mu_c, sigma_c), the sum over clusters written out."""
    pi = torch.softmax(vae.cluster_logits, 0)
    sigma = nn.functional.softplus(vae.cluster_raw_scale) + 1e-6
    terms = [torch.log(pi[c]) + log_normal(z, vae.cluster_loc[c], sigma[c])
             for c in range(vae.num_clusters)]
    return torch.logsumexp(torch.stack(terms), 0)


def reduce(lw, estimator):
    return lw.mean(0) if estimator == "elbo" else logmeanexp(lw, 0)


def weights(elbo, vae, data, mask, seed):
    pyro.set_rng_seed(seed)
    model_trace, guide_trace = elbo.get_traces(vae.model, vae.guide, (data, mask), {})
    return elbo.weigh(model_trace, guide_trace), guide_trace


@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("iwae", 3)])
def test_objective_is_mmvae_plus_with_the_hand_summed_mixture_prior(estimator, K):
    """log w = MMVAE+'s log w + beta [log sum_c pi_c p(z|c) - log N(z; 0, I)] on available
    strata (beta 1.7, missing modalities), values and gradients."""
    vae, plus = tiny()
    data, mask, present = make_data()
    ours, trace = weights(CMVAEELBO(K, estimator), vae, data, mask, seed=3)
    theirs, trace_plus = weights(MMVAEPlusELBO(K, estimator), plus, data, mask, seed=3)
    z = trace.nodes["z"]["value"]
    assert torch.equal(z, trace_plus.nodes["z"]["value"])  # the same draws
    standard = log_normal(z, torch.zeros(DZ), torch.ones(DZ))
    hand = theirs.log_weights + 1.7 * present * (hand_mixture_log_prior(vae, z) - standard)
    torch.testing.assert_close(ours.log_weights, hand)
    assert ours.log_weights.shape == (K, M, B)
    w = theirs.stratum_weights
    loss = -(w * reduce(ours.log_weights, estimator)).sum()
    loss_hand = -(w * reduce(hand, estimator)).sum()
    torch.testing.assert_close(loss, loss_hand)
    params = list(vae.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    grads_hand = torch.autograd.grad(loss_hand, params, allow_unused=True)
    for g, h in zip(grads, grads_hand, strict=True):
        torch.testing.assert_close(g, h)
    index = [i for i, p in enumerate(params) if p is vae.cluster_loc][0]
    assert grads[index].abs().sum() > 0
    # the ELBO's loss is this objective
    pyro.set_rng_seed(3)
    value = CMVAEELBO(K, estimator).differentiable_loss(vae.model, vae.guide, data, mask)
    torch.testing.assert_close(value, loss)


@pytest.mark.parametrize("estimator,K", [("elbo", 1), ("iwae", 2), ("dreg", 2)])
def test_loss_equals_the_explicit_sum_over_clusters(estimator, K):
    """beta = 1: the enumerated objective is log sum_c of the whole log-weight with c fixed,
    each c run as its own conditioned model (Pyro's ``condition``) against the same guide."""
    vae, _ = tiny(beta=1.0)
    data, mask, present = make_data()
    elbo = CMVAEELBO(K, estimator)
    ours, guide_trace = weights(elbo, vae, data, mask, seed=5)
    base = MultimodalELBO(K, estimator)
    per_cluster = []
    for c in range(C):
        fixed = poutine.condition(vae.model, data={"c": torch.tensor(c)})
        replayed = poutine.replay(base._in_particle_plate(fixed), trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(data, mask)
        per_cluster.append(base.weigh(model_trace, guide_trace).log_weights)
    explicit = torch.logsumexp(torch.stack(per_cluster), 0)
    available = present.expand(K, M, B)
    torch.testing.assert_close(ours.log_weights[available], explicit[available])
    pyro.set_rng_seed(5)
    value = -elbo.loss(vae.model, vae.guide, data, mask)
    hand = ours.stratum_weights * reduce(explicit.masked_fill(~available, 0.0), estimator)
    assert value == pytest.approx(float(hand.detach().sum()), rel=1e-5)


def test_one_cluster_at_the_origin_is_mmvae_plus_with_dreg_gradients():
    """C = 1, mu = 0, sigma = 1: the mixture prior is MMVAE+'s N(0, I); DReG gradients of the
    shared networks agree."""
    vae, plus = tiny(clusters=1)
    with torch.no_grad():
        vae.cluster_loc.zero_()
        vae.cluster_raw_scale.fill_(math.log(math.e - 1))
    data, mask, _ = make_data()
    losses = []
    for model, elbo in ((vae, CMVAEELBO(3, "dreg")), (plus, MMVAEPlusELBO(3, "dreg"))):
        pyro.set_rng_seed(7)
        losses.append(elbo.differentiable_loss(model.model, model.guide, data, mask))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)
    shared = list(plus.parameters())
    g0 = torch.autograd.grad(losses[0], shared)
    g1 = torch.autograd.grad(losses[1], shared)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cluster_site_is_enumerated_in_the_model_and_absent_from_the_training_guide():
    vae, _ = tiny()
    data, mask, _ = make_data()
    model_trace, guide_trace = CMVAEELBO(2).get_traces(vae.model, vae.guide, (data, mask), {})
    site = model_trace.nodes["c"]
    assert site["infer"]["enumerate"] == "parallel"
    assert torch.equal(site["value"].flatten(), torch.arange(C))
    assert site["value"].shape == (C, 1, 1, 1)  # left of particles, strata, data
    assert "c" not in guide_trace.nodes
    # the loss trains the cluster parameters and the gradient is finite
    loss = CMVAEELBO(2, "iwae").differentiable_loss(vae.model, vae.guide, data, mask)
    loss.backward()
    assert torch.isfinite(vae.cluster_logits.grad).all() and vae.cluster_logits.grad.abs().sum() > 0


def test_unstratified_guide_draws_c_from_its_exact_conditional():
    """log p(c) + log p(z|c) - log q(c|z) = log p(z) for every c: importance weights are the
    marginal prior's, whichever cluster is drawn."""
    vae, _ = tiny()
    data, mask, _ = make_data()
    trace = poutine.trace(vae.guide).get_trace(data, mask, stratify=False)
    z, q_c = trace.nodes["z"]["value"], trace.nodes["c"]["fn"]
    for c in range(C):
        cc = torch.full((B,), c)
        joint = vae.cluster_prior().log_prob(cc) + vae.latent_given_cluster(cc).log_prob(z)
        torch.testing.assert_close(joint - q_c.log_prob(cc), hand_mixture_log_prior(vae, z))
    assert trace.nodes["c"]["scale"] == pytest.approx(1.7)  # scaled as the model's c


def test_cluster_posterior_averages_the_present_experts():
    vae, _ = tiny()
    data, mask, present = make_data()
    probs = vae.cluster_posterior(data, mask)
    assert probs.shape == (B, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B))
    loc_z = torch.stack([vae.mods[f"m{i}"].encoder.loc_z(data[f"m{i}"]) for i in range(M)])
    row = 0  # only m0 observed
    torch.testing.assert_close(probs[row], vae.cluster_log_posterior(loc_z[0, row]).exp())
    assert torch.equal(vae.assign_clusters(data, mask), probs.argmax(-1))


def test_predictive_and_render_model():
    vae, _ = tiny()
    data, _, _ = make_data()
    prior = Predictive(vae.model, num_samples=3)(batch_size=5)
    assert prior["c"].shape == (3, 5) and prior["z"].shape == (3, 5, DZ)
    cross = Predictive(vae.model, guide=vae.guide, num_samples=2)({"m0": data["m0"]},
                                                                   sample_missing=True)
    assert cross["x_m1"].shape == (2, B, X) and cross["c"].shape == (2, B)
    graph = pyro.render_model(vae.model, model_args=(data,), render_distributions=True)
    assert "c" in graph.source and "z" in graph.source
    assert vae.sample(4)["m2"].shape == (4, X)


def test_bad_cluster_count_is_a_clear_error():
    mods = [Modality("m0", (X,), "normal", LinearEncoder(), nn.Linear(DZ + DW, X))]
    with pytest.raises(ValueError, match="num_clusters"):
        CMVAE(mods, DZ, DW, num_clusters=0)
    with pytest.raises(ValueError, match="cmvae_clusters"):
        resolve_settings("cmvae", cmvae_clusters=0)


# ---------------------------------------------------------------------- clustering metrics
def test_matched_accuracy_hand_cases():
    # a relabelling is perfect
    assert clustering_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    # best matching: cluster 1 -> label 0 (2), cluster 0 -> label 1 (2): 4 of 6
    assert clustering_accuracy([0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1]) == pytest.approx(4 / 6)
    # more clusters than labels: one cluster stays unmatched and counts as wrong
    assert clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == pytest.approx(3 / 4)
    # table cluster x label: c0 = {y0: 1, y1: 2}, c1 = {y0: 3}; best 1->0 (3) + 0->1 (2)
    assert clustering_accuracy([0, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0]) == pytest.approx(5 / 6)


def test_nmi_ari_hand_cases():
    perfect = clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    # one cluster for everything: no information, ARI 0
    single = clustering_scores([0, 0, 1, 1], [5, 5, 5, 5])
    assert single["nmi"] == pytest.approx(0.0) and single["ari"] == pytest.approx(0.0)
    assert single["accuracy"] == 0.5 and single["num_clusters_used"] == 1
    # independent 2x2 split: I(Y;C) = 0; pairs: sum C(n_ij, 2) = 0, rows and columns 2 each,
    # expected 2 * 2 / C(4, 2) = 2/3, max (2 + 2) / 2 = 2: ARI = (0 - 2/3) / (2 - 2/3) = -0.5
    split = clustering_scores([0, 0, 1, 1], [0, 1, 0, 1])
    assert split["nmi"] == pytest.approx(0.0, abs=1e-12) and split["ari"] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="one entry per data point"):
        clustering_scores([0, 1], [0])
    with pytest.raises(ValueError, match="integers"):
        clustering_accuracy([0.5, 1.0], [0, 1])


def fake_polymnist(n, seed=0, modalities=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    data = {f"m{i}": torch.rand(n, 3, 28, 28, generator=g) for i in range(modalities)}
    return MultimodalTensorDataset(data, labels, name="fake")


def test_zoo_preset_cli_and_clustering_evaluation():
    settings = resolve_settings("cmvae", "cmvae_polymnist")
    expected = {"latent_dim": 32, "private_dim": 32, "beta": 2.5, "nets": "resnet",
                "posterior": "laplace", "scale_param": "softmax", "cmvae_clusters": 10,
                "estimator": "dreg", "num_particles": 10, "epochs": 250}
    assert {k: settings[k] for k in expected} == expected
    assert PRESETS["cmvae_polymnist"]["model"] == "cmvae"
    assert resolve_settings("cmvae", dataset_name="polymnist-mini")["cmvae_clusters"] == 10
    ds = fake_polymnist(24)
    spec = build_model("cmvae", ds, latent_dim=4, private_dim=2, hidden=(8,), cmvae_clusters=3)
    assert isinstance(spec.vae, CMVAE) and isinstance(spec.elbo, CMVAEELBO)
    assert spec.vae.num_clusters == 3
    data, _ = next(iter(ds.batches(4)))
    assert math.isfinite(spec.elbo.loss(spec.vae.model, spec.vae.guide, data))
    args = build_parser().parse_args(["train", "--model", "cmvae", "--preset",
                                      "cmvae_polymnist"])
    assert (args.model, args.preset) == ("cmvae", "cmvae_polymnist")
    out = evaluate_clustering(spec.vae, ds, batch_size=10, max_points=20)
    assert out["points"] == 20 and out["num_clusters"] == 3
    assert set(out["model"]) == set(out["kmeans_z"]) == {"nmi", "ari", "accuracy",
                                                          "num_clusters_used"}
    json.dumps(out)
    assert supports_clustering(spec.vae) is None
    assert "no cluster posterior" in supports_clustering(MMVAEPlus(
        [Modality("m0", (X,), "normal", LinearEncoder(), nn.Linear(DZ + DW, X))], DZ, DW))
    assert np.isfinite(out["model"]["nmi"])


def test_evaluate_runs_clustering_only_when_named():
    from pyro_mmvae.cli import build_parser as parser
    from pyro_mmvae.metrics.evaluate import evaluate_model, parse_metrics

    assert "clustering" not in parse_metrics(None)
    assert parse_metrics("coherence,clustering") == ("coherence", "clustering")
    ds = fake_polymnist(16)
    spec = build_model("cmvae", ds, latent_dim=4, private_dim=2, hidden=(8,), cmvae_clusters=3)
    out = evaluate_model(spec.vae, ds, ds, metrics="clustering", batch_size=8)
    assert out["clustering"]["points"] == 16
    assert set(out["clustering"]["kmeans_z"]) >= {"nmi", "ari", "accuracy"}
    other = build_model("mmvae_plus", ds, latent_dim=4, private_dim=2, hidden=(8,))
    skipped = evaluate_model(other.vae, ds, ds, metrics=["clustering"], batch_size=8)
    assert "no cluster posterior" in skipped["clustering"]["skipped"]
    args = parser().parse_args(["evaluate", "RUN", "--metrics", "clustering"])
    assert args.metrics == ("clustering",)


@pytest.mark.slow
def test_default_mini_run_is_above_chance(tmp_path):
    """The default polymnist-mini recipe through the CLI: coherence above chance (measured
    0.860 at 12 epochs), then ``evaluate --metrics clustering`` scores the clusters."""
    from pyro_mmvae import cli

    run = str(tmp_path / "run")
    assert cli.main(["train", "--model", "cmvae", "--precision", "32", "--out", run,
                     "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["conditional_coherence"] > 0.5, summary["coherence_matrix"]
    assert cli.main(["evaluate", run, "--metrics", "clustering", "--no-progress"]) == 0
    scores = json.loads((tmp_path / "run/eval.json").read_text())["clustering"]
    assert scores["model"]["nmi"] > 0.3 and scores["kmeans_z"]["nmi"] > 0.5
