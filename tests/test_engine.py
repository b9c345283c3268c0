"""The training engine: precision, loss scaling, clipping, schedules, decoder batching,
compile — each against a direct computation on a small model."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_mmvae.data import polymnist_mini
from pyro_mmvae.engine import (
    NonFiniteError,
    TrainStep,
    build_lr_schedule,
    build_optimizer,
    check_precision,
    compile_networks,
    network_precision,
    resolve_precision,
)
from pyro_mmvae.engine.networks import run_network, set_decoder_batching
from pyro_mmvae.runs import RunFolder
from pyro_mmvae.train import TrainConfig, train
from pyro_mmvae.zoo import build_model

SMALL = {"hidden": (32,), "latent_dim": 4}


@pytest.fixture(scope="module")
def mini():
    return (polymnist_mini("train").subset(torch.arange(96)),
            polymnist_mini("test").subset(torch.arange(32)))


def batch_of(dataset, size=16):
    return next(iter(dataset.batches(size)))[0]


def fresh(name, dataset, seed=0, **settings):
    pyro.set_rng_seed(seed)
    return build_model(name, dataset, **{**SMALL, **settings})


def test_precision_names_are_checked():
    assert check_precision("fp32") == "32" and check_precision("bf16") == "bf16"
    assert check_precision("16") == "16"
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("int8")


def test_auto_precision_is_bf16_only_where_the_device_has_bf16_units(monkeypatch):
    import pyro_mmvae.engine.networks as networks

    monkeypatch.setattr(networks, "bf16_supported", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("AUTO", "cuda") == "bf16"
    monkeypatch.setattr(networks, "bf16_supported", lambda device: False)
    assert resolve_precision("auto", "cpu") == "32"
    assert resolve_precision("fp32", "cpu") == "32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", "cpu")


def test_a_run_records_the_precision_auto_chose_and_keeps_it_on_resume(mini, tmp_path,
                                                                        monkeypatch):
    import pyro_mmvae.engine.networks as networks

    out = str(tmp_path / "run")
    monkeypatch.setattr(networks, "bf16_supported", lambda device: True)  # a bf16 machine
    first = train(TrainConfig(model="mmvae", dataset="mini", device="cpu", out=out, epochs=1,
                              batch_size=32, settings=dict(SMALL)), progress=False, datasets=mini)
    assert first["precision"] == "bf16"
    monkeypatch.setattr(networks, "bf16_supported", lambda device: False)  # resumed elsewhere
    second = train(TrainConfig(model="mmvae", dataset="mini", device="cpu", out=out, epochs=2,
                               resume=True, precision="auto"), progress=False, datasets=mini)
    assert second["precision"] == "bf16"
    third = train(TrainConfig(model="mmvae", dataset="mini", device="cpu",
                              out=str(tmp_path / "other"), epochs=1, batch_size=32,
                              settings=dict(SMALL)), progress=False, datasets=mini)
    assert third["precision"] == "32"
    # a checkpoint from before "auto" names no precision: it was trained in 32 and stays so
    path = tmp_path / "other" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["hyper"]["precision"]
    torch.save(state, path)
    monkeypatch.setattr(networks, "bf16_supported", lambda device: True)
    fourth = train(TrainConfig(model="mmvae", dataset="mini", device="cpu",
                               out=str(tmp_path / "other"), epochs=2, resume=True),
                   progress=False, datasets=mini)
    assert fourth["precision"] == "32"


def test_networks_run_in_bf16_and_the_objective_in_fp32(mini):
    spec = fresh("mmvae", mini[0])
    decoder = spec.vae.mods["m0"].decoder
    seen = {}
    decoder.register_forward_hook(lambda m, i, out: seen.update(dtype=out.dtype))
    batch = batch_of(mini[0])
    with network_precision("bf16", "cpu"):
        loss = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch)
        assert run_network(torch.nn.Linear(3, 2), torch.ones(1, 3)).dtype == torch.float32
    assert seen["dtype"] == torch.bfloat16  # the network ran under autocast
    assert loss.dtype == torch.float32
    pyro.set_rng_seed(5)
    fp32 = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch)
    pyro.set_rng_seed(5)
    with network_precision("bf16", "cpu"):
        bf16 = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch)
    low, full = float(bf16.detach()), float(fp32.detach())
    assert abs(low - full) < 0.02 * abs(full)  # the same loss, up to bf16 rounding


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_steps_train(mini, precision):
    spec = fresh("mmvae", mini[0])
    params = list(spec.vae.named_parameters())
    optimizer = build_optimizer([p for _, p in params], 3e-3, True, torch.device("cpu"))
    step = TrainStep(spec.vae, spec.elbo, params, optimizer, torch.device("cpu"),
                     precision=precision)
    assert (step.scaler is not None) == (precision == "16")
    losses = [step(batch) for _ in range(3) for batch, _ in mini[0].batches(32)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3])


def test_clip_grad_bounds_the_update_by_the_global_norm(mini):
    spec = fresh("mmvae", mini[0])
    params = list(spec.vae.named_parameters())
    before = [p.detach().clone() for _, p in params]
    sgd = torch.optim.SGD([p for _, p in params], lr=1.0)
    step = TrainStep(spec.vae, spec.elbo, params, sgd, torch.device("cpu"), clip_grad=0.5)
    step(batch_of(mini[0]))
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for (_, p), b in zip(params, before,
                                                                              strict=True)))
    assert float(moved) == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is the clipped grad


def test_lr_schedules_follow_their_formula():
    param = torch.nn.Parameter(torch.zeros(1))
    for name, at_half in (("cosine", 0.5), ("linear", 0.5), ("constant", 1.0)):
        optimizer = torch.optim.SGD([param], lr=2.0)
        schedule = build_lr_schedule(optimizer, name, total_steps=10)
        for _ in range(5):
            optimizer.step()
            if schedule is not None:
                schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * at_half)
    with pytest.raises(ValueError, match="schedule"):
        build_lr_schedule(optimizer, "exponential", 10)


@pytest.mark.parametrize("name", ["mmvae", "mmvae_plus", "mvae"])
def test_split_and_stacked_decoders_give_the_same_loss_and_gradient(mini, name):
    spec = fresh(name, mini[0], num_particles=3)
    batch = batch_of(mini[0], 8)
    results = [_loss_and_gradients(spec, batch, lambda vae, mode=mode:
                                   set_decoder_batching(vae, mode))
               for mode in ("stacked", "split")]
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1].values(), results[1][1].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _loss_and_gradients(spec, batch, configure):
    """``configure(vae)``, then the loss and the gradient of every parameter (seed 3)."""
    configure(spec.vae)
    spec.vae.zero_grad()
    pyro.set_rng_seed(3)
    loss = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in spec.vae.named_parameters()
                                  if p.grad is not None}


def test_compiled_networks_give_the_same_loss_and_keep_state_dict_keys(mini):
    spec = fresh("mmvae", mini[0])
    keys = set(spec.vae.state_dict())
    batch = batch_of(mini[0], 8)
    pyro.set_rng_seed(1)
    eager = float(spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch))
    compile_networks(spec.vae)
    pyro.set_rng_seed(1)
    compiled = float(spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch))
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert set(spec.vae.state_dict()) == keys  # checkpoints stay interchangeable


class Interrupted(Exception):
    pass


def test_resume_is_exact_with_schedule_clipping_and_bf16(mini, tmp_path, monkeypatch):
    def config(out, **kw):
        return TrainConfig(model="mmvae", dataset="mini", device="cpu", out=str(out),
                           batch_size=32, lr_schedule="cosine", clip_grad=5.0,
                           precision="bf16", settings=dict(SMALL), **kw)

    train(config(tmp_path / "straight", epochs=3), progress=False, datasets=mini)
    real_save = RunFolder.save_checkpoint

    def crash_after_first_epoch(self, state):
        if state["epoch"] > 1:
            raise Interrupted
        real_save(self, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(Interrupted):
        train(config(tmp_path / "split", epochs=3), progress=False, datasets=mini)
    monkeypatch.setattr(RunFolder, "save_checkpoint", real_save)
    train(TrainConfig(model="mmvae", dataset="mini", device="cpu", out=str(tmp_path / "split"),
                      epochs=3, resume=True), progress=False, datasets=mini)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert b["hyper"]["precision"] == "bf16" and b["hyper"]["lr_schedule"] == "cosine"
    for key, value in a["vae_state"].items():
        assert torch.equal(value, b["vae_state"][key]), key
    assert a["optim_state"]["param_groups"][0]["lr"] == b["optim_state"]["param_groups"][0]["lr"]


def test_resume_refuses_changed_settings(mini, tmp_path):
    from pyro_mmvae.checkpoint import CheckpointError

    cfg = dict(model="mmvae", dataset="mini", device="cpu", out=str(tmp_path), batch_size=32,
               settings=dict(SMALL))
    train(TrainConfig(epochs=1, **cfg), progress=False, datasets=mini)
    for change in ({"seed": 3}, {"batch_size": 16}, {"settings": {"beta": 2.0}}):
        bad = {**cfg, **change, "settings": {**SMALL, **change.get("settings", {})}}
        with pytest.raises(CheckpointError, match="--resume continues a run"):
            train(TrainConfig(epochs=2, resume=True, **bad), progress=False, datasets=mini)


def test_tensorboard_logs_losses_and_sample_grids(mini, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(model="mmvae", dataset="mini", device="cpu", out=str(tmp_path),
                         epochs=2, batch_size=32, tensorboard=True, settings=dict(SMALL))
    train(config, progress=False, datasets=mini)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/train_step", "loss/train", "loss/test", "lr"} <= set(tags["scalars"])
    assert len(events.Scalars("loss/train_step")) == 2 * 3  # 96 tuples / 32 per step
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert "prior_samples/m0" in tags["images"]


def test_tensorboard_leaves_the_training_stream_and_resume_exact(mini, tmp_path):
    """Its prior samples come from generators of their own: the same seed trains to the same
    parameters with and without --tensorboard, and a resumed run with it is exact."""
    pytest.importorskip("tensorboard")
    base = dict(model="mmvae", dataset="mini", device="cpu", batch_size=32, precision="32",
                settings=dict(SMALL))

    def run(out, epochs, **extra):
        train(TrainConfig(out=str(tmp_path / out), epochs=epochs, **base, **extra),
              progress=False, datasets=mini)
        return torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["vae_state"]

    plain = run("plain", 2)
    logged = run("logged", 2, tensorboard=True)
    run("split", 1, tensorboard=True)
    resumed = run("split", 2, tensorboard=True, resume=True)
    for key, value in plain.items():
        assert torch.equal(value, logged[key]), key
        assert torch.equal(value, resumed[key]), key


def test_one_validation_path_for_settings(capsys):
    """A flag, --set and TrainConfig reject a bad value with the same message."""
    from pyro_mmvae import cli

    message = "setting epochs must be a positive integer, got 0"
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=0).check()
    with pytest.raises(ValueError, match=message):
        TrainConfig(settings={"epochs": 0}).check()
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert message in capsys.readouterr().err
    assert cli.main(["train", "--set", "epochs=0", "--out", "unused-run"]) == 2
    assert message in capsys.readouterr().err


def test_memory_format_is_chosen_by_network_and_device(mini):
    from pyro_mmvae.engine.networks import choose_memory_format, set_memory_format

    conv = fresh("mmvae", mini[0], nets="conv")
    mlp = fresh("mmvae", mini[0])
    encoder = next(iter(conv.vae.mods.values())).encoder
    assert choose_memory_format(encoder, "cpu") == "channels_last"
    assert choose_memory_format(encoder, "cuda") == "channels_last"  # cuDNN's NHWC kernels
    assert choose_memory_format(next(iter(mlp.vae.mods.values())).encoder,
                                "cuda") == "contiguous"
    assert set_memory_format(mlp.vae, "auto") == {"encoder": "contiguous",
                                                  "decoder": "contiguous"}
    assert set_memory_format(conv.vae, "auto") == {"encoder": "channels_last",
                                                   "decoder": "channels_last"}
    weights = [p for p in conv.vae.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    with pytest.raises(ValueError, match="unknown memory format"):
        set_memory_format(conv.vae, "nhwc")


def test_svi_steps_the_weights_of_channels_last_conv_nets(mini):
    """Pyro's param store keeps contiguous copies of channels-last tensors: SVI must still
    step the networks' own convolution weights (it stepped only the copies before)."""
    from pyro_mmvae.engine.networks import set_memory_format

    spec = fresh("mmvae", mini[0], nets="conv")
    set_memory_format(spec.vae, "channels_last")
    weights = [p for p in spec.vae.parameters() if p.dim() == 4]
    before = [w.detach().clone() for w in weights]
    pyro.clear_param_store()
    svi = pyro.infer.SVI(spec.vae.model, spec.vae.guide, pyro.optim.Adam({"lr": 1e-2}),
                         spec.elbo)
    for _ in range(2):
        svi.step(batch_of(mini[0], 8))
    store = {id(v) for v in pyro.get_param_store().values()}
    assert all(id(w) in store for w in spec.vae.parameters())
    assert all((w.detach() - b).abs().max() > 0 for w, b in zip(weights, before, strict=True))
    pyro.clear_param_store()


@pytest.mark.parametrize("name", ["mmvae_plus", "mopoe"])
def test_channels_last_gives_the_contiguous_loss_and_gradient(mini, name):
    from pyro_mmvae.engine.networks import set_memory_format

    spec = fresh(name, mini[0], nets="conv", num_particles=2)
    batch = batch_of(mini[0], 8)
    results = [_loss_and_gradients(spec, batch, lambda vae, fmt=fmt:
                                   set_memory_format(vae, fmt))
               for fmt in ("contiguous", "channels_last")]
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for key, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][key], rtol=1e-3, atol=1e-4)


def test_the_optimizer_uses_the_fused_adam_kernel_on_the_cpu():
    weight = torch.nn.Parameter(torch.randn(64, 32))
    bias = torch.nn.Parameter(torch.randn(32, dtype=torch.float64))
    optimizer = build_optimizer([weight, bias], 1e-3, True, torch.device("cpu"))
    assert optimizer.defaults["fused"] is True
    reference = torch.optim.Adam([w := weight.detach().clone().requires_grad_(),
                                  b := bias.detach().clone().requires_grad_()],
                                 lr=1e-3, amsgrad=True, foreach=False)
    for _ in range(3):
        for params, opt in (((weight, bias), optimizer), ((w, b), reference)):
            opt.zero_grad()
            (params[0].square().sum() + params[1].sin().sum()).backward()
            opt.step()
    torch.testing.assert_close(weight, w)
    torch.testing.assert_close(bias, b)


def test_bf16_without_matrix_units_warns(monkeypatch):
    import warnings

    from pyro_mmvae.engine import networks

    monkeypatch.setattr(networks, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="no bfloat16 matrix units"):
        networks.warn_if_emulated("bf16", "cpu")
    monkeypatch.setattr(networks, "bf16_supported", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        networks.warn_if_emulated("bf16", "cpu")
        networks.warn_if_emulated("32", "cpu")


@pytest.mark.parametrize("clip_grad", [None, 5.0])
def test_sync_free_steps_are_the_synchronous_steps(mini, clip_grad):
    """TrainStep.queue (accelerators) makes the same updates as __call__, bit for bit, with
    AMSGrad and gradient clipping, and TrainStep.check reads the same losses."""
    results = []
    for sync_free in (False, True):
        spec = fresh("mmvae_plus", mini[0])
        params = list(spec.vae.named_parameters())
        optimizer = build_optimizer([p for _, p in params], 1e-3, True, torch.device("cpu"))
        step = TrainStep(spec.vae, spec.elbo, params, optimizer, torch.device("cpu"),
                         clip_grad=clip_grad, sync_free=sync_free)
        pyro.set_rng_seed(1)
        batches = [b for b, _ in mini[0].batches(32)]
        losses = ([step(b) for b in batches] if not sync_free
                  else TrainStep.check([step.queue(b) for b in batches]))
        results.append(([p.detach().clone() for _, p in params], losses))
    assert results[0][1] == results[1][1]
    for a, b in zip(results[0][0], results[1][0], strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_queued_step_changes_no_parameter_and_no_adam_state(mini):
    spec = fresh("mvae", mini[0])
    params = list(spec.vae.named_parameters())
    optimizer = build_optimizer([p for _, p in params], 1e-3, True, torch.device("cpu"))
    step = TrainStep(spec.vae, spec.elbo, params, optimizer, torch.device("cpu"),
                     sync_free=True)
    batch = batch_of(mini[0], 8)
    queued = [step.queue(batch)]
    before = [p.detach().clone() for _, p in params]
    steps = [optimizer.state[p]["step"].clone() for _, p in params]
    real_loss = TrainStep.loss
    try:
        TrainStep.loss = lambda self, b: real_loss(self, b) * float("nan")
        queued.append(step.queue(batch))
    finally:
        TrainStep.loss = real_loss
    for (_, p), b, n in zip(params, before, steps, strict=True):
        assert torch.equal(p.detach(), b) and torch.equal(optimizer.state[p]["step"], n)
    with pytest.raises(NonFiniteError) as info:
        TrainStep.check(queued)
    assert info.value.index == 1
    with pytest.raises(ValueError, match="fused Adam"):
        TrainStep(spec.vae, spec.elbo, params, torch.optim.SGD([p for _, p in params], 0.1),
                  torch.device("cpu"), sync_free=True)
