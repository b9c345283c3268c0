"""Sync-free training steps against synchronous ones, on one device, in one process.

The engine's synchronous step (:meth:`pyro_mmvae.engine.TrainStep.__call__`) reads the loss
and gradient norm back after every step, so the host waits for the device each time and the
next step's Python work (Pyro tracing, autograd bookkeeping) is never overlapped with the
device's kernels. The sync-free step (:meth:`~pyro_mmvae.engine.TrainStep.queue`, what
``pyro-mmvae train`` runs on accelerators) reads a window of steps once
(:meth:`~pyro_mmvae.engine.TrainStep.check`). This times ``--steps`` consecutive steps each
way (no synchronisation between steps, one at the end), alternating the two modes for
``--rounds`` rounds on the same model and optimiser, and prints the median time per step and
the ratio sync-free / synchronous (< 1: sync-free is faster)::

    python benchmarks/gpu/sync_free.py --device cuda --model mmvae_plus --out sync_free.md

Defaults: the built-in ``polymnist-mini`` dataset and the model's mini settings (MLPs,
batch 64): small steps, where the host's share of a step is largest. ``--preset`` times a
paper recipe instead (with ``--polymnist DIR``). On a CPU the ratio is about 1 (the CPU
runs the kernels itself: there is nothing to overlap); it is check.sh's smoke test there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pyro
import torch

from pyro_mmvae.data import load_dataset
from pyro_mmvae.engine import TrainStep, build_optimizer, resolve_precision
from pyro_mmvae.engine.device import describe_device, resolve_device
from pyro_mmvae.engine.networks import set_decoder_batching, set_memory_format
from pyro_mmvae.zoo import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(model: str, preset: str | None, dataset, device: torch.device,
               precision: str, batch_size: int | None) -> tuple[TrainStep, list]:
    """The engine step as ``pyro-mmvae train`` builds it (layout, fused Adam, precision)
    and a few batches on the device."""
    spec = build_model(model, dataset, preset)
    vae = spec.vae.to(device)
    set_decoder_batching(vae, "auto", device)
    set_memory_format(vae, "auto", device)
    vae.pyro_register = False  # as the trainer: the engine owns the parameters
    size = batch_size or int(spec.settings["batch_size"])
    batches = [b for _, (b, _) in zip(range(8), dataset.batches(size, device=device),
                                      strict=False)]
    params = list(vae.named_parameters())
    optimizer = build_optimizer([p for _, p in params], 1e-4, False, device)
    step = TrainStep(vae, spec.elbo, params, optimizer, device, precision=precision,
                     sync_free=True)
    return step, batches


def time_mode(step: TrainStep, batches: list, steps: int, sync_free: bool,
              device: torch.device) -> float:
    """Seconds per step of ``steps`` consecutive steps (one synchronisation at the end)."""
    _sync(device)
    start = time.perf_counter()
    queued = []
    for i in range(steps):
        batch = batches[i % len(batches)]
        if sync_free:
            queued.append(step.queue(batch))
        else:
            step(batch)
    TrainStep.check(queued)
    _sync(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="mmvae_plus")
    p.add_argument("--preset", default=None, help="a paper recipe (default: mini settings)")
    p.add_argument("--dataset", default="polymnist-mini")
    p.add_argument("--polymnist", help="data root of --dataset polymnist")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, help="override the settings' batch size")
    p.add_argument("--steps", type=int, default=50, help="steps per timing (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    p.add_argument("--out", help="also append the table to this file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    pyro.enable_validation(False)
    torch.manual_seed(0)
    dataset = load_dataset(args.dataset, args.polymnist, "train")
    step, batches = build_step(args.model, args.preset, dataset, device, precision,
                               args.batch_size)
    time_mode(step, batches, 3, False, device)  # warm-up: kernels, allocator, autotuning
    time_mode(step, batches, 3, True, device)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for sync_free in (False, True):
            times[sync_free].append(time_mode(step, batches, args.steps, sync_free, device))
    sync, free = (statistics.median(times[m]) for m in (False, True))
    lines = [f"{args.model} ({args.preset or args.dataset + ' settings'}), {precision}, "
             f"{describe_device(device)}, torch {torch.__version__}, {args.steps} steps x "
             f"{args.rounds} rounds",
             "| step | ms per step (median) | all rounds |", "|---|---:|---|",
             f"| synchronous (loss read every step) | {1e3 * sync:.2f} | "
             + ", ".join(f"{1e3 * t:.2f}" for t in times[False]) + " |",
             f"| sync-free (read once per window) | {1e3 * free:.2f} | "
             + ", ".join(f"{1e3 * t:.2f}" for t in times[True]) + " |",
             f"ratio sync-free / synchronous: **{free / sync:.3f}**"]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
