r"""Why is one model of the reproduction more coherent than another? Measure where the digit is.

Cross-modal generation from one source modality s to a target t decodes
:math:`[\bar z_s, w_t]`: the mean of the source's shared expert :math:`q_s(z|x_s)` and, for the
models with private latents (MMVAE+ and its private-latent baseline), a private latent
:math:`w_t` of the target that the source cannot infer — the MMVAE+ paper draws it from the
prior :math:`p(w_t)`. Two things can make that generation lose the digit:

1. the shared latent does not carry it (a weak representation), or
2. the decoder reads part of the digit from :math:`w_t` (shared information leaking into the
   private latent, the failure the MMVAE+ auxiliary prior is meant to prevent), or decodes a
   prior draw of :math:`w_t` into something the classifier cannot read (prior holes).

For each run this script measures, on test tuples of real PolyMNIST:

* **probe z** — a logistic-regression probe (:func:`pyro_mmvae.metrics.probe.probe_accuracy`)
  of the digit from :math:`\bar z_m` of each single modality, mean over modalities;
* **probe w** — the same from the private posterior mean :math:`\bar w_m` (leakage: chance
  0.1 means the private latent holds no digit);
* **coherence** of every source -> target pair (s != t), mean, with :math:`w_t` from
  ``prior`` (:math:`p(w_t)`, the paper's and the library's cross-generation), ``zero``
  (the prior's mean), ``shuffled`` (:math:`\bar w_t` of *another* test tuple: a real
  private latent carrying another tuple's digit, if it carries any) and ``own``
  (:math:`\bar w_t` of the same tuple — an oracle that sees the target);
* **reconstruction coherence** — t decoded from its own :math:`[\bar z_t, \bar w_t]`.

If ``shuffled`` is far below ``own``, the private latent carries the digit; if ``prior`` is
below ``shuffled``, prior draws land where the decoder has not been trained.

Usage::

    python benchmarks/private_latent_diagnosis.py --runs RUNS/mmvae,RUNS/mmvae_plus \
        --data-root DATA/polymnist --points 1000 --out benchmarks/results/private_latent.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor

from pyro_mmvae.engine.device import describe_device
from pyro_mmvae.metrics import get_classifiers
from pyro_mmvae.metrics.common import evaluation_mode
from pyro_mmvae.metrics.probe import probe_accuracy
from pyro_mmvae.models.mmvae_plus import concat_latents
from pyro_mmvae.runs import load_datasets, load_run

VARIANTS = ("prior", "zero", "shuffled", "own")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="comma-separated run folders")
    parser.add_argument("--data-root", required=True, help="folder with the PolyMNIST data")
    parser.add_argument("--dataset", default="polymnist")
    parser.add_argument("--points", type=int, default=1000, help="test tuples")
    parser.add_argument("--probe-train", type=int, default=5000, help="training tuples of the "
                        "probes")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    return parser.parse_args(argv)


def _first(dataset: Any, num: int) -> tuple[dict[str, Tensor], Tensor]:
    part = dataset.subset(torch.arange(min(num, len(dataset))))
    batches = list(part.batches(len(part)))
    return batches[0]


def _latents(vae: Any, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Shared means ``loc`` (M, N, Dz) and, for private-latent models, ``loc_w``."""
    with evaluation_mode(vae), torch.no_grad():
        return vae.encode_experts(batch)


def _probe(train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor) -> float:
    """Mean over modalities of the probe accuracy of ``(M, N, D)`` features."""
    return float(np.mean([probe_accuracy(train[m].double().numpy(), train_y.numpy(),
                                         test[m].double().numpy(), test_y.numpy())
                          for m in range(train.size(0))]))


def _accuracy(classifiers: Any, name: str, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((classifiers.predict(name, images) == labels).double().mean())


def diagnose(run_dir: str, datasets: tuple[Any, Any], classifiers: Any, points: int,
             probe_train: int, seed: int) -> dict[str, Any]:
    """The figures of the module docstring for one run."""
    start = time.perf_counter()
    vae = load_run(run_dir, datasets=datasets).vae
    out = {"run": run_dir, **diagnose_model(vae, datasets, classifiers, points, probe_train,
                                            seed)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def diagnose_model(vae: Any, datasets: tuple[Any, Any], classifiers: Any, points: int,
                   probe_train: int, seed: int) -> dict[str, Any]:
    """The figures of the module docstring for one model (``datasets``: train, test)."""
    train_x, train_y = _first(datasets[0], probe_train)
    test_x, test_y = _first(datasets[1], points)
    train_e, test_e = _latents(vae, train_x), _latents(vae, test_x)
    names = list(vae.names)
    private = "loc_w" in test_e
    out: dict[str, Any] = {"model": type(vae).__name__, "points": len(test_y),
                           "probe_z": _probe(train_e["loc"], train_y, test_e["loc"], test_y)}
    if private:
        out["probe_w"] = _probe(train_e["loc_w"], train_y, test_e["loc_w"], test_y)
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(len(test_y), generator=generator)
    pyro.set_rng_seed(seed)
    coherence: dict[str, list[float]] = {v: [] for v in (VARIANTS if private else ("prior",))}
    reconstruction = []
    with evaluation_mode(vae), torch.no_grad():
        for t, target in enumerate(names):
            decode = vae.mods[target].mean
            w_own = test_e["loc_w"][t] if private else None
            own = test_e["loc"][t] if not private else concat_latents(test_e["loc"][t], w_own)
            reconstruction.append(_accuracy(classifiers, target, decode(own), test_y))
            for s, _ in enumerate(names):
                if s == t:
                    continue
                z = test_e["loc"][s]
                if not private:
                    coherence["prior"].append(_accuracy(classifiers, target, decode(z), test_y))
                    continue
                choices = {"prior": vae.private_prior().sample((z.size(0),)),
                           "zero": torch.zeros_like(w_own), "shuffled": w_own[shuffle],
                           "own": w_own}
                for variant, w in choices.items():
                    images = decode(concat_latents(z, w))
                    coherence[variant].append(_accuracy(classifiers, target, images, test_y))
    out["coherence"] = {k: float(np.mean(v)) for k, v in coherence.items()}
    out["reconstruction_coherence"] = float(np.mean(reconstruction))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = load_datasets(args.dataset, args.data_root)
    classifiers = get_classifiers(*datasets, device="cpu")
    rows = [diagnose(run, datasets, classifiers, args.points, args.probe_train, args.seed)
            for run in args.runs.split(",")]
    print("| run | model | probe z | probe w | coherence: w prior / zero / shuffled / own | "
          "reconstruction |")
    print("|---|---|---:|---:|---|---:|")
    for r in rows:
        c = r["coherence"]
        cells = " / ".join(f"{c[v]:.3f}" for v in VARIANTS if v in c)
        print(f"| {r['run']} | {r['model']} | {r['probe_z']:.3f} | "
              f"{r.get('probe_w', float('nan')):.3f} | {cells} | "
              f"{r['reconstruction_coherence']:.3f} |")
    if args.out:
        record = {"command": "python benchmarks/private_latent_diagnosis.py "
                  + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
                  "machine": describe_device("cpu"),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "date": datetime.datetime.now().isoformat(timespec="seconds"), "runs": rows}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
