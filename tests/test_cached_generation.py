"""The cached cross-generation engine against the model's own ``generate``, per subset.

Every source subset's posterior is built from one pass of the encoders
(``encode_experts``); the images decoded from it must equal those of ``vae.generate`` on the
sources alone — the same numbers and, for mixture posteriors and MMVAE+'s private latents,
the same random draws — and the coherence figures must be identical.
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_mmvae.data import load_dataset
from pyro_mmvae.distributions.subsets import source_subsets
from pyro_mmvae.metrics.coherence import (
    conditional_coherence,
    cross_generate,
    supports_cached_generation,
)
from pyro_mmvae.zoo import build_model

torch.set_num_threads(1)

MODELS = ["mmvae", "mvae", "mopoe", "mmvae_plus", "mmvae_private", "jmvae", "telbo", "mvtcae",
          "crmvae"]


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("polymnist-mini", split="test").subset(torch.arange(40))


def _plan(names):
    subsets = source_subsets(names, None)
    return [(s, [t for t in names if t not in s]) for s in subsets]


def _perturb(vae):
    """Random weights, so that experts differ and mixtures pick visibly different modes."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("name", MODELS)
def test_cached_engine_reproduces_generate(name, dataset):
    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    vae.eval()
    assert supports_cached_generation(vae)
    batch, _ = next(iter(dataset.batches(17)))
    plan = _plan(vae.names)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        direct = cross_generate(vae, batch, plan, engine="generate")
        pyro.set_rng_seed(3)
        cached = cross_generate(vae, batch, plan, engine="cached", chunk=50)
    assert direct.keys() == cached.keys()
    assert len(direct) == sum(len(t) for _, t in plan)
    for key, images in direct.items():
        torch.testing.assert_close(cached[key], images, atol=1e-5, rtol=1e-5, msg=str(key))


@pytest.mark.parametrize("name", ["mmvae", "mvae", "mmvae_plus"])
def test_coherence_figures_do_not_depend_on_the_engine(name, dataset):
    class AlwaysRight:
        """Stands in for the classifiers: "predicts" the label hidden in pixel (0, 0, 0)."""

        names = tuple(dataset.modalities)
        device = torch.device("cpu")
        test_accuracy = {n: 1.0 for n in names}

        def predict(self, target, images):
            return (images[:, 0, 0, 0] * 1000).long() % 10

    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    results = {}
    for engine in ("generate", "cached"):
        pyro.set_rng_seed(0)
        results[engine] = conditional_coherence(vae, dataset, AlwaysRight(), subset_sizes=None,
                                                batch_size=16, engine=engine)
    assert results["cached"]["by_subset"] == results["generate"]["by_subset"]
    assert results["cached"]["num_datapoints"] == 40


def test_unknown_engine_and_models_without_a_cache_are_refused(dataset):
    class Plain:
        names = ("m0", "m1")

        def generate(self, data, sources, targets=None):
            return {t: data[sources[0]] for t in targets}

    batch, _ = next(iter(dataset.batches(4)))
    assert not supports_cached_generation(Plain())
    out = cross_generate(Plain(), batch, [(("m0",), ["m1"])])  # auto: falls back
    assert torch.equal(out[("m0",), "m1"], batch["m0"])
    with pytest.raises(ValueError, match="engine"):
        cross_generate(Plain(), batch, [], engine="fast")
    with pytest.raises(ValueError, match="encode_experts"):
        cross_generate(Plain(), batch, [], engine="cached")


@pytest.mark.parametrize("name", [m for m in MODELS if m not in ("mmvae_plus", "mmvae_private")])
def test_generate_equals_decoding_the_posterior_location(name, dataset):
    """``generate`` (through the expert cache) decodes the point of ``posterior_location``
    computed from the sources alone, with the same random draws."""
    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    vae.eval()
    batch, _ = next(iter(dataset.batches(9)))
    for sources in (["m0"], ["m1", "m3"], ["m0", "m2", "m4"]):
        given = {s: batch[s] for s in sources}
        with torch.no_grad():
            pyro.set_rng_seed(5)
            out = vae.generate(batch, sources)
            pyro.set_rng_seed(5)
            z = vae.posterior_location(given, sources)
        for t in vae.names:
            torch.testing.assert_close(out[t], vae.mods[t].mean(z), atol=1e-5, rtol=1e-5)


def test_mmvae_plus_generate_by_hand(dataset):
    """MMVAE+: z is the mean of the source expert drawn per row; a source target keeps its own
    private mean, another target gets w from the prior (same draws as a hand computation)."""
    from pyro_mmvae.distributions.experts import StratifiedMixture
    from pyro_mmvae.models.mmvae_plus import concat_latents

    vae = build_model("mmvae_plus", dataset, hidden=(32,), latent_dim=4, private_dim=3).vae
    _perturb(vae)
    vae.eval()
    batch, _ = next(iter(dataset.batches(9)))
    sources = ["m1", "m3"]
    with torch.no_grad():
        pyro.set_rng_seed(11)
        out = vae.generate(batch, sources, targets=["m1", "m2"])
        pyro.set_rng_seed(11)
        filled, _ = vae.prepare({s: batch[s] for s in sources})
        loc_z, scale_z, loc_w, _ = vae.encode_all(filled, sources)
        z = StratifiedMixture(loc_z, scale_z, family=vae.posterior_family).choose_component().mean
        own = vae.mods["m1"].mean(concat_latents(z, loc_w[0]))
        other = vae.mods["m2"].mean(concat_latents(z, vae.private_prior().sample((z.size(0),))))
    torch.testing.assert_close(out["m1"], own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["m2"], other, atol=1e-5, rtol=1e-5)


class _HashClassifier:
    """Stands in for the classifiers: a "prediction" that changes with the image."""

    def __init__(self, names):
        self.names = tuple(names)
        self.device = torch.device("cpu")
        self.test_accuracy = {n: 1.0 for n in names}

    def predict(self, target, images):
        return (images.flatten(1).sum(1) * 1000).long() % 10


@pytest.mark.parametrize("name", ["mmvae", "mmvae_plus"])
def test_mixture_engine_is_the_expectation_over_the_drawn_expert(name, dataset):
    from pyro_mmvae.metrics.coherence import supports_mixture_coherence

    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    assert supports_mixture_coherence(vae)
    clf = _HashClassifier(dataset.modalities)
    pyro.set_rng_seed(0)
    mixture = conditional_coherence(vae, dataset, clf, subset_sizes=None, batch_size=16)
    if name == "mmvae":  # "auto" is "mixture" for mixture posteriors (no draw: same figures)
        assert mixture == conditional_coherence(vae, dataset, clf, subset_sizes=None,
                                                batch_size=16, engine="mixture")
    single = mixture["single_source_matrix"]
    for key, by_target in mixture["by_subset"].items():
        sources = key.split("+")
        for t, value in by_target.items():
            if name == "mmvae":  # deterministic decoding: exactly the mean of the singles
                assert value == pytest.approx(sum(single[e][t] for e in sources) / len(sources))
    # drawing one expert per row ("cached") scatters around the expectation
    draws = []
    for seed in range(24):
        pyro.set_rng_seed(seed)
        draws.append(conditional_coherence(vae, dataset, clf, subset_sizes=(4,), batch_size=40,
                                           engine="cached")["by_subset_size"][4])
    pyro.set_rng_seed(0)
    expected = conditional_coherence(vae, dataset, clf, subset_sizes=(1, 4),
                                     batch_size=40)["by_subset_size"][4]
    spread = torch.tensor(draws).std().item()
    assert abs(sum(draws) / len(draws) - expected) < 4 * spread / len(draws) ** 0.5 + 0.01
    assert spread > 0  # the drawn engine does vary


def test_mixture_engine_is_refused_for_other_posteriors(dataset):
    vae = build_model("mopoe", dataset, hidden=(32,), latent_dim=4).vae
    with pytest.raises(ValueError, match="mixture posterior"):
        conditional_coherence(vae, dataset, _HashClassifier(dataset.modalities),
                              engine="mixture")
    with pytest.raises(ValueError, match="engine"):
        conditional_coherence(vae, dataset, _HashClassifier(dataset.modalities),
                              engine="fast")


# ---------------------------------------------------------------------- posterior="sample"
@pytest.mark.parametrize("name", MODELS)
def test_sampled_posterior_cached_engine_reproduces_generate(name, dataset):
    """``posterior="sample"``: the cached engine draws the same z as ``generate`` does."""
    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    vae.eval()
    batch, _ = next(iter(dataset.batches(17)))
    plan = _plan(vae.names)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        direct = cross_generate(vae, batch, plan, engine="generate", posterior="sample")
        pyro.set_rng_seed(3)
        cached = cross_generate(vae, batch, plan, engine="cached", posterior="sample")
        pyro.set_rng_seed(3)
        means = cross_generate(vae, batch, plan, engine="cached")
    for key, images in direct.items():
        torch.testing.assert_close(cached[key], images, atol=1e-5, rtol=1e-5, msg=str(key))
    assert any(not torch.allclose(direct[k], means[k]) for k in direct)  # a draw, not the mean


def _repeated(dataset, rows):
    """One test tuple repeated ``rows`` times, so that draws of z can be compared with the
    distribution of that one tuple's posterior."""
    batch, _ = next(iter(dataset.batches(1)))
    return {m: x.expand(rows, *x.shape[1:]) for m, x in batch.items()}


@pytest.mark.parametrize("name", ["mvae", "mvtcae", "jmvae"])
def test_sampled_z_follows_the_product_posterior(name, dataset):
    r"""For a Gaussian posterior (a product of experts, or the joint encoder) the drawn z have
    the posterior's mean and standard deviation: 4000 draws, 5 standard errors."""
    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    vae.eval()
    rows = 4000
    data = _repeated(dataset, rows)
    for sources in (["m0"], ["m1", "m3"], list(vae.names)):
        with torch.no_grad():
            experts = vae.encode_experts(data)
            q = vae.posterior_from_experts(experts, sources)
            z = vae.generation_latents(experts, sources, ["m2"], posterior="sample")["m2"]
        loc, std = q.mean[0], q.stddev[0]
        rounding = 1e-5 * (1 + loc.abs())  # float32 resolution (perturbed scales reach 1e-6)
        assert torch.all((z.mean(0) - loc).abs() < 5 * std / rows ** 0.5 + rounding), sources
        assert torch.all((z.std(0) - std).abs() < 0.08 * std + rounding), sources


def test_sampled_z_of_a_mixture_follows_the_mixture(dataset):
    r"""MMVAE: from two sources, z is a draw from a uniformly chosen expert, so the draws have
    the mixture's mean :math:`(\mu_1 + \mu_2)/2` and variance
    :math:`\frac12\sum_e(\sigma_e^2 + \mu_e^2) - \bar\mu^2`."""
    vae = build_model("mmvae", dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    vae.eval()
    rows = 6000
    with torch.no_grad():
        experts = vae.encode_experts(_repeated(dataset, rows))
        z = vae.generation_latents(experts, ["m1", "m3"], ["m0"], posterior="sample")["m0"]
        q = [vae.posterior_from_experts(experts, [s]) for s in ("m1", "m3")]
    mu = torch.stack([qe.mean[0] for qe in q])
    second = torch.stack([qe.variance[0] + qe.mean[0] ** 2 for qe in q]).mean(0)
    mean = mu.mean(0)
    var = second - mean ** 2
    assert torch.all((z.mean(0) - mean).abs() < 5 * (var / rows).sqrt())
    torch.testing.assert_close(z.var(0), var, rtol=0.12, atol=0.0)


def test_mmvae_plus_samples_the_private_latent_of_a_source_target(dataset):
    """MMVAE+ with ``posterior="sample"``: a target among the sources gets a draw from its
    own q(w_t|x_t) (mean ``loc_w``, spread ``scale_w`` for the Laplace family); with
    ``"mean"`` exactly ``loc_w``."""
    from pyro_mmvae.distributions.experts import component_distribution

    vae = build_model("mmvae_plus", dataset, hidden=(32,), latent_dim=4, private_dim=3).vae
    _perturb(vae)
    vae.eval()
    rows = 4000
    with torch.no_grad():
        experts = vae.encode_experts(_repeated(dataset, rows))
        drawn = vae.generation_latents(experts, ["m1"], ["m1"], posterior="sample")["m1"]
        mean = vae.generation_latents(experts, ["m1"], ["m1"])["m1"]
    dz = experts["loc"].size(-1)
    qw = component_distribution(vae.posterior_family, experts["loc_w"][1, 0],
                                experts["scale_w"][1, 0])
    torch.testing.assert_close(mean[:, dz:], experts["loc_w"][1])
    w = drawn[:, dz:]
    assert torch.all((w.mean(0) - qw.mean).abs() < 5 * qw.stddev / rows ** 0.5)
    torch.testing.assert_close(w.std(0), qw.stddev, rtol=0.1, atol=0.0)


def test_unknown_posterior_point_is_refused(dataset):
    from pyro_mmvae.metrics.evaluate import EvalSettings

    vae = build_model("mvae", dataset, hidden=(32,), latent_dim=4).vae
    batch, _ = next(iter(dataset.batches(4)))
    for call in (lambda: vae.generate(batch, ["m0"], posterior="mode"),
                 lambda: cross_generate(vae, batch, [(("m0",), ["m1"])], posterior="mode"),
                 lambda: conditional_coherence(vae, dataset, _HashClassifier(dataset.modalities),
                                               posterior="mode"),
                 lambda: EvalSettings(posterior="mode").check()):
        with pytest.raises(ValueError, match="posterior point 'mode'.*mean, sample"):
            call()


def test_coherence_records_the_posterior_point_and_sampling_changes_it(dataset):
    vae = build_model("mvae", dataset, hidden=(32,), latent_dim=4).vae
    _perturb(vae)
    clf = _HashClassifier(dataset.modalities)
    pyro.set_rng_seed(0)
    mean = conditional_coherence(vae, dataset, clf, subset_sizes=(1,))
    sampled = [conditional_coherence(vae, dataset, clf, subset_sizes=(1,), posterior="sample")
               for _ in range(2)]
    assert mean["posterior"] == "mean" and sampled[0]["posterior"] == "sample"
    assert mean["by_subset"] == conditional_coherence(vae, dataset, clf,
                                                      subset_sizes=(1,))["by_subset"]
    assert sampled[0]["by_subset"] != sampled[1]["by_subset"]  # fresh draws each call
