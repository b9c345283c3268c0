"""The library behaves like Pyro users expect: Predictive, render_model, SVI, param stores."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive

from pyro_mmvae.data import polymnist_mini
from pyro_mmvae.train import TrainConfig, train
from pyro_mmvae.zoo import build_model

SMALL = {"hidden": (32,), "latent_dim": 4}


@pytest.fixture(scope="module")
def mini():
    data = polymnist_mini("train")
    return data.subset(torch.arange(256)), polymnist_mini("test").subset(torch.arange(64))


def first_batch(dataset, size=8):
    return next(iter(dataset.batches(size)))[0]


@pytest.mark.parametrize("name", ["mmvae", "mmvae_plus", "mvae", "mopoe", "jmvae"])
def test_predictive_samples_every_modality_from_the_prior(mini, name):
    vae = build_model(name, mini[0], **SMALL).vae
    samples = Predictive(vae.model, num_samples=3)(batch_size=5)
    assert samples["z"].shape == (3, 5, 4)
    for m in vae.names:
        x = samples[f"x_{m}"]
        assert x.shape == (3, 5, 3, 28, 28) and bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="batch_size"):
        vae.model()


@pytest.mark.parametrize("name", ["mmvae", "mmvae_plus", "mvae", "mopoe", "jmvae"])
def test_predictive_with_the_guide_generates_the_missing_modalities(mini, name):
    vae = build_model(name, mini[0], **SMALL).vae
    batch = first_batch(mini[1], 6)
    partial = {"m0": batch["m0"], "m2": batch["m2"]}
    samples = Predictive(vae.model, guide=vae.guide, num_samples=2)(partial,
                                                                    sample_missing=True)
    assert {"x_m1", "x_m3", "x_m4"} <= set(samples)
    assert torch.equal(samples["x_m0"][1], batch["m0"])  # observed, not generated
    assert samples["x_m1"].shape == (2, 6, 3, 28, 28)
    # z came from the guide's q(z | m0, m2): the model's x_m1 decodes it
    assert samples["z"].shape == (2, 6, 4)


def test_render_model_draws_the_plates_and_sites(mini):
    pytest.importorskip("graphviz")
    vae = build_model("mmvae", mini[0], **SMALL).vae
    graph = pyro.render_model(vae.model, model_args=(first_batch(mini[1], 4),),
                              render_distributions=True)
    source = graph.source
    for site in ("z", "x_m0", "x_m4", "data", "strata"):
        assert site in source


def test_two_models_train_with_svi_in_one_param_store(mini):
    """No clear_param_store between them: each model has its own Pyro name and both learn."""
    train_ds = mini[0]
    pyro.param("users_own", torch.tensor(3.0))
    runs = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        spec = build_model("mmvae", train_ds, **SMALL)
        svi = SVI(spec.vae.model, spec.vae.guide, pyro.optim.Adam({"lr": 3e-3}), spec.elbo)
        runs.append((spec.vae, svi, []))
    assert runs[0][0].pyro_name != runs[1][0].pyro_name
    pyro.enable_validation(False)
    for step, (batch, _) in enumerate(train_ds.batches(32, shuffle=True)):
        for _vae, svi, losses in runs:  # interleaved: a shared store would mix them up
            losses.append(svi.step(batch))
        if step == 7:
            break
    first_pass = [losses[:2] for *_, losses in runs]
    for _vae, svi, losses in runs:
        for batch, _ in train_ds.batches(32, shuffle=True):
            losses.append(svi.step(batch))
    for (_vae, _svi, losses), start in zip(runs, first_pass, strict=True):
        assert sum(losses[-2:]) < 0.9 * sum(start)
    assert float(pyro.param("users_own").detach()) == 3.0


def test_train_leaves_the_users_param_store_alone(mini, tmp_path):
    pyro.param("users_own", torch.tensor(2.0))
    store_before = dict(pyro.get_param_store().items())
    config = TrainConfig(model="mmvae", dataset="polymnist-mini", device="cpu", epochs=1,
                         batch_size=64, out=str(tmp_path / "run"), settings=dict(SMALL))
    train(config, progress=False, datasets=mini)
    assert dict(pyro.get_param_store().items()).keys() == store_before.keys()
    assert float(pyro.param("users_own").detach()) == 2.0
