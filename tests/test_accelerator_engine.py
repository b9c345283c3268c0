"""The engine's accelerator paths, checked on the CPU.

No GPU runs these tests: torch.cuda's queries are monkeypatched where a decision depends on
the GPU (bf16 units, backends, the NCCL start-up order), and collectives are checked against
the one attribute that names their device, :attr:`ProcessGroup.device`. A two-process run
(gloo) whose collectives refuse any tensor off the training device goes through an epoch
end, checkpoints and an exact ``--resume``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pyro
import pytest
import torch
import torch.distributed as dist

from pyro_mmvae.data import polymnist_mini
from pyro_mmvae.engine import build_optimizer, resolve_precision
from pyro_mmvae.engine import device as engine_device
from pyro_mmvae.engine import distributed as engine_dist
from pyro_mmvae.engine.distributed import ProcessGroup, all_reduce_sum
from pyro_mmvae.infer.base import ESTIMATORS
from pyro_mmvae.runs import apply_missing
from pyro_mmvae.stages import as_stages, freeze, frozen_patterns
from pyro_mmvae.zoo import MODELS, build_model

SMALL = {"hidden": (32,), "latent_dim": 4}


@pytest.fixture(scope="module")
def mini():
    return (polymnist_mini("train").subset(torch.arange(32)),
            polymnist_mini("test").subset(torch.arange(16)))


# --------------------------------------------------------------------------- collectives


def test_all_reduce_sum_runs_on_the_groups_device(monkeypatch):
    """A tensor built elsewhere (the CPU) is moved to the group's device before NCCL sees it."""
    seen = []
    monkeypatch.setattr(dist, "all_reduce", lambda values, op=None: seen.append(values.device))
    group = ProcessGroup(rank=0, world_size=2, device=torch.device("meta"))
    out = all_reduce_sum(torch.zeros(2, dtype=torch.float64), group)
    assert seen == [torch.device("meta")] and out.device == torch.device("meta")
    single = torch.ones(2)
    assert all_reduce_sum(single, ProcessGroup()) is single and len(seen) == 1


def test_the_test_loss_is_reduced_on_the_groups_device(mini, monkeypatch):
    """``_Loop.test_loss`` hands the collective a tensor on ``group.device``, not the CPU."""
    from pyro_mmvae import train as train_module

    pyro.set_rng_seed(0)
    spec = build_model("mmvae", mini[0], **SMALL)
    seen = []

    def fake_reduce(values, group):
        seen.append(values.device)
        return torch.tensor([123.0, 4.0], dtype=torch.float64)

    monkeypatch.setattr(train_module, "all_reduce_sum", fake_reduce)
    loop = SimpleNamespace(
        vae=spec.vae, elbo=spec.elbo, device=torch.device("cpu"), test_subset=mini[1],
        hyper=SimpleNamespace(precision="32", batch_size=8),
        group=ProcessGroup(rank=0, world_size=1, device=torch.device("meta")))
    assert train_module._Loop.test_loss(loop, 1) == pytest.approx(123.0 / 4.0)
    assert seen == [torch.device("meta")]


def _fake_cuda(monkeypatch, gpus: int = 2, capability=((8, 0), (8, 0))):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda index=None: capability[0 if index is None else int(index)])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set", device)))
    return calls


@pytest.mark.parametrize("gpus,backend,device", [(2, "nccl", "cuda:1"), (1, "gloo", "cuda:0")])
def test_nccl_is_joined_after_set_device_and_two_ranks_share_one_gpu_over_gloo(
        monkeypatch, gpus, backend, device):
    calls = _fake_cuda(monkeypatch, gpus=gpus)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    state = {"initialized": False}

    def init(backend, **options):
        calls.append(("init", backend, options.get("device_id")))
        state["initialized"] = True

    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    at_exit = []
    monkeypatch.setattr(engine_dist.atexit, "register", at_exit.append)
    group = engine_dist.init_process_group(torch.device("cuda"))
    expected = torch.device(device)
    assert calls[0] == ("set", expected)  # the GPU is chosen before the group is formed
    assert calls[1] == ("init", backend, expected if backend == "nccl" else None)
    assert group.device == expected and group.backend == backend and group.owned
    assert engine_dist.local_device(torch.device("cuda"), group) == expected
    assert at_exit == [engine_dist._destroy_at_exit]  # destroy_process_group at exit
    joined = engine_dist.init_process_group(torch.device("cuda"))  # a second train()
    assert not joined.owned and len(at_exit) == 1
    assert sum(call[0] == "init" for call in calls) == 1


def test_a_single_process_group_names_the_training_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = engine_dist.init_process_group(torch.device("cpu"))
    assert group == ProcessGroup(device=torch.device("cpu")) and not group.distributed


# --------------------------------------------------------------------------- DDP


def test_ddp_skips_the_unused_parameter_search_and_constant_buffers(mini, monkeypatch):
    import torch.nn.parallel as parallel

    options = []

    def ddp(module, device_ids=None, find_unused_parameters=False,
            forward_sync_buffers=None):
        options.append((device_ids, find_unused_parameters, forward_sync_buffers))
        return module

    monkeypatch.setattr(parallel, "DistributedDataParallel", ddp)
    spec = build_model("mmvae", mini[0], **SMALL)
    engine_dist.wrap_ddp(spec.vae, spec.elbo, torch.device("cpu"))
    assert options[-1] == (None, False, False)  # its buffers are the prior's constants
    with_norm = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    engine_dist.wrap_ddp(with_norm, spec.elbo, torch.device("cuda", 1))
    assert options[-1] == ([1], False, True)


@pytest.mark.parametrize("name", MODELS)
def test_every_trained_parameter_takes_part_in_every_loss(mini, name):
    """What ``find_unused_parameters=False`` needs: every parameter that requires a gradient
    gets one, for each estimator, in each training stage, with a modality missing from a
    whole batch."""
    masked, _ = apply_missing(mini, 0.5, 0)
    for estimator in ESTIMATORS:
        pyro.set_rng_seed(0)
        try:
            spec = build_model(name, mini[0], estimator=estimator, num_particles=2, **SMALL)
        except ValueError:  # the coordination objectives take only estimator="elbo"
            continue
        vae, elbo = spec.vae, spec.elbo
        vae.pyro_register = False
        stages = as_stages(spec.train_defaults.get("stages") or ())
        for epoch in (1, 2) if stages else (1,):
            freeze(vae, frozen_patterns(stages, epoch, 2) if stages else ())
            batch = next(iter(masked.batches(8)))[0]
            mask = dict(batch.mask)
            first = next(iter(mask))
            mask[first] = torch.zeros_like(mask[first])
            for args in ((next(iter(mini[0].batches(8)))[0],), (dict(batch), mask)):
                vae.zero_grad(set_to_none=True)
                elbo.differentiable_loss(vae.model, vae.guide, *args).backward()
                unused = [n for n, p in vae.named_parameters()
                          if p.requires_grad and p.grad is None]
                assert not unused, (name, estimator, epoch, unused)


# --------------------------------------------------------------------------- precision


def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a V100 (emulated); capability decides,
    for the run's GPU rather than the current one."""
    _fake_cuda(monkeypatch, capability=((7, 0), (8, 0)))
    assert resolve_precision("auto", "cuda:0") == "32"
    assert resolve_precision("auto", "cuda") == "32"  # the current device, 0
    assert resolve_precision("auto", "cuda:1") == "bf16"
    with pytest.warns(UserWarning, match="no bfloat16 matrix units"):
        from pyro_mmvae.engine.networks import warn_if_emulated

        warn_if_emulated("bf16", "cuda:0")


def test_memory_format_auto_is_channels_last_for_conv_nets_on_cuda(mini):
    from pyro_mmvae.engine.networks import choose_memory_format

    conv = build_model("mmvae", mini[0], nets="conv", **SMALL).vae
    assert choose_memory_format(next(iter(conv.mods.values())).encoder,
                                torch.device("cuda", 0)) == "channels_last"


# --------------------------------------------------------------------------- backends


@pytest.fixture
def backend_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved[:4]
    torch.use_deterministic_algorithms(saved[4])
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def test_cuda_defaults_are_tf32_and_cudnn_benchmark_and_the_cpu_is_left_alone(backend_flags):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    engine_device.configure_backends("cpu")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    engine_device.configure_backends(torch.device("cuda", 0))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark
    assert torch.get_float32_matmul_precision() == "high"


def test_deterministic_mode_sets_every_switch_and_turns_benchmark_off(backend_flags,
                                                                      monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    engine_device.enable_deterministic()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    engine_device.configure_backends("cuda")  # TrainStep's defaults keep benchmark off
    assert not torch.backends.cudnn.benchmark


# --------------------------------------------------------------------------- optimiser


def test_adam_is_fused_only_where_torch_has_the_kernel(monkeypatch):
    """torch checks fused eligibility at the first step(), not in the constructor: the
    decision is the engine's, and a device without the kernel gets foreach and steps."""
    import torch.utils._foreach_utils as foreach_utils

    weight = torch.nn.Parameter(torch.randn(4, 3))
    assert build_optimizer([weight], 1e-3, False, torch.device("cpu")).defaults["fused"]
    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    optimizer = build_optimizer([weight], 1e-3, False, torch.device("cpu"))
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"]
    before = weight.detach().clone()
    weight.square().sum().backward()
    optimizer.step()  # the fused kernel would raise here
    assert not torch.equal(before, weight.detach())


# --------------------------------------------------------------------------- two processes

GUARDED = textwrap.dedent('''
    """Three `pyro-mmvae train` runs in one torchrun job (2 ranks, gloo) whose collectives
    refuse every tensor that is not on the group's (training) device, as NCCL refuses CPU
    tensors. Writes the collectives each rank made to calls-<rank>.json."""
    import collections, json, os, sys
    import torch
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d
    from pyro_mmvae import train as train_module
    from pyro_mmvae.cli import main
    from pyro_mmvae.data import polymnist_mini, register_dataset

    register_dataset("mini-small", lambda root, split: polymnist_mini(split).subset(
        torch.arange({"train": 64, "test": 16}[split])))
    TRAINING_DEVICE = torch.device("cpu")
    GROUPS, CALLS = [], collections.Counter()
    real_init = train_module.init_process_group

    def init(device):
        group = real_init(device)
        assert group.device == TRAINING_DEVICE, group
        GROUPS.append(group)
        return group

    train_module.init_process_group = init
    if os.environ.get("SYNC_FREE") == "1":  # the engine as an accelerator runs it
        real_step_init = train_module.TrainStep.__init__

        def step_init(self, *args, **kwargs):
            real_step_init(self, *args, **{**kwargs, "sync_free": True})

        train_module.TrainStep.__init__ = step_init

    def guarded(name, real):
        def collective(*args, **kwargs):
            tensors = []
            for arg in (*args, *kwargs.values()):
                tensors += arg if isinstance(arg, list) else [arg]
            for tensor in tensors:
                if isinstance(tensor, torch.Tensor) and tensor.device != GROUPS[-1].device:
                    raise RuntimeError(f"{name}: a tensor on {tensor.device}; this backend "
                                       f"takes only tensors on {GROUPS[-1].device}")
            CALLS[name] += 1
            return real(*args, **kwargs)
        return collective

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
                 "reduce_scatter", "gather", "scatter"):
        wrapped = guarded(name, getattr(c10d, name))
        setattr(c10d, name, wrapped)
        setattr(dist, name, wrapped)

    common = sys.argv[1:]
    root = common.pop(0)
    for out, extra in (("straight", ["--epochs", "2"]), ("split", ["--epochs", "1"]),
                       ("split", ["--epochs", "2", "--resume"])):
        code = main(["train", "--out", os.path.join(root, out), *extra, *common])
        if code:
            sys.exit(code)
        dist.barrier()  # as separate jobs: the next run starts after rank 0 wrote this one
    with open(os.path.join(root, f"calls-{os.environ['RANK']}.json"), "w") as handle:
        json.dump(dict(CALLS), handle)
''')


@pytest.mark.parametrize("sync_free", [False, True], ids=["synchronous", "sync-free"])
def test_two_ranks_with_accelerator_only_collectives_train_checkpoint_and_resume_exactly(
        tmp_path, sync_free):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), str(script), str(tmp_path),
           "--model", "mmvae", "--dataset", "mini-small", "--batch-size", "16",
           "--device", "cpu", "--precision", "32", "--no-evaluate", "--no-progress",
           "--set", "hidden=[32]", "--set", "latent_dim=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNC_FREE": "1" if sync_free else "0"}
    done = subprocess.run(cmd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in range(2):
        calls = json.loads((tmp_path / f"calls-{rank}.json").read_text())
        # 4 epochs of 4 steps (one loss/norm reduction each) and 4 test losses
        assert calls["all_reduce"] == 4 * 4 + 4, calls
        assert calls["all_gather"] >= 4, calls  # the RNG states of every checkpoint
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and b["world_size"] == 2
    for key, value in a["vae_state"].items():
        assert torch.equal(value, b["vae_state"][key]), key
    assert [r["test_loss"] for r in a["history"]] == [r["test_loss"] for r in b["history"]]
