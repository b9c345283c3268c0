r"""Time the evaluation suite on the full PolyMNIST test set (10,000 tuples x 5 modalities).

Usage (from the repository root)::

    python benchmarks/evaluation.py --data-root /tmp/polymnist_full \
        --out benchmarks/results/evaluation_cpu.json
    python benchmarks/evaluation.py --data-root /data --device cuda \
        --coherence-points all --quality-samples all --likelihood-points 1000 \
        --out benchmarks/results/evaluation_gpu.json

``--data-root`` holds ``PolyMNIST/{train,test}/m{i}/*.png`` (never copied into the
repository). The model is MMVAE with the PolyMNIST ResNet networks (preset
``mmvae_polymnist``), untrained unless ``--run-dir`` names a trained run of it: evaluation
cost does not depend on the weights. Timed, each on the stated number of test points and
extrapolated linearly to the 10,000 of the test set (all metrics are per-datapoint loops):

* conditional coherence for every source subset of every size 1..4 (30 subsets, 75
  generated target images per tuple) and unconditional coherence;
* classifier Fréchet distance: classifier features of all 10,000 real test images and the
  distance itself on 10,000 x 1024 features (both measured in full), prior samples and
  leave-one-out conditional generations (measured on ``--quality-samples``), and, for the
  "2048-d in seconds" claim, the distance between two synthetic 10,000 x 2048 feature sets;
* the joint log-likelihood by importance sampling, K = ``--num-samples`` (1000), chunked,
  with PSIS k-hat and ESS.

Writes ``--out`` (JSON with the machine, settings, measured and extrapolated seconds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.data import load_dataset
from pyro_mmvae.metrics import (
    conditional_coherence,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    get_classifiers,
    unconditional_coherence,
)
from pyro_mmvae.metrics.coherence import evaluation_mode
from pyro_mmvae.metrics.likelihood import dataset_log_likelihood, likelihood_summary
from pyro_mmvae.zoo import build_model

FULL_TEST = 10_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder that holds PolyMNIST/")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--run-dir", help="a trained `pyro-mmvae train --preset mmvae_polymnist` run")
    p.add_argument("--coherence-points", default="200", help="test tuples or 'all'")
    p.add_argument("--quality-samples", default="500", help="generated images or 'all'")
    p.add_argument("--likelihood-points", default="4", help="test tuples or 'all'")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per chunk")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/evaluation_cpu.json")
    return p.parse_args(argv)


def _count(text: str, total: int) -> int:
    return total if text == "all" else min(int(text), total)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_mmvae": __version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of named steps (CUDA work is synchronised before reading)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        _sync(self.device)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        _sync(self.device)
        self.seconds[name] = round(time.perf_counter() - start, 3)
        print(f"{name:<40} {self.seconds[name]:9.2f} s", flush=True)
        return result


def build_vae(train_ds: Any, run_dir: str | None, device: torch.device) -> Any:
    """MMVAE with the PolyMNIST ResNets (preset mmvae_polymnist), trained weights optional."""
    vae = build_model("mmvae", train_ds, preset="mmvae_polymnist").vae
    if run_dir:
        from pyro_mmvae.checkpoint import load_checkpoint

        vae.load_state_dict(load_checkpoint(Path(run_dir) / "checkpoint.pt")["vae_state"])
    return vae.to(device).eval()


def features_of_real_images(classifiers: Any, test_ds: Any, batch_size: int
                            ) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for batch, _ in test_ds.batches(batch_size, device=classifiers.device):
        for name, x in batch.items():
            out.setdefault(name, []).append(classifiers.features(name, x).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def prior_features(vae: Any, classifiers: Any, num: int, batch_size: int
                   ) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    with evaluation_mode(vae):
        for start in range(0, num, batch_size):
            for name, x in vae.sample(min(batch_size, num - start)).items():
                out.setdefault(name, []).append(classifiers.features(name, x).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def leave_one_out_features(vae: Any, classifiers: Any, dataset: Any, batch_size: int,
                           device: torch.device) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    names = list(vae.names)
    with evaluation_mode(vae):
        for batch, _ in dataset.batches(batch_size, device=device):
            for target in names:
                sources = [n for n in names if n != target]
                x = vae.generate({s: batch[s] for s in sources}, sources, [target])[target]
                out.setdefault(target, []).append(classifiers.features(target, x).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def classifier_distances(real: dict[str, torch.Tensor],
                         generated: dict[str, dict[str, torch.Tensor]]
                         ) -> dict[str, dict[str, float]]:
    """Fréchet distance of each generated feature set to the real one (statistics once)."""
    reference = {name: feature_statistics(x) for name, x in real.items()}
    return {name: {kind: frechet_distance(*reference[name], *feature_statistics(sets[name]))
                   for kind, sets in generated.items()} for name in real}


def synthetic_frechet_2048(seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(FULL_TEST, 2048, generator=g)
    b = torch.randn(FULL_TEST, 2048, generator=g) * 1.1 + 0.05
    return frechet_distance_from_features(a, b)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.set_rng_seed(args.seed)
    info = machine(device)
    timer = Timer(device)
    print(f"evaluation benchmark on {info['cpu']} ({info['torch_threads']} threads), "
          f"device {device}", flush=True)

    test_ds = timer("load test set", load_dataset, "polymnist", args.data_root, "test")
    train_ds = timer("load train set", load_dataset, "polymnist", args.data_root, "train")
    n_test = len(test_ds)
    classifiers = timer("classifiers (cache or train)", get_classifiers, train_ds, test_ds,
                        device=device)
    vae = build_vae(train_ds, args.run_dir, device)

    n_coh = _count(args.coherence_points, n_test)
    coh_part = test_ds.subset(torch.arange(n_coh))
    coherence = timer("conditional coherence (all subsets)", conditional_coherence, vae,
                      coh_part, classifiers, subset_sizes=None, batch_size=args.batch_size,
                      device=device)
    uncond = timer("unconditional coherence", unconditional_coherence, vae, classifiers,
                   num_samples=n_coh, batch_size=args.batch_size)

    real = timer("classifier features of real test images", features_of_real_images,
                 classifiers, test_ds, args.batch_size)
    n_q = _count(args.quality_samples, n_test)
    prior = timer("prior samples + features", prior_features, vae, classifiers, n_q,
                  args.batch_size)
    loo = timer("leave-one-out generations + features", leave_one_out_features, vae,
                classifiers, test_ds.subset(torch.arange(n_q)), args.batch_size, device)
    distances = timer("classifier Fréchet distances (5 x 2, full)", classifier_distances,
                      real, {"unconditional": prior, "conditional_leave_one_out": loo})
    synthetic = timer("Fréchet distance, 10000 x 2048 features", synthetic_frechet_2048,
                      args.seed)

    n_lik = _count(args.likelihood_points, n_test)
    raw = timer(f"log p(X), K={args.num_samples}, chunked", dataset_log_likelihood, vae,
                test_ds, (), num_samples=args.num_samples, batch_size=min(n_lik, 64),
                chunk_size=args.chunk_size, max_points=n_lik, device=device)
    likelihood = likelihood_summary(raw)

    s = timer.seconds
    scale = {"coherence": n_test / n_coh, "quality": n_test / n_q, "likelihood": n_test / n_lik}
    full = {
        "conditional coherence (all subsets)":
            s["conditional coherence (all subsets)"] * scale["coherence"],
        "unconditional coherence (10000 samples)":
            s["unconditional coherence"] * scale["coherence"],
        "classifier Fréchet distance (real features, 10000 generated unconditional and "
        "leave-one-out, distances)":
            s["classifier features of real test images"]
            + (s["prior samples + features"] + s["leave-one-out generations + features"])
            * scale["quality"] + s["classifier Fréchet distances (5 x 2, full)"],
        f"log p(X), K={args.num_samples}":
            s[f"log p(X), K={args.num_samples}, chunked"] * scale["likelihood"],
    }
    full["total"] = sum(full.values())
    result = {
        "benchmark": "evaluation suite on the full PolyMNIST test set",
        "command": "python benchmarks/evaluation.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {**info, "load_average_at_end": list(os.getloadavg()),
                    "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 2**20, 2)},
        "model": "mmvae, preset mmvae_polymnist (PolyMNIST ResNets, latent 32), "
                 + ("trained: " + args.run_dir if args.run_dir else "untrained weights"),
        "test_set": {"tuples": n_test, "modalities": len(vae.names)},
        "measured_on": {"coherence_points": n_coh, "quality_samples": n_q,
                        "likelihood_points": n_lik, "num_samples": args.num_samples,
                        "chunk_size": args.chunk_size or "default (4096 latents per chunk)"},
        "measured_seconds": s,
        "extrapolated_full_test_set_seconds": {k: round(v, 1) for k, v in full.items()},
        "extrapolation": "linear in the number of test points (each metric is a loop over "
                         "batches of data points); real-image features and Fréchet distances "
                         "are measured on all 10,000",
        "results_on_the_measured_part": {
            "coherence_by_subset_size": coherence["by_subset_size"],
            "unconditional_coherence": uncond["coherence"],
            "classifier_accuracy": classifiers.test_accuracy,
            "classifier_frechet_distance": distances,
            "synthetic_2048d_frechet_distance": synthetic,
            "log_likelihood": likelihood["joint"],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["extrapolated_full_test_set_seconds"], indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
