"""Short pilots for choosing the CPU reproduction protocol: a preset with overrides on the first
N PolyMNIST training tuples, single-source coherence after every epoch.

Usage (the pilots of ``results/reproduction-progress.md``)::

    python benchmarks/reproduce_pilot.py --model mmvae_plus --preset mmvae_plus_polymnist_cpu \
        --polymnist DATA/polymnist --out RUN --set nets='"mlp"' --set kl_warmup_epochs=4

``--set KEY=JSON`` overrides a model setting (as ``pyro-mmvae train --set``); 19,200 tuples at
batch 128 make a 150-step epoch. Prints one JSON line per epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pyro
import torch

from pyro_mmvae.metrics import conditional_coherence, get_classifiers
from pyro_mmvae.runs import load_datasets, load_run
from pyro_mmvae.train import TrainConfig, train


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--polymnist", required=True, help="folder holding PolyMNIST/")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--train-tuples", type=int, default=19200)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--points", type=int, default=500, help="test tuples for the coherence")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    train_ds, test_ds = load_datasets("polymnist", args.polymnist)
    part = train_ds.subset(torch.arange(min(args.train_tuples, len(train_ds))))
    classifiers = get_classifiers(train_ds, test_ds, device="cpu")
    out, records = Path(args.out), []
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        config = TrainConfig(model=args.model, dataset="polymnist", data_root=args.polymnist,
                             preset=args.preset, epochs=epoch, out=str(out),
                             resume=(out / "checkpoint.pt").is_file(), device="cpu", seed=0,
                             settings=settings)
        train(config, progress=False, datasets=(part, test_ds))
        seconds = time.perf_counter() - start
        vae = load_run(out, device="cpu", data_root=args.polymnist).vae
        pyro.set_rng_seed(0)
        result = conditional_coherence(vae, test_ds.subset(torch.arange(args.points)),
                                       classifiers, subset_sizes=(1,), device="cpu")
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        record = {"epoch": epoch, "loss": last.get("train_loss"),
                  "coherence_single_source": float(result["by_subset_size"][1]),
                  "seconds": round(seconds)}
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


if __name__ == "__main__":
    main()
