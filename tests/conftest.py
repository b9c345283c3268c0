"""Shared fixtures: one thread per test process, and the optional shared data root."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts with an empty param store and validation on."""
    import pyro

    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def shared_data_root() -> Path:
    """The development data (verified MNIST, PolyMNIST backgrounds), or skip.

    ``PYRO_MMVAE_DATA_ROOT`` wins; otherwise ``../shared/data`` beside the repository.
    """
    env = os.environ.get("PYRO_MMVAE_DATA_ROOT")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "mnist").is_dir():
        pytest.skip(f"no shared data at {root} (set PYRO_MMVAE_DATA_ROOT)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Classifier caches go to a per-session temporary folder, not ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "pyro_mmvae_cache"
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(cache))


@pytest.fixture
def sandbox_registry(monkeypatch):
    """The zoo's models and the data registry, restored after the test: models and datasets a
    test registers (the way a user adds their own) do not leak into other tests."""
    from pyro_mmvae import zoo
    from pyro_mmvae.data import registry

    monkeypatch.setattr(zoo, "BUILDERS", dict(zoo.BUILDERS))
    monkeypatch.setattr(zoo, "MODEL_DEFAULTS", dict(zoo.MODEL_DEFAULTS))
    monkeypatch.setattr(zoo, "EXTRA_SETTINGS", dict(zoo.EXTRA_SETTINGS))
    monkeypatch.setattr(zoo, "MODELS", zoo.MODELS)  # register_model rebinds the global
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    return zoo, registry
