"""Tests of the training loop (pyro_mmvae.train) and checkpoint files (pyro_mmvae.checkpoint).

They run on a tiny two-modality dataset and a tiny Pyro VAE defined here (with a constrained
``pyro.param`` beside its module parameters), added to the zoo with ``register_model`` and to
the datasets with ``register_dataset`` — the way a user adds their own.
"""

from __future__ import annotations

import json
import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import constraints

from pyro_mmvae import train as train_module
from pyro_mmvae.checkpoint import (
    CheckpointError,
    check_checkpoint_matches,
    load_checkpoint,
    save_checkpoint,
    save_json,
)
from pyro_mmvae.data import registry
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.engine import TrainStep
from pyro_mmvae.train import TrainConfig, TrainingError, train

torch.set_num_threads(1)

LATENT = 2
class TinyVAE(nn.Module):
    """z ~ N(0, I); x_m ~ N(W_m z + b_m, sigma) with a learned pyro.param sigma (constrained)."""

    def __init__(self, event_shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.event_shapes = dict(event_shapes)
        sizes = {m: int(torch.Size(s).numel()) for m, s in event_shapes.items()}
        self.encoder = nn.Linear(sum(sizes.values()), 2 * LATENT)
        self.decoders = nn.ModuleDict({m: nn.Linear(LATENT, n) for m, n in sizes.items()})

    def model(self, data: dict[str, torch.Tensor], mask=None) -> None:
        pyro.module("tiny", self)
        sigma = pyro.param("tiny_sigma", torch.tensor(0.5), constraint=constraints.positive)
        size = next(iter(data.values())).shape[0]
        with pyro.plate("data", size):
            z = pyro.sample("z", dist.Normal(torch.zeros(size, LATENT), 1.0).to_event(1))
            for name, decoder in self.decoders.items():
                x = data[name].reshape(size, -1)
                pyro.sample(f"x_{name}", dist.Normal(decoder(z), sigma).to_event(1), obs=x)

    def guide(self, data: dict[str, torch.Tensor], mask=None) -> None:
        pyro.module("tiny", self)
        size = next(iter(data.values())).shape[0]
        x = torch.cat([data[m].reshape(size, -1) for m in self.decoders], dim=-1)
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", size):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale)).to_event(1))


def tiny_dataset(split: str, size: int = 48) -> MultimodalTensorDataset:
    """Two 1x3x3 image modalities generated from a 2-D latent (learnable structure)."""
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    z = torch.randn(size, LATENT, generator=generator)
    weights = torch.randn(2, LATENT, 9, generator=torch.Generator().manual_seed(7))
    data = {
        f"m{k}": torch.sigmoid(z @ weights[k]).reshape(size, 1, 3, 3) for k in range(2)
    }
    labels = (z[:, 0] > 0).long()
    return MultimodalTensorDataset(data, labels, name="tiny")


def build_tiny(dataset, settings) -> tuple[nn.Module, Trace_ELBO]:
    return TinyVAE(dataset.event_shapes), Trace_ELBO(num_particles=settings["num_particles"])


TINY_DEFAULTS = {"lr": 0.02, "amsgrad": False, "batch_size": 16, "epochs": 3}


@pytest.fixture(autouse=True)
def tiny_world(sandbox_registry):
    zoo, registry = sandbox_registry
    zoo.register_model("tiny", build_tiny, TINY_DEFAULTS)
    registry.register_dataset("tiny", lambda _root, split: tiny_dataset(split))


def config(out, **kwargs) -> TrainConfig:
    kwargs.setdefault("epochs", 3)
    return TrainConfig(
        model="tiny", dataset="tiny", device="cpu", out=str(out), **kwargs
    )


def read_metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def snapshot(run_dir) -> dict[str, torch.Tensor]:
    """Every trained value of a run: module parameters and extra pyro.param sites."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {**state["vae_state"], **state["extra_params"]}


def test_short_run_lowers_loss_and_writes_files(tmp_path):
    run = tmp_path / "run"
    summary = train(config(run, epochs=8), progress=False)
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 1.0
    assert all(math.isfinite(r["test_loss"]) for r in records)
    assert set(records[0]) == {"epoch", "train_loss", "test_loss", "seconds", "time"}
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 8 and state["model"] == "tiny"
    written = json.loads((run / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert summary["final_loss"] == records[-1]["train_loss"]
    assert summary["parameters"] == sum(p.numel() for p in TinyVAE(
        tiny_dataset("train").event_shapes).parameters())
    assert summary["device"] == "cpu" and summary["epochs"] == 8
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_resume_gives_identical_parameters(tmp_path):
    train(config(tmp_path / "straight", epochs=4), progress=False)
    straight = snapshot(tmp_path / "straight")

    train(config(tmp_path / "split", epochs=2), progress=False)
    halfway = snapshot(tmp_path / "split")
    summary = train(config(tmp_path / "split", epochs=4, resume=True), progress=False)
    resumed = snapshot(tmp_path / "split")

    assert set(straight) == set(resumed) and "tiny_sigma" in resumed
    assert not all(torch.equal(halfway[k], resumed[k]) for k in resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1, 2, 3, 4]
    straight_losses = [r["train_loss"] for r in read_metrics(tmp_path / "straight")]
    assert [r["train_loss"] for r in read_metrics(tmp_path / "split")] == straight_losses
    assert summary["final_loss"] == straight_losses[-1]


def test_batch_order_depends_only_on_seed_and_epoch():
    first = torch.randperm(10, generator=train_module.epoch_generator(3, 1))
    torch.manual_seed(123)
    again = torch.randperm(10, generator=train_module.epoch_generator(3, 1))
    other = torch.randperm(10, generator=train_module.epoch_generator(3, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    train(config(tmp_path, epochs=1), progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(config(tmp_path, epochs=1), progress=False)


def test_truncated_checkpoint_is_reported(tmp_path):
    train(config(tmp_path, epochs=1), progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(config(tmp_path, epochs=2, resume=True), progress=False)


def test_missing_and_foreign_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(config(tmp_path / "nothing", resume=True), progress=False)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pyro_mmvae checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "partial.pt", {"model": "tiny"})
    with pytest.raises(CheckpointError, match="lacks dataset"):
        load_checkpoint(tmp_path / "partial.pt")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    train(config(tmp_path, epochs=1), progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["model"] = "mvae"
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match="model 'mvae'"):
        train(config(tmp_path, epochs=2, resume=True), progress=False)
    with pytest.raises(CheckpointError, match="dataset"):
        check_checkpoint_matches(state, model="mvae", dataset="polymnist")


def test_checkpoint_version_is_checked(tmp_path):
    train(config(tmp_path, epochs=1), progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["format"] == "pyro_mmvae-checkpoint" and state["version"] == 2
    state["version"] = 99
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    train(config(tmp_path, epochs=2), progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_loss = TrainStep.loss
    calls = {"n": 0}

    def loss_then_nan(self, batch):
        calls["n"] += 1
        loss = real_loss(self, batch)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(TrainStep, "loss", loss_then_nan)
    with pytest.raises(TrainingError, match=r"nan at epoch 3, step 2.*checkpoint.pt \(epoch 2\)"):
        train(config(tmp_path, epochs=4, resume=True), progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert len(read_metrics(tmp_path)) == 2


def test_infinite_loss_before_any_checkpoint(tmp_path, monkeypatch):
    real_loss = TrainStep.loss
    monkeypatch.setattr(TrainStep, "loss", lambda self, b: real_loss(self, b) * float("inf"))
    with pytest.raises(TrainingError, match="epoch 1, step 1; no checkpoint"):
        train(config(tmp_path), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_non_finite_gradient_names_the_parameter_and_changes_nothing(tmp_path, monkeypatch):
    """A finite loss with a NaN gradient (e.g. a masked NaN) stops before the optimiser step."""
    real_loss = TrainStep.loss
    seen = {}

    def poisoned(self, batch):
        loss = real_loss(self, batch)
        weight = self.vae.decoders["m1"].weight
        seen["before"] = weight.detach().clone()
        seen["weight"] = weight
        return loss + _nan_grad(weight)

    monkeypatch.setattr(TrainStep, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"decoders\.m1\.weight.*not updated"):
        train(config(tmp_path, epochs=1), progress=False)
    assert torch.equal(seen["weight"].detach(), seen["before"])


def _nan_grad(x: torch.Tensor) -> torch.Tensor:
    """Zero in value, NaN in gradient."""

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(value):
            return value.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full(ctx.shape, float("nan"))

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.shape = inputs[0].shape

    return NanGrad.apply(x)


def test_only_the_first_step_is_validated(tmp_path, monkeypatch):
    seen = []
    real_call = TrainStep.__call__

    def recording_step(self, batch):
        seen.append(pyro.distributions.is_validation_enabled())
        return real_call(self, batch)

    monkeypatch.setattr(TrainStep, "__call__", recording_step)
    pyro.enable_validation(True)
    train(config(tmp_path, epochs=1), progress=False)
    assert seen == [True, False, False]
    assert pyro.distributions.is_validation_enabled()  # the caller's setting is restored


def test_hyperparameters_and_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="estimator"):
        train(config(tmp_path, estimator="vimco"), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(config(tmp_path, epochs=0), progress=False)
    with pytest.raises(ValueError, match="unknown device"):
        train_module.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_module.resolve_device("cuda")
    assert train_module.resolve_device("cpu") == torch.device("cpu")


def test_measurements_name_the_cpu_model(monkeypatch, tmp_path):
    """eval.json and the benchmarks record the CPU model of /proc/cpuinfo, not "x86_64"."""
    import pyro_mmvae.engine.device as device_module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t: avx2\n")
    real_path = device_module.Path
    monkeypatch.setattr(device_module, "Path",
                        lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert device_module.cpu_model() == "Test CPU 9000"
    assert device_module.cpu_flags() == {"avx2"}  # whole flags, not substrings of the file
    line = device_module.describe_device("cpu")
    assert line.startswith("Test CPU 9000, ") and f"{torch.get_num_threads()} torch threads" in line
    monkeypatch.setattr(device_module, "Path", lambda p: tmp_path / "absent")
    assert device_module.cpu_model()  # falls back to the platform's name
    assert device_module.cpu_flags() == frozenset()


def test_resume_may_lower_the_learning_rate(tmp_path):
    train(config(tmp_path, epochs=1), progress=False)
    train(config(tmp_path, epochs=2, lr=1e-3, resume=True), progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    groups = state["optim_state"]["param_groups"]
    assert groups and all(g["lr"] == 1e-3 for g in groups)
    assert state["hyper"]["lr"] == 1e-3 and state["hyper"]["batch_size"] == 16
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        train(config(tmp_path, epochs=1, resume=True), progress=False)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"x": torch.arange(3)})
    save_json(tmp_path / "s.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["c.pt", "s.json"]
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(tmp_path / "c.pt", {"bad": Unpicklable()})
    assert sorted(os.listdir(tmp_path)) == ["c.pt", "s.json"]
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(3))


def test_zoo_settings_and_explicit_datasets(tmp_path, monkeypatch):
    """``TrainConfig.settings`` reach the zoo (and the checkpoint); ``datasets=`` replaces
    loading by name; an unknown setting is refused by name."""
    monkeypatch.setattr(registry, "_REGISTERED", {"tiny": _no_loading})
    data = (tiny_dataset("train"), tiny_dataset("test"))
    settings = {"latent_dim": 3, "hidden": (8,), "beta": 2.0}
    cfg = TrainConfig(model="mvae", dataset="tiny", device="cpu", out=str(tmp_path / "run"),
                      epochs=1, batch_size=16, settings=settings)
    summary = train(cfg, progress=False, datasets=data)
    assert summary["overrides"] == settings
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["overrides"] == settings
    assert state["vae_state"]["_prior_loc"].shape == (3,)
    assert state["vae_state"]["mods.m0.decoder.trunk.0.weight"].shape == (8, 3)
    bad = TrainConfig(model="mvae", dataset="tiny", device="cpu", out=str(tmp_path / "bad"),
                      epochs=1, settings={"no_such_setting": 1})
    with pytest.raises(ValueError, match="no_such_setting"):
        train(bad, progress=False, datasets=data)


def _no_loading(*_args):
    raise AssertionError("datasets were given: nothing may be loaded by name")


# --------------------------------------------------------------------------- sync-free steps
@pytest.fixture
def sync_free(monkeypatch):
    """The engine as on an accelerator: sync-free steps (TrainStep.queue/check)."""
    real_init = TrainStep.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("sync_free", True)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__init__", init)


@pytest.mark.parametrize("window", [1, 2, 50])
def test_sync_free_training_is_the_synchronous_training(tmp_path, monkeypatch, window):
    train(config(tmp_path / "sync", epochs=2), progress=False)
    monkeypatch.setattr(train_module, "CHECK_EVERY", window)
    real_init = TrainStep.__init__
    modes = []

    def init(self, *args, **kwargs):
        real_init(self, *args, **{**kwargs, "sync_free": True})
        modes.append(self.sync_free)

    monkeypatch.setattr(TrainStep, "__init__", init)
    queued = []
    real_queue = TrainStep.queue
    monkeypatch.setattr(TrainStep, "queue",
                        lambda self, b: queued.append(1) or real_queue(self, b))
    train(config(tmp_path / "free", epochs=2), progress=False)
    assert modes == [True] and len(queued) == 2 * 3 - 1  # the first step is validated
    a, b = snapshot(tmp_path / "sync"), snapshot(tmp_path / "free")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for ra, rb in zip(read_metrics(tmp_path / "sync"), read_metrics(tmp_path / "free"),
                      strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-12)
        assert rb["test_loss"] == ra["test_loss"]


def test_sync_free_nan_loss_stops_at_its_step(tmp_path, monkeypatch, sync_free):
    real_loss = TrainStep.loss
    calls = {"n": 0}

    def loss_then_nan(self, batch):
        calls["n"] += 1
        loss = real_loss(self, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(TrainStep, "loss", loss_then_nan)
    with pytest.raises(TrainingError, match=r"nan; that step did not change the parameters "
                                            r"at epoch 1, step 3; no checkpoint"):
        train(config(tmp_path), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_sync_free_nan_gradient_is_skipped_on_the_device_and_reported(tmp_path, monkeypatch,
                                                                     sync_free):
    """A NaN gradient in a queued step: the fused kernel leaves every parameter as it was
    (no host sync decides it), and the window's read stops the run naming the step."""
    monkeypatch.setattr(train_module, "CHECK_EVERY", 1)
    real_loss = TrainStep.loss
    seen = {"n": 0}

    def poisoned(self, batch):
        seen["n"] += 1
        loss = real_loss(self, batch)
        if seen["n"] != 2:
            return loss
        seen["before"] = [p.detach().clone() for p in self.params]
        seen["params"] = self.params
        return loss + _nan_grad(self.vae.decoders["m1"].weight)

    monkeypatch.setattr(TrainStep, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"gradient became non-finite.*epoch 1, step 2"):
        train(config(tmp_path, epochs=1), progress=False)
    for before, param in zip(seen["before"], seen["params"], strict=True):
        assert torch.equal(param.detach(), before)
