"""Importance-sampled likelihoods against a linear-Gaussian multimodal model in closed form.

Model: z ~ N(0, I_D), x_m = W_m z + b_m + sigma * eps_m, so X_S ~ N(b_S, W_S W_S^T + sigma^2 I)
and the posterior q(z | X_S) is Gaussian with precision I + sum_{m in S} W_m^T W_m / sigma^2.
The guide is that exact posterior, with its Cholesky factor multiplied by ``proposal_scale``
to make it a deliberately imperfect (wider: > 1, narrower: < 1) proposal.
"""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_mmvae.likelihoods import NormalLikelihood
from pyro_mmvae.metrics.likelihood import (
    ImportanceEstimate,
    conditional_log_likelihood,
    dataset_log_likelihood,
    effective_sample_size,
    importance_log_weights,
    likelihood_summary,
    log_marginal,
    pareto_k,
    supports_unstratified,
    vae_log_likelihood,
)
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import MultimodalVAE

torch.set_num_threads(1)

SIGMA = 0.5
LATENT = 2
DIMS = (3, 4, 2)
NAMES = ("m0", "m1", "m2")


class LinearGaussianVAE(MultimodalVAE):
    """Linear decoders, Normal likelihood of fixed scale, exact Gaussian posterior as guide."""

    def __init__(self, proposal_scale: float = 1.0, seed: int = 0, **kwargs) -> None:
        g = torch.Generator().manual_seed(seed)
        modalities = []
        for name, dim in zip(NAMES, DIMS, strict=True):
            linear = nn.Linear(LATENT, dim)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(dim, LATENT, generator=g))
                linear.bias.copy_(torch.randn(dim, generator=g))
            modalities.append(Modality(name, (dim,), NormalLikelihood(SIGMA), nn.Identity(),
                                       linear, weight=kwargs.pop(f"weight_{name}", 1.0)))
        super().__init__(modalities, LATENT, **kwargs)
        self.proposal_scale = proposal_scale
        self.double()

    def exact_posterior(self, data, present):
        precision = torch.eye(LATENT, dtype=torch.float64)
        shift = 0.0
        for i, (name, mod) in enumerate(self.mods.items()):
            w, b = mod.decoder.weight, mod.decoder.bias
            on = present[i].double()
            precision = precision + on[:, None, None] * (w.t() @ w) / SIGMA**2
            shift = shift + on[:, None] * ((data[name] - b) @ w) / SIGMA**2
        cov = torch.linalg.inv(precision)
        return (cov @ shift.unsqueeze(-1)).squeeze(-1), cov

    def latent_posterior(self, data, present, strata, stratify):
        mean, cov = self.exact_posterior(data, present)
        return dist.MultivariateNormal(mean, scale_tril=self.proposal_scale
                                       * torch.linalg.cholesky(cov))

    def exact_log_p(self, data, names):
        """log N(X_S; b_S, W_S W_S^T + sigma^2 I) per data point."""
        w = torch.cat([self.mods[n].decoder.weight for n in names]).detach()
        b = torch.cat([self.mods[n].decoder.bias for n in names]).detach()
        cov = w @ w.t() + SIGMA**2 * torch.eye(len(b), dtype=torch.float64)
        return dist.MultivariateNormal(b, cov).log_prob(torch.cat([data[n] for n in names], -1))


def sample_data(vae: LinearGaussianVAE, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return {name: mod.decoder(z) + SIGMA * torch.randn(n, mod.event_shape[0], generator=g,
                                                          dtype=torch.float64)
                for name, mod in vae.mods.items()}


@pytest.fixture
def vae():
    return LinearGaussianVAE()


@pytest.fixture
def data(vae):
    return sample_data(vae, 8)  # B * D = 16: chunked draws reproduce unchunked ones exactly


def delta_method_error(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Standard error of :math:`\log\frac1K\sum_k w_k` per point: std(w) / (sqrt(K) mean(w))."""
    w = torch.exp(log_weights - log_weights.max(0).values)
    return w.std(0) / (math.sqrt(w.size(0)) * w.mean(0))


def mean_abs_error(vae, data, names, num_samples, seed=0, chunk_size=None):
    pyro.set_rng_seed(seed)
    estimate = vae_log_likelihood(vae, data, names, num_samples, chunk_size)
    return float((estimate.log_likelihood - vae.exact_log_p(data, names)).abs().mean())


@pytest.mark.parametrize("names", [NAMES, ("m0",), ("m1", "m2")])
def test_exact_posterior_gives_the_exact_likelihood_with_small_k(vae, data, names):
    pyro.set_rng_seed(0)
    estimate = vae_log_likelihood(vae, data, names, num_samples=100)
    assert estimate.log_weights.shape == (100, 8)
    torch.testing.assert_close(estimate.log_likelihood, vae.exact_log_p(data, names),
                               atol=1e-9, rtol=0)
    assert bool((estimate.pareto_k < 0.5).all())
    torch.testing.assert_close(estimate.ess, torch.full((8,), 100.0, dtype=torch.float64))
    vae.proposal_scale = 1.1  # nearly exact: weights vary, the Pareto fit is genuine
    pyro.set_rng_seed(0)
    near = vae_log_likelihood(vae, data, names, num_samples=1000)
    assert float(near.pareto_k.max()) < 0.5
    assert float(near.ess.min()) > 500


def test_estimate_converges_to_the_closed_form_as_k_grows(vae, data):
    vae.proposal_scale = 1.5
    errors = {k: mean_abs_error(vae, data, NAMES, k) for k in (10, 100, 1000, 10000)}
    assert errors[1000] < errors[10]
    assert errors[10000] < errors[100]
    assert errors[1000] < 0.05, errors
    assert errors[10000] < 0.02, errors


def test_conditional_log_likelihood_matches_the_closed_form(vae, data):
    exact = vae.exact_log_p(data, NAMES) - vae.exact_log_p(data, ["m0"])
    pyro.set_rng_seed(0)
    estimate = conditional_log_likelihood(vae, data, ["m1", "m2"], ["m0"], num_samples=100)
    torch.testing.assert_close(estimate.log_likelihood, exact, atol=1e-9, rtol=0)
    vae.proposal_scale = 1.3
    pyro.set_rng_seed(0)
    estimate = conditional_log_likelihood(vae, data, ["m1", "m2"], ["m0"], num_samples=4000)
    assert float((estimate.log_likelihood - exact).abs().max()) < 0.05
    summary = estimate.summary()
    assert summary["numerator"]["num_samples"] == 4000 and "denominator" in summary
    assert math.isclose(summary["mean"], float(estimate.log_likelihood.mean()))


def test_a_poor_proposal_is_flagged_by_large_k(vae, data):
    vae.proposal_scale = 0.3  # far too narrow: misses the posterior's tails
    pyro.set_rng_seed(0)
    estimate = vae_log_likelihood(vae, data, num_samples=1000)
    assert float(estimate.pareto_k.median()) > 0.7
    assert float(estimate.ess.mean()) < 200
    summary = estimate.summary()
    assert summary["pareto_k"]["fraction_above_0.7"] >= 0.5
    assert mean_abs_error(vae, data, NAMES, 1000) > 0.1  # and it is biased low


@pytest.mark.parametrize("chunk_size", [1, 7, 256])
def test_chunked_and_unchunked_estimates_agree(vae, data, chunk_size):
    vae.proposal_scale = 1.3
    pyro.set_rng_seed(3)
    whole = vae_log_likelihood(vae, data, num_samples=600, chunk_size=600)
    pyro.set_rng_seed(3)
    chunked = vae_log_likelihood(vae, data, num_samples=600, chunk_size=chunk_size)
    torch.testing.assert_close(chunked.log_weights, whole.log_weights, atol=1e-10, rtol=0)


def test_chunks_agree_in_distribution_when_draws_differ(vae):
    data = sample_data(vae, 5)  # B * D = 10: chunks draw other numbers than one big draw
    vae.proposal_scale = 1.3
    pyro.set_rng_seed(0)
    whole = vae_log_likelihood(vae, data, num_samples=4000)
    chunked = vae_log_likelihood(vae, data, num_samples=4000, chunk_size=3)
    exact = vae.exact_log_p(data, NAMES)
    for estimate in (whole, chunked):
        assert float((estimate.log_likelihood - exact).abs().max()) < 0.03


def test_beta_and_modality_weights_do_not_change_the_likelihood(data):
    plain = LinearGaussianVAE(proposal_scale=1.3)
    weighted = LinearGaussianVAE(proposal_scale=1.3, beta=4.0, weight_m1=3.0)
    weighted.current_beta = 4.0
    pyro.set_rng_seed(0)
    a = vae_log_likelihood(plain, data, num_samples=50)
    pyro.set_rng_seed(0)
    b = vae_log_likelihood(weighted, data, num_samples=50)
    torch.testing.assert_close(a.log_weights, b.log_weights)


def test_masked_rows_are_scored_on_their_present_modalities(vae, data):
    mask = {"m2": torch.tensor([True, False] * 4)}
    pyro.set_rng_seed(0)
    estimate = log_marginal(vae.model, vae.guide, data, mask, num_samples=20, stratify=False)
    full = vae.exact_log_p(data, NAMES)
    partial = vae.exact_log_p(data, ["m0", "m1"])
    expected = torch.where(mask["m2"], full, partial)
    torch.testing.assert_close(estimate.log_likelihood, expected, atol=1e-9, rtol=0)


def test_a_plain_pyro_model_and_guide():
    """A user's own program: z ~ N(0, 1), x ~ N(z, 1) per data point, so p(x) = N(0, 2)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, spread=1.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, spread * math.sqrt(0.5)))

    x = torch.tensor([-1.0, 0.0, 2.5], dtype=torch.float64)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    lw = importance_log_weights(model, guide, x, num_samples=30, chunk_size=8,
                                max_plate_nesting=1)
    assert lw.shape == (30, 3)
    torch.testing.assert_close(lw, exact.expand(30, 3), atol=1e-6, rtol=0)
    pyro.set_rng_seed(0)
    wider = functools.partial(guide, spread=1.5)
    estimate = log_marginal(model, wider, x, num_samples=5000, max_plate_nesting=1)
    assert float((estimate.log_likelihood - exact).abs().max()) < 0.02


def test_global_latents_are_refused():
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale), obs=x)

    def guide(x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside the 'data' plate"):
        importance_log_weights(model, guide, torch.zeros(3), num_samples=2, max_plate_nesting=1)


def test_effective_sample_size_and_pareto_k_conventions():
    equal = torch.zeros(50, 2, dtype=torch.float64)
    torch.testing.assert_close(effective_sample_size(equal), torch.full((2,), 50.0,
                                                                        dtype=torch.float64))
    dominant = torch.full((50, 1), -1000.0, dtype=torch.float64)
    dominant[0] = 0.0
    assert abs(float(effective_sample_size(dominant)) - 1.0) < 1e-9
    assert torch.isnan(pareto_k(torch.randn(10, 3))).all()  # too few samples for a tail fit
    assert (pareto_k(equal) == 0).all()
    heavy = torch.distributions.StudentT(1.0).sample((2000, 1)).abs().log()  # k ~ 1
    assert float(pareto_k(heavy.double())) > 0.7


def test_guides_without_stratify_are_reported_not_crashed(vae, data):
    class Stratified:
        names = NAMES

        def model(self, data, mask=None):
            pass

        def guide(self, data, mask=None):
            pass

    reason = supports_unstratified(Stratified())
    assert reason is not None and "stratify" in reason
    assert supports_unstratified(vae) is None
    with pytest.raises(ValueError, match="stratify"):
        vae_log_likelihood(Stratified(), data)


def test_dataset_estimates_and_summary(vae):
    from pyro_mmvae.data.base import MultimodalTensorDataset

    data = sample_data(vae, 24, seed=5)
    dataset = MultimodalTensorDataset(data, torch.zeros(24, dtype=torch.long))
    vae.proposal_scale = 1.2
    pyro.set_rng_seed(0)
    result = dataset_log_likelihood(vae, dataset, subsets=[("m0",), ("m0", "m2")],
                                    num_samples=200, batch_size=10, max_points=20)
    assert result["num_datapoints"] == 20
    joint = result["joint"]
    assert isinstance(joint, ImportanceEstimate) and joint.log_weights.shape == (200, 20)
    head = {k: v[:20] for k, v in data.items()}
    assert float((joint.log_likelihood - vae.exact_log_p(head, NAMES)).abs().max()) < 0.1
    conditional = result["conditional"]["m1+m2|m0"]
    torch.testing.assert_close(conditional.log_likelihood,
                               joint.log_likelihood - result["subsets"]["m0"].log_likelihood)
    summary = likelihood_summary(result)
    assert set(summary["subsets"]) == {"m0", "m0+m2"}
    assert set(summary["conditional"]) == {"m1+m2|m0", "m1|m0+m2"}
    assert summary["joint"]["num_datapoints"] == 20 and summary["num_samples"] == 200
    assert summary["joint"]["pareto_k"]["median"] < 0.7
    with pytest.raises(ValueError, match="proper subsets"):
        dataset_log_likelihood(vae, dataset, subsets=[NAMES])


@pytest.mark.parametrize("name", ["mmvae", "mvae", "mopoe"])
def test_zoo_models_give_importance_weighted_bounds_that_tighten_with_k(name):
    """Mixture (MMVAE, MoPoE) and product (MVAE) proposals of the library's own models:
    log p-hat rises with K (the IWAE bound tightens in expectation) and a subset scores
    only its own modalities."""
    from pyro_mmvae.data import load_dataset
    from pyro_mmvae.zoo import build_model

    dataset = load_dataset("polymnist-mini", split="test")
    vae = build_model(name, dataset, hidden=(32,), latent_dim=4).vae
    batch, _ = next(iter(dataset.batches(6)))
    pyro.set_rng_seed(0)
    single = vae_log_likelihood(vae, batch, num_samples=1).log_likelihood
    many = vae_log_likelihood(vae, batch, num_samples=200, chunk_size=64)
    assert many.log_weights.shape == (200, 6) and bool(torch.isfinite(many.log_weights).all())
    assert float(many.log_likelihood.mean()) > float(single.mean())
    alone = vae_log_likelihood(vae, batch, ["m0"], num_samples=50).log_likelihood
    assert bool((alone > many.log_likelihood).all())  # one image is likelier than five


# ---------------------------------------------------------------------- proposals
class ExpertLinearGaussianVAE(LinearGaussianVAE):
    """With unimodal experts: the exact Gaussian factor of each x_m in z, made diagonal."""

    def expert_params(self, data):
        locs, scales = [], []
        for name, mod in self.mods.items():
            w, b = mod.decoder.weight.detach(), mod.decoder.bias.detach()
            precision = w.t() @ w / SIGMA**2
            cov = torch.linalg.inv(precision)
            locs.append(((data[name] - b) @ w / SIGMA**2) @ cov)
            scales.append(cov.diagonal().sqrt().expand(len(data[name]), LATENT))
        return torch.stack(locs), torch.stack(scales)


@pytest.mark.parametrize("proposal", ["model", "mixture", "refined"])
@pytest.mark.parametrize("names", [NAMES, ("m1",), ("m0", "m2")])
def test_every_proposal_gives_the_exact_likelihood(proposal, names):
    vae = ExpertLinearGaussianVAE(proposal_scale=1.2)
    data = sample_data(vae, 8)
    pyro.set_rng_seed(0)
    estimate = vae_log_likelihood(vae, data, names, num_samples=4000, proposal=proposal,
                                  refine_steps=30)
    exact = vae.exact_log_p(data, names)
    # within 4 delta-method standard errors of the closed form, and below 0.1 nats (the
    # refined proposal is a diagonal Normal of a correlated posterior: the lowest ESS)
    error = (estimate.log_likelihood - exact).abs()
    assert bool((error < 4 * delta_method_error(estimate.log_weights) + 0.005).all())
    assert float(error.max()) < 0.1
    assert float(estimate.pareto_k.max()) < 0.7
    assert float(estimate.ess.min()) > 100


def test_better_proposals_repair_a_narrow_guide_and_the_best_is_chosen():
    """q(z|X) at 0.3 times the posterior's width misses its tails (k-hat > 0.7): the
    defensive mixture and the refined proposal bring k-hat below 0.7 and the estimate to
    the closed form, and dataset_log_likelihood reports the best of them on top."""
    from pyro_mmvae.data.base import MultimodalTensorDataset

    vae = ExpertLinearGaussianVAE(proposal_scale=0.3)
    data = sample_data(vae, 16, seed=4)
    exact = vae.exact_log_p(data, NAMES)
    pyro.set_rng_seed(0)
    dataset = MultimodalTensorDataset(data, torch.zeros(16, dtype=torch.long))
    result = dataset_log_likelihood(vae, dataset, num_samples=2000, batch_size=8,
                                    proposals="all")
    errors = {p: float((r["joint"].log_likelihood - exact).abs().mean())
              for p, r in result["proposals"].items()}
    k_above = {p: float((r["joint"].pareto_k > 0.7).double().mean())
               for p, r in result["proposals"].items()}
    assert k_above["model"] >= 0.5 and errors["model"] > 0.1
    for better in ("mixture", "refined"):
        assert k_above[better] <= 0.1, k_above
        assert errors[better] < 0.05, errors
        # a tighter (higher) bound on average than the narrow guide's
        assert float(result["proposals"][better]["joint"].log_likelihood.mean()) > float(
            result["proposals"]["model"]["joint"].log_likelihood.mean())
    assert result["best"] in ("mixture", "refined")
    assert result["joint"] is result["proposals"][result["best"]]["joint"]
    summary = likelihood_summary(result)
    assert summary["best_proposal"] == result["best"] and summary["warnings"] == []
    assert set(summary["proposals"]) == {"model", "mixture", "refined"}
    info = summary["proposals"]["refined"]["info"]
    assert info["bound_end"] > info["bound_start"]  # the gradient steps raised the bound
    only_model = likelihood_summary(dataset_log_likelihood(vae, dataset, num_samples=200,
                                                           batch_size=8))
    assert only_model["best_proposal"] == "model"
    assert any("k-hat > 0.7" in w and "'model'" in w for w in only_model["warnings"])


def test_mixture_proposal_without_experts_mixes_q_and_the_prior(vae, data):
    """LinearGaussianVAE's encoders are not experts: the mixture falls back to q + prior."""
    from pyro_mmvae.metrics.likelihood import _expert_product

    vae.expert_params = None  # no callable experts
    assert _expert_product(vae, data) is None
    pyro.set_rng_seed(0)
    estimate = vae_log_likelihood(vae, data, num_samples=3000, proposal="mixture")
    assert float((estimate.log_likelihood - vae.exact_log_p(data, NAMES)).abs().max()) < 0.05


def test_defensive_mixture_density_and_sampling():
    from pyro_mmvae.infer.importance import DefensiveMixture

    a = dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)
    b = dist.Normal(torch.full((3, 2), 5.0), 0.5).to_event(1)
    mixture = DefensiveMixture([a, b], [0.75, 0.25])
    z = torch.randn(4, 3, 2)
    expected = torch.logaddexp(math.log(0.75) + a.log_prob(z), math.log(0.25) + b.log_prob(z))
    torch.testing.assert_close(mixture.log_prob(z), expected)
    pyro.set_rng_seed(0)
    draws = mixture.sample((4000,))
    assert draws.shape == (4000, 3, 2)
    near_b = (draws[..., 0] > 2.5).double().mean()
    assert abs(float(near_b) - 0.25) < 0.03
    expanded = mixture.expand((5, 3))
    assert expanded.sample().shape == (5, 3, 2)
    with pytest.raises(ValueError, match="one weight per component"):
        DefensiveMixture([a], [0.5, 0.5])
    with pytest.raises(ValueError, match="batch and event shape"):
        DefensiveMixture([a, dist.Normal(torch.zeros(2), 1.0).to_event(1)], [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown proposal"):
        vae_log_likelihood(LinearGaussianVAE(), sample_data(LinearGaussianVAE(), 2),
                           proposal="best")


def test_proposals_a_model_does_not_support_are_skipped_with_a_reason():
    from pyro_mmvae.metrics.likelihood import applicable_proposals

    class TwoLevels:
        likelihood_proposals = ("model",)

    kept, skipped = applicable_proposals(TwoLevels(), ("model", "mixture", "refined"))
    assert kept == ("model",) and set(skipped) == {"mixture", "refined"}
    assert "TwoLevels" in skipped["mixture"]
    assert applicable_proposals(object(), ("mixture",)) == (("mixture",), {})
    with pytest.raises(ValueError, match="none of mixture applies"):
        applicable_proposals(TwoLevels(), ("mixture",))
