"""The wall time of each full paper recipe from timed training steps, in the recipe's own
precision (for check.sh).

``benchmarks/reproduce.py --estimate`` times fp32 steps, but ``--full`` runs train with
``pyro-mmvae train``'s default ``--precision auto`` (bf16 on GPUs with native bf16). This
times the same engine step (:class:`~pyro_mmvae.engine.TrainStep`, the layout, optimiser and
CUDA defaults ``pyro-mmvae train`` uses) in ``--precision`` resolved for the device, and
prints each row, appending it to ``--out``, as soon as it is timed::

    python benchmarks/gpu/estimate.py --device cuda --polymnist DIR --out estimate.txt

``--dataset polymnist-mini --batch-size 2 --steps 1 --warmup 0`` is check.sh's CPU smoke
test.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reproduce import ROW_KEYS, row_of  # noqa: E402

from pyro_mmvae.data import load_dataset  # noqa: E402
from pyro_mmvae.engine import TrainStep, build_optimizer, resolve_precision  # noqa: E402
from pyro_mmvae.engine.device import describe_device, resolve_device  # noqa: E402
from pyro_mmvae.engine.networks import set_decoder_batching, set_memory_format  # noqa: E402
from pyro_mmvae.presets import PRESETS  # noqa: E402
from pyro_mmvae.zoo import build_model  # noqa: E402

TRAIN_SIZE = 60000


def time_steps(model: str, preset: str, dataset, device: torch.device, precision: str,
               batch_size: int, steps: int, warmup: int = 2) -> float:
    """Median seconds of one engine step of ``preset`` after ``warmup`` untimed ones."""
    spec = build_model(model, dataset, preset)
    vae = spec.vae.to(device)
    set_decoder_batching(vae, "auto", device)
    set_memory_format(vae, "auto", device)
    batch = next(iter(dataset.batches(batch_size, device=device)))[0]
    params = list(vae.named_parameters())
    step = TrainStep(vae, spec.elbo, params,
                     build_optimizer([p for _, p in params], 1e-4, False, device), device,
                     precision=precision)
    times = []
    with pyro.validation_enabled(False):
        for _ in range(steps + warmup):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tic = time.perf_counter()
            step.queue(batch) if step.sync_free else step(batch)  # as pyro-mmvae train
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - tic)
    timed = sorted(times[warmup:])
    return timed[len(timed) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="auto", help="as pyro-mmvae train (default auto)")
    p.add_argument("--rows", default="all", help=f"comma-separated of {', '.join(ROW_KEYS)}")
    p.add_argument("--polymnist", help="folder holding PolyMNIST/ (make-polymnist --out)")
    p.add_argument("--dataset", default="polymnist")
    p.add_argument("--batch-size", type=int, help="override the recipe's (smoke tests)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--out", type=Path, help="append each row's line here")
    args = p.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    keys = ROW_KEYS if args.rows == "all" else tuple(args.rows.split(","))
    dataset = load_dataset(args.dataset, args.polymnist, "test")
    for key in keys:
        row = row_of(key)
        preset = row.full_preset
        batch_size = args.batch_size or int(PRESETS[preset]["batch_size"])
        seconds = time_steps(row.model, preset, dataset, device, precision, batch_size,
                             args.steps, args.warmup)
        steps_per_epoch = math.ceil(TRAIN_SIZE / batch_size)
        epochs = int(PRESETS[preset]["epochs"])
        hours = seconds * steps_per_epoch * epochs / 3600
        line = (f"{key}: {preset}, precision {precision}, batch {batch_size}, {epochs} epochs "
                f"x {steps_per_epoch} steps x {seconds:.4f} s = {hours:.2f} h "
                f"({describe_device(device)})")
        print(line, flush=True)
        if args.out is not None:
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
