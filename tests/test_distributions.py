"""Aggregations of experts against closed forms and direct computations."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.distributions import (
    StratifiedMixture,
    get_scale_fn,
    mopoe_components,
    nonempty_subsets,
    product_of_experts,
    subset_matrix,
)

torch.set_num_threads(1)


def _log_normal(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_is_the_normalised_product_of_densities(prior_expert):
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.3
    poe_loc, poe_scale = product_of_experts(loc, scale, prior_expert=prior_expert)
    # The log of the product of densities minus the log-density of the PoE Gaussian must be
    # the same constant for every z (the product is that Gaussian up to normalisation).
    z = torch.randn(50, 4, 2) * 3
    log_product = _log_normal(z.unsqueeze(1), loc, scale).sum(1)
    if prior_expert:
        log_product = log_product + _log_normal(z, torch.zeros(2), torch.ones(2))
    diff = log_product - _log_normal(z, poe_loc, poe_scale)
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-4)


def test_poe_closed_form_two_scalar_experts():
    loc = torch.tensor([[[1.0]], [[3.0]]])
    scale = torch.tensor([[[1.0]], [[0.5]]])
    m, s = product_of_experts(loc, scale, prior_expert=False)
    # precision 1 + 4 = 5, mean (1*1 + 4*3)/5
    assert torch.allclose(m, torch.tensor([[13.0 / 5]]))
    assert torch.allclose(s, torch.tensor([[5.0 ** -0.5]]))


def test_poe_masked_experts_drop_out_exactly():
    torch.manual_seed(1)
    loc, scale = torch.randn(3, 5, 4), torch.rand(3, 5, 4) + 0.2
    mask = torch.tensor([[True, False, True, True, False]] * 2 + [[False, True, True, True, True]])
    m, s = product_of_experts(loc, scale, mask)
    for b in range(5):
        keep = mask[:, b]
        mb, sb = product_of_experts(loc[keep, b : b + 1], scale[keep, b : b + 1])
        assert torch.allclose(m[b], mb[0], atol=1e-6) and torch.allclose(s[b], sb[0], atol=1e-6)


def test_poe_is_stable_for_tiny_scales():
    loc = torch.randn(2, 3, 4)
    scale = torch.full((2, 3, 4), 1e-30)
    m, s = product_of_experts(loc, scale)
    assert torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()


def test_poe_without_prior_needs_an_expert():
    with pytest.raises(ValueError, match="at least one present expert"):
        product_of_experts(torch.zeros(2, 1, 3), torch.ones(2, 1, 3),
                           torch.zeros(2, 1, dtype=torch.bool), prior_expert=False)


@pytest.mark.parametrize("num", [1, 2, 3, 4, 5])
def test_subsets_enumerated(num):
    subsets = nonempty_subsets(num)
    assert len(subsets) == 2**num - 1 == len(set(subsets))
    assert all(len(s) > 0 and list(s) == sorted(s) for s in subsets)
    matrix = subset_matrix(num)
    assert matrix.shape == (2**num - 1, num)
    assert [tuple(torch.nonzero(r).flatten().tolist()) for r in matrix] == subsets


def test_stratified_mixture_density_matches_direct_sum():
    torch.manual_seed(2)
    loc, scale = torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.5
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = False
    q = StratifiedMixture(loc, scale, mask)
    z = q.rsample((6,))
    assert z.shape == (6, 3, 4, 2)
    for b in range(4):
        present = mask[:, b].nonzero().flatten()
        for m in range(3):
            comps = torch.stack([dist.Normal(loc[e, b], scale[e, b]).log_prob(z[:, m, b]).sum(-1)
                                 for e in present])
            direct = torch.log(comps.exp().mean(0))
            assert torch.allclose(q.log_prob(z)[:, m, b], direct, atol=1e-5)
    assert torch.allclose(q.stratum_weights.sum(0), torch.ones(4))
    assert q.stratum_weights[0, 1] == 0


def test_stratified_mixture_draws_each_stratum_from_its_expert():
    loc = torch.tensor([[[-100.0]], [[100.0]]])
    q = StratifiedMixture(loc, torch.full_like(loc, 0.01), family="laplace")
    z = q.rsample((100,))
    assert (z[:, 0] < -99).all() and (z[:, 1] > 99).all()
    expanded = q.expand((7, 2, 1))
    assert expanded.rsample().shape == (7, 2, 1, 1)


def test_mopoe_components_match_subset_poes():
    torch.manual_seed(3)
    loc, scale = torch.randn(3, 2, 4), torch.rand(3, 2, 4) + 0.3
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    c_loc, c_scale, c_mask = mopoe_components(loc, scale, mask)
    for j, subset in enumerate(nonempty_subsets(3)):
        m, s = product_of_experts(loc[list(subset)], scale[list(subset)], prior_expert=False)
        assert c_mask[j, 0] and c_mask[j, 1] == (1 not in subset)
        ok = c_mask[j]
        assert torch.allclose(c_loc[j][ok], m[ok], atol=1e-6)
        assert torch.allclose(c_scale[j][ok], s[ok], atol=1e-6)
    # MoPoE of a row with present set S is the uniform mixture over the subsets of S.
    q = StratifiedMixture(c_loc, c_scale, c_mask)
    assert torch.allclose(q.stratum_weights[:, 1].sum(), torch.tensor(1.0))
    assert int((q.stratum_weights[:, 1] > 0).sum()) == 3


def test_scale_parameterisations():
    raw = torch.randn(5, 8)
    assert torch.allclose(get_scale_fn("softmax")(raw).sum(-1), torch.full((5,), 8.0), atol=1e-4)
    assert (get_scale_fn("softplus")(raw) > 0).all()
    with pytest.raises(ValueError, match="unknown scale"):
        get_scale_fn("exp")


def test_subset_products_use_present_members_only():
    torch.manual_seed(4)
    loc, scale = torch.randn(3, 2, 4), torch.rand(3, 2, 4) + 0.3
    mask = torch.tensor([[True, True], [False, True], [True, True]])
    members = torch.tensor([[True, True, True], [False, True, False]])
    from pyro_mmvae.distributions import subset_products

    c_loc, c_scale, count = subset_products(loc, scale, members, mask, prior_expert=True)
    assert count.tolist() == [[2, 3], [0, 1]]
    m, s = product_of_experts(loc[[0, 2], :1], scale[[0, 2], :1], prior_expert=True)
    assert torch.allclose(c_loc[0, :1], m) and torch.allclose(c_scale[0, :1], s)
    # no present member + prior expert: the prior itself
    assert torch.allclose(c_loc[1, 0], torch.zeros(4))
    assert torch.allclose(c_scale[1, 0], torch.ones(4))
