"""Annealed importance sampling against the linear-Gaussian model of test_likelihood.

log p(X_S) is known in closed form there (see test_likelihood's docstring); with the exact
posterior as the start proposal every AIS log-weight equals it, whatever the transitions.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_likelihood import (
    NAMES,
    ExpertLinearGaussianVAE,
    LinearGaussianVAE,
    delta_method_error,
    sample_data,
)

from pyro_mmvae.infer.annealed import annealed_log_weights, temperatures
from pyro_mmvae.infer.importance import ImportanceEstimate, importance_log_weights
from pyro_mmvae.metrics.likelihood import (
    CHEAP_PROPOSALS,
    PROPOSALS,
    dataset_log_likelihood,
    likelihood_summary,
    parse_proposals,
    vae_log_likelihood,
)


def test_schedules_run_from_zero_to_one_and_increase():
    for schedule in ("linear", "sigmoid"):
        betas = temperatures(20, schedule)
        assert betas.shape == (21,) and float(betas[0]) == 0.0 and float(betas[-1]) == 1.0
        assert bool((betas.diff() > 0).all())
    torch.testing.assert_close(temperatures(4, "linear"),
                               torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    sigmoid = temperatures(20, "sigmoid")  # denser at both ends than in the middle
    assert float(sigmoid[1] - sigmoid[0]) < float(sigmoid[11] - sigmoid[10])
    torch.testing.assert_close(temperatures(1, "sigmoid"), torch.tensor([0.0, 1.0],
                                                                         dtype=torch.float64))


@pytest.mark.parametrize("names", [NAMES, ("m1",)])
def test_exact_posterior_start_gives_constant_log_weights(names):
    """r = p(z|X): l(z) = log p(X) for every z, so every chain's weight is exactly p(X)."""
    vae = LinearGaussianVAE(proposal_scale=1.0)
    data = sample_data(vae, 8)
    pyro.set_rng_seed(0)
    estimate = vae_log_likelihood(vae, data, names, num_samples=30, proposal="annealed",
                                  annealed_start="model", annealed_temperatures=5,
                                  annealed_leapfrog=2)
    exact = vae.exact_log_p(data, names)
    assert estimate.log_weights.shape == (30, 8)
    torch.testing.assert_close(estimate.log_weights, exact.expand(30, 8), atol=1e-9, rtol=0)
    assert bool((estimate.pareto_k == 0).all())


def test_one_temperature_is_plain_importance_sampling():
    """T = 1, no pilot draw: the same draws and log-weights as importance_log_weights."""
    vae = LinearGaussianVAE(proposal_scale=0.5)
    data = sample_data(vae, 8)
    pyro.set_rng_seed(3)
    plain = importance_log_weights(vae.model, vae.guide, data, num_samples=40, stratify=False)
    pyro.set_rng_seed(3)
    annealed, info = annealed_log_weights(vae.model, vae.guide, data, num_samples=40,
                                          num_temperatures=1, pilot_samples=0, stratify=False)
    torch.testing.assert_close(annealed, plain.double())
    assert math.isnan(info["acceptance"])  # no transition at T = 1


@pytest.mark.parametrize("leapfrog", [1, 3])
def test_annealing_a_narrow_proposal_reaches_the_closed_form_within_its_error(leapfrog):
    """q at 0.3 times the posterior's width: plain IS is heavy-tailed and biased low; AIS
    from it matches log p(X) within a few delta-method standard errors, with k-hat < 0.7."""
    vae = ExpertLinearGaussianVAE(proposal_scale=0.3)
    data = sample_data(vae, 16, seed=4)
    exact = vae.exact_log_p(data, NAMES)
    pyro.set_rng_seed(0)
    log_weights, info = annealed_log_weights(vae.model, vae.guide, data, num_samples=200,
                                             num_temperatures=40, leapfrog_steps=leapfrog,
                                             chunk_size=64, stratify=False)
    estimate = ImportanceEstimate(log_weights)
    error = estimate.log_likelihood - exact
    se = delta_method_error(log_weights)
    assert bool((error.abs() < 4 * se + 0.01).all()), (error, se)
    # the mean over 16 independent points: within 4 of its standard errors
    assert abs(float(error.mean())) < 4 * float(se.square().sum().sqrt()) / 16 + 0.005
    khat = estimate.pareto_k  # plain IS from this q: k-hat > 0.7 on most points
    assert float(khat.median()) < 0.5 and int((khat > 0.7).sum()) <= 1, khat
    assert 0.3 < info["acceptance"] < 1.0 and info["leapfrog_steps"] == leapfrog


def test_annealed_is_tighter_than_plain_importance_sampling_with_as_many_samples():
    vae = ExpertLinearGaussianVAE(proposal_scale=0.3)
    data = sample_data(vae, 16, seed=4)
    exact = vae.exact_log_p(data, NAMES)
    pyro.set_rng_seed(0)
    plain = vae_log_likelihood(vae, data, num_samples=50, proposal="model")
    annealed = vae_log_likelihood(vae, data, num_samples=50, proposal="annealed",
                                  annealed_start="model", annealed_temperatures=20)
    assert annealed.num_samples == 50
    assert float(annealed.log_likelihood.mean()) > float(plain.log_likelihood.mean())
    assert float((exact - annealed.log_likelihood).mean()) < float(
        (exact - plain.log_likelihood).mean())
    assert float((annealed.pareto_k > 0.7).double().mean()) < float(
        (plain.pareto_k > 0.7).double().mean())
    assert float(annealed.ess.mean()) > float(plain.ess.mean())


def test_annealed_in_the_dataset_estimate_is_opt_in_and_reported():
    from pyro_mmvae.data.base import MultimodalTensorDataset

    vae = ExpertLinearGaussianVAE(proposal_scale=0.3)
    data = sample_data(vae, 8, seed=4)
    dataset = MultimodalTensorDataset(data, torch.zeros(8, dtype=torch.long))
    pyro.set_rng_seed(0)
    result = dataset_log_likelihood(vae, dataset, num_samples=60, batch_size=4,
                                    proposals="model,annealed", refine_steps=5,
                                    annealed_temperatures=10, annealed_samples=30)
    assert set(result["proposals"]) == {"model", "annealed"}
    assert result["proposals"]["annealed"]["joint"].log_weights.shape == (30, 8)
    summary = likelihood_summary(result)
    info = summary["proposals"]["annealed"]["info"]
    assert info["start"] == "refined" and info["num_temperatures"] == 10
    assert info["num_samples"] == 30 and 0 < info["acceptance"] <= 1
    assert summary["proposals"]["annealed"]["joint"]["num_samples"] == 30


def test_proposal_names_and_bad_options_are_refused():
    assert "annealed" in PROPOSALS and "annealed" not in CHEAP_PROPOSALS
    assert parse_proposals("all") == CHEAP_PROPOSALS
    assert parse_proposals("all,annealed") == (*CHEAP_PROPOSALS, "annealed")
    assert parse_proposals(["annealed", "model"]) == ("annealed", "model")
    with pytest.raises(ValueError, match="unknown proposal"):
        parse_proposals("annealed,bogus")
    vae = ExpertLinearGaussianVAE()
    data = sample_data(vae, 2)
    run = vae_log_likelihood
    for options, match in [
        ({"annealed_start": "annealed"}, "annealed_start"),
        ({"annealed_temps": 3}, "unknown option 'annealed_temps'"),
        ({"annealed_samples": 0}, "annealed_samples"),
        ({"annealed_temperatures": 0}, "temperatures must be >= 1"),
        ({"annealed_leapfrog": 0}, "leapfrog_steps"),
        ({"annealed_step_size": 0.0}, "step_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            run(vae, data, num_samples=30, proposal="annealed", **options)
    for options, match in [
        ({"schedule": "cubic"}, "unknown schedule"),
        ({"target_accept": 1.5}, "target_accept"),
        ({"adapt_rate": -1.0}, "adapt_rate"),
        ({"num_samples": 0}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            annealed_log_weights(vae.model, vae.guide, data, stratify=False, **options)


def _two_latent_model(x):
    """z ~ N(0, 1), u ~ N(0, 1), x ~ N(z + u, 1) per data point."""
    with pyro.plate("data", x.size(0), dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + u, 1.0), obs=x)


def test_a_model_latent_the_guide_does_not_propose_is_refused():
    def guide(x):
        with pyro.plate("data", x.size(0), dim=-1):
            pyro.sample("z", dist.Normal(x / 2, 1.0))

    with pytest.raises(ValueError, match=r"latent sites \['u'\] are not proposed"):
        annealed_log_weights(_two_latent_model, guide, torch.zeros(3), num_samples=4,
                             num_temperatures=2)


def test_a_plain_pyro_model_with_two_latent_sites():
    """z ~ N(0, 1), u ~ N(0, 1), x ~ N(z + u, 1): p(x) = N(x; 0, 3); a poor mean-field guide
    is annealed to the closed form on both sites."""

    def guide(x):
        with pyro.plate("data", x.size(0), dim=-1):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), 0.3))
            pyro.sample("u", dist.Normal(torch.zeros_like(x), 0.3))

    x = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    exact = dist.Normal(0.0, math.sqrt(3.0)).log_prob(x)
    pyro.set_rng_seed(0)
    plain = ImportanceEstimate(importance_log_weights(_two_latent_model, guide, x, num_samples=300,
                                                      max_plate_nesting=1).double())
    pyro.set_rng_seed(0)
    log_weights, _ = annealed_log_weights(_two_latent_model, guide, x, num_samples=300,
                                          num_temperatures=40, max_plate_nesting=1)
    annealed = ImportanceEstimate(log_weights)
    assert float((annealed.log_likelihood - exact).abs().max()) < 0.05
    assert float((plain.log_likelihood - exact).abs().max()) > 0.1
