"""Fréchet distances against closed forms, their speed, and the Inception FID code path."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import linalg

from pyro_mmvae.metrics.classifiers import ModalityClassifiers
from pyro_mmvae.metrics.frechet import (
    classifier_frechet_distance,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    have_pytorch_fid,
    inception_features,
    inception_fid,
    load_fid_inception,
    trace_sqrt_product,
)
from pyro_mmvae.nets.classifier import DigitClassifier

torch.set_num_threads(1)


def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q


def random_spd(dim: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, rank or dim, generator=g, dtype=torch.float64)
    return a @ a.t() / dim


def scipy_reference(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy's general matrix square root (slow, for checking)."""
    root = linalg.sqrtm(cov1.numpy() @ cov2.numpy())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1.numpy() + cov2.numpy() - 2 * root.real))


def test_one_dimensional_gaussians():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.0, 4.0)]:
        f64 = {"dtype": torch.float64}
        got = frechet_distance(torch.tensor([m1], **f64), torch.tensor([[s1**2]], **f64),
                               torch.tensor([m2], **f64), torch.tensor([[s2**2]], **f64))
        assert math.isclose(got, (m1 - m2) ** 2 + (s1 - s2) ** 2, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("dim", [5, 64])
def test_commuting_covariances_match_the_closed_form(dim):
    # Sigma_i = Q diag(a_i) Q^T commute: d^2 = |mu1 - mu2|^2 + sum_j (sqrt(a1_j) - sqrt(a2_j))^2.
    g = torch.Generator().manual_seed(dim)
    a1 = torch.rand(dim, generator=g, dtype=torch.float64) * 3 + 0.1
    a2 = torch.rand(dim, generator=g, dtype=torch.float64) * 3 + 0.1
    mu1, mu2 = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    expected = float((mu1.double() - mu2.double()).pow(2).sum()
                     + (a1.sqrt() - a2.sqrt()).pow(2).sum())
    for q in (torch.eye(dim, dtype=torch.float64), random_orthogonal(dim, 1)):
        cov1, cov2 = q @ torch.diag(a1) @ q.t(), q @ torch.diag(a2) @ q.t()
        assert math.isclose(frechet_distance(mu1, cov1, mu2, cov2), expected, rel_tol=1e-9)


def test_general_and_singular_covariances_match_scipy():
    mu1, mu2 = torch.zeros(30, dtype=torch.float64), torch.full((30,), 0.3, dtype=torch.float64)
    cases = [(random_spd(30, 1), random_spd(30, 2)),
             (random_spd(30, 3, rank=10), random_spd(30, 4)),          # singular Sigma_1
             (random_spd(30, 5, rank=7), random_spd(30, 6, rank=12))]   # both singular
    for cov1, cov2 in cases:
        expected = scipy_reference(mu1, cov1, mu2, cov2)
        assert math.isclose(frechet_distance(mu1, cov1, mu2, cov2), expected, rel_tol=1e-6)
        assert math.isclose(frechet_distance(mu2, cov2, mu1, cov1), expected, rel_tol=1e-6)
    cov = random_spd(30, 7)
    assert frechet_distance(mu1, cov, mu1, cov) < 1e-9


def test_zero_variance_coordinates_are_handled():
    cov1 = torch.diag(torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64))
    cov2 = torch.diag(torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64))
    mu = torch.zeros(3)
    assert math.isclose(frechet_distance(mu, cov1, mu, cov2), 2.0, rel_tol=1e-12)
    assert float(trace_sqrt_product(cov1, cov2)) == pytest.approx(4.0)


def test_features_estimate_the_distance_between_their_gaussians():
    g = torch.Generator().manual_seed(0)
    dim, n = 8, 200_000
    mix = torch.randn(dim, dim, generator=g) / 3
    x1 = torch.randn(n, dim, generator=g, dtype=torch.float64)
    x2 = torch.randn(n, dim, generator=g, dtype=torch.float64) @ mix.double().t() + 0.5
    cov2 = mix.double() @ mix.double().t()
    expected = frechet_distance(torch.zeros(dim), torch.eye(dim), torch.full((dim,), 0.5), cov2)
    assert frechet_distance_from_features(x1, x2) == pytest.approx(expected, rel=0.01)
    mu, cov = feature_statistics(x1[:1000])
    torch.testing.assert_close(cov, torch.cov(x1[:1000].t()))


def test_few_points_use_the_gram_route_and_agree_with_covariances():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(40, 100, generator=g, dtype=torch.float64)
    x2 = torch.randn(60, 100, generator=g, dtype=torch.float64) * 1.5 + 0.2
    via_cov = frechet_distance(*feature_statistics(x1), *feature_statistics(x2))
    assert frechet_distance_from_features(x1, x2) == pytest.approx(via_cov, rel=1e-10)
    assert frechet_distance_from_features(x1, x1) < 1e-9


def test_2048_dimensional_features_take_seconds():
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(3000, 2048, generator=g)
    x2 = torch.randn(3000, 2048, generator=g) * 1.1 + 0.05
    start = time.perf_counter()
    mu1, cov1 = feature_statistics(x1)
    mu2, cov2 = feature_statistics(x2)
    value = frechet_distance(mu1, cov1, mu2, cov2)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"2048-d Fréchet distance took {seconds:.1f} s"
    # Population value 2048 * (0.05^2 + (1 - 1.1)^2) = 25.6 plus the finite-sample bias.
    assert 20 < value < 2048


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance_from_features(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_from_features(torch.full((5, 3), math.nan), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


def test_classifier_frechet_distance_uses_penultimate_features():
    torch.manual_seed(0)
    classifiers = ModalityClassifiers({"m0": DigitClassifier((3, 28, 28), 10)})
    real = torch.rand(64, 3, 28, 28)
    features = classifiers.features("m0", real)
    assert features.shape == (64, 64 * 4 * 4)
    assert classifier_frechet_distance(classifiers, "m0", real, real) < 1e-6
    darker = real * 0.3
    assert classifier_frechet_distance(classifiers, "m0", real, darker) > 0.01
    with pytest.raises(ValueError, match="shape"):
        classifiers.features("m0", torch.rand(4, 1, 28, 28))


def random_fid_inception_state() -> dict[str, torch.Tensor]:
    """A randomly initialised state dict of the FID Inception network (the layout of
    pt_inception-2015-12-05-6726825d.pth), built from pytorch-fid's own blocks."""
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net.state_dict()


@pytest.mark.skipif(not have_pytorch_fid(), reason="pytorch-fid is not installed")
def test_inception_fid_loads_local_weights_without_downloading(tmp_path, monkeypatch):
    import torch.hub
    from pytorch_fid import inception as fid

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(fid, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state(), weights)
    net = load_fid_inception(weights)
    assert fid.load_state_dict_from_url is no_download  # restored after loading
    images = torch.rand(4, 3, 28, 28)
    features = inception_features(net, images)
    assert features.shape == (4, 2048) and bool(torch.isfinite(features).all())
    grey = inception_features(net, images[:, :1])
    assert grey.shape == (4, 2048)
    assert inception_fid(images, images, net=net) < 1e-9
    assert inception_fid(images, torch.rand(4, 3, 28, 28), net=net) >= 0.0

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="does not fit"):
        load_fid_inception(wrong)
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        load_fid_inception(tmp_path / "missing.pth")
