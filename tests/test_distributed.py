"""Data-parallel training (torchrun, gloo on the CPU) against one process on the whole batch.

Two processes with global batch B must give the parameters of one process that takes, at
each step, the gradient of the summed loss of the same two shards, each shard's latents
drawn from that rank's random stream (``rank_seed``). The update is the same mathematical
quantity; the only difference is the order of floating-point work (DDP averages W-scaled
gradients in buckets; W = 2 makes the scaling exact), so the tolerance is float32 round-off
accumulated over a few Adam steps (atol 1e-5 on weights of size ~0.1).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

from pyro_mmvae.data import polymnist_mini
from pyro_mmvae.engine import build_optimizer
from pyro_mmvae.engine.distributed import ProcessGroup, shard
from pyro_mmvae.engine.networks import set_decoder_batching
from pyro_mmvae.train import epoch_generator, rank_seed, seed_everything
from pyro_mmvae.zoo import build_model

SETTINGS = ["--set", "hidden=[32]", "--set", "latent_dim=4"]
SIZES = {"train": 64, "test": 16}

LAUNCHER = textwrap.dedent('''
    import sys
    import torch
    from pyro_mmvae.cli import main
    from pyro_mmvae.data import polymnist_mini, register_dataset

    register_dataset("mini-small", lambda root, split: polymnist_mini(split).subset(
        torch.arange({"train": 64, "test": 16}[split])))
    sys.exit(main(sys.argv[1:]))
''')


def small(split):
    return polymnist_mini(split).subset(torch.arange(SIZES[split]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(tmp_path, out, *extra):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script),
           "train", "--model", "mmvae", "--dataset", "mini-small", "--batch-size", "16",
           "--device", "cpu", "--precision", "32", "--out", str(out), "--no-evaluate",
           "--no-progress", *SETTINGS, *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def reference_parameters(steps_per_epoch: int = 4) -> dict[str, torch.Tensor]:
    """One process, one epoch: the same init, batches, shards and per-rank random streams."""
    seed_everything(0)
    train_ds = small("train")
    spec = build_model("mmvae", train_ds, hidden=(32,), latent_dim=4)
    vae, elbo = spec.vae, spec.elbo
    set_decoder_batching(vae, "auto", "cpu")
    vae.pyro_register = False
    vae.train()
    vae.start_epoch(0)
    optimizer = build_optimizer(vae.parameters(), spec.train_defaults["lr"],
                                spec.train_defaults["amsgrad"], torch.device("cpu"))
    streams = []
    for rank in range(2):
        seed_everything(rank_seed(0, rank))
        streams.append(torch.get_rng_state())
    batches = train_ds.batches(16, shuffle=True, generator=epoch_generator(0, 1))
    for batch, _ in batches:
        total = 0.0
        for rank in range(2):
            torch.set_rng_state(streams[rank])
            local = shard(batch, ProcessGroup(rank, 2))
            total = total + elbo.differentiable_loss(vae.model, vae.guide, local)
            streams[rank] = torch.get_rng_state()
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in vae.state_dict().items()}


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    pyro.enable_validation(False)
    torchrun(tmp_path, tmp_path / "ddp", "--epochs", "1")
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rank_rng_states"]) == 2
    expected = reference_parameters()
    moved = False
    for key, value in expected.items():
        torch.testing.assert_close(state["vae_state"][key], value, rtol=1e-4, atol=1e-5)
        moved |= not torch.equal(value, build_model("mmvae", small("train"), hidden=(32,),
                                                    latent_dim=4).vae.state_dict()[key])
    assert moved
    # rank 0 alone wrote the folder: one metrics line per epoch, no duplicates
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_data_parallel_resume_is_exact(tmp_path):
    torchrun(tmp_path, tmp_path / "straight", "--epochs", "2")
    torchrun(tmp_path, tmp_path / "split", "--epochs", "1")
    torchrun(tmp_path, tmp_path / "split", "--epochs", "2", "--resume")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["vae_state"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["vae_state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
