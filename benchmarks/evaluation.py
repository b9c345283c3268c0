r"""Time the evaluation suite on the full PolyMNIST test set (10,000 tuples x 5 modalities).

Usage (from the repository root)::

    python benchmarks/evaluation.py --data-root /tmp/polymnist_full \
        --out benchmarks/results/evaluation_cpu.json
    python benchmarks/evaluation.py --data-root /data --device cuda \
        --coherence-points all --quality-samples all --likelihood-points 1000 \
        --out benchmarks/results/evaluation_gpu.json

    python benchmarks/evaluation.py --dataset polymnist-mini --model mmvae_plus \
        --preset mmvae_plus_polymnist --only coherence --engines cached,generate \
        --coherence-points 64 --threads 1 \
        --out benchmarks/results/evaluation_coherence_cpu.json

Beside MultiVae's evaluator (all-subset conditional coherence of the MMVAE+ ResNet recipe,
both sides in their own worker processes, interleaved; ``benchmarks/peer_coherence.py``
describes the work of each side)::

    bash benchmarks/multivae_env.sh /work/mv-venv      # MultiVae 1.0.3 in its own venv
    OMP_NUM_THREADS=1 python benchmarks/evaluation.py --multivae-python /work/mv-venv/bin/python \
        --coherence-points 32 --rounds 3 --threads 1 --decode-chunks 32 \
        --out benchmarks/results/evaluation_vs_multivae_cpu.json

writes the JSON and a table beside it (``.md``): wall and CPU time of each side per round,
their ratio, the FLOPs of each evaluation (torch's flop counter) split by network, and the
images each side encodes, decodes and classifies, so the speed-up can be read as less work
times faster work; ``--decode-chunks 32`` adds our side with 32 latents per decoder call
(the library decodes up to 4096 at once). ``--dry-run`` runs that path with our side alone
on 2 tuples, one round (a seconds-long smoke test; no MultiVae, no data set). Without
``--multivae-python`` or ``--dry-run`` the script times the suite below.

``--data-root`` holds ``PolyMNIST/{train,test}/m{i}/*.png`` (never copied into the
repository); ``--dataset polymnist-mini`` has tuples of the same shape built in memory, which
is all a timing needs. ``--engines cached,generate`` times conditional coherence with the
cached-expert engine and with one ``vae.generate`` call per subset (the figures must agree),
beside the *bound*: decoding and classifying the same number of images alone, in large
batches, with their FLOPs counted by torch. The model is MMVAE with the PolyMNIST ResNet
networks (preset ``mmvae_polymnist``; ``--model``/``--preset`` choose another), untrained
unless ``--run-dir`` names a trained run of it: evaluation cost does not depend on the
weights. Timed, each on the stated number of test points and
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
from pyro_mmvae.engine.device import cpu_model
from pyro_mmvae.metrics import (
    conditional_coherence,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    get_classifiers,
    unconditional_coherence,
)
from pyro_mmvae.metrics.common import evaluation_mode
from pyro_mmvae.metrics.likelihood import dataset_log_likelihood, likelihood_summary
from pyro_mmvae.zoo import build_model

FULL_TEST = 10_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help="folder that holds PolyMNIST/ (not for polymnist-mini)")
    p.add_argument("--dataset", default="polymnist", help="polymnist or polymnist-mini (the "
                   "same 5 x 3x28x28 tuples, 1000 test tuples, built in memory)")
    p.add_argument("--model", default="mmvae", help="model of the zoo (default: mmvae)")
    p.add_argument("--preset", default="mmvae_polymnist",
                   help="preset (default: mmvae_polymnist, the PolyMNIST ResNets)")
    p.add_argument("--only", default="coherence,quality,likelihood",
                   help="comma-separated parts to time (default: all three)")
    p.add_argument("--engines", default="cached",
                   help="coherence engines to time side by side: cached,generate "
                   "(the first one's figures are reported; all must agree)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--run-dir", help="a trained `pyro-mmvae train --preset mmvae_polymnist` run")
    p.add_argument("--coherence-points", default="200", help="test tuples or 'all'")
    p.add_argument("--bound-points", default=None, help="tuples the coherence bound is timed "
                   "on (default: --coherence-points), extrapolated to those")
    p.add_argument("--quality-samples", default="500", help="generated images or 'all'")
    p.add_argument("--likelihood-points", default="4", help="test tuples or 'all'")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per chunk")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON to write (default: benchmarks/results/"
                   "evaluation_cpu.json, or evaluation_vs_multivae_cpu.json beside MultiVae)")
    p.add_argument("--multivae-python", default=None,
                   help="python of MultiVae's own venv: time all-subset conditional coherence "
                   "beside MultiVae's CoherenceEvaluator (on --coherence-points tuples)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved evaluations per side beside MultiVae (default 3)")
    p.add_argument("--decode-chunks", default="",
                   help="beside MultiVae: also time our side with these latents per decoder "
                   "call, comma-separated (the library's default is 4096)")
    p.add_argument("--peer-engines", default="",
                   help="beside MultiVae: also time our side with these coherence engines "
                   "(e.g. cached: one expert drawn per row, MultiVae's method); our main side "
                   "runs the library's default, auto", metavar="E1,E2")
    p.add_argument("--dry-run", action="store_true",
                   help="the side-by-side path, our side only, 2 tuples, one round")
    args = p.parse_args(argv)
    if args.dry_run:
        args.multivae_python, args.coherence_points, args.rounds = None, "2", 1
    if args.out is None:
        args.out = ("benchmarks/results/evaluation_vs_multivae_cpu.json"
                    if args.multivae_python or args.dry_run
                    else "benchmarks/results/evaluation_cpu.json")
    return args


def vs_multivae(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """All-subset conditional coherence beside MultiVae's evaluator
    (``benchmarks/peer_coherence.py``); writes ``--out`` and its ``.md``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peer_coherence  # beside this file

    if args.coherence_points == "all":
        raise ValueError("--coherence-points must be a number beside MultiVae (random tuples)")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 1))
    command = (f"OMP_NUM_THREADS={threads} python benchmarks/evaluation.py "
               + " ".join(sys.argv[1:] if argv is None else argv))
    result = peer_coherence.run(int(args.coherence_points), args.rounds, threads, args.seed,
                                args.multivae_python, command,
                                decode_chunks=[int(c) for c in args.decode_chunks.split(",") if c],
                                engines=[e for e in args.peer_engines.split(",") if e])
    md = peer_coherence.write(result, Path(args.out))
    print(md.read_text())
    print(f"written: {args.out}, {md}")
    return 0


def _count(text: str, total: int) -> int:
    return total if text == "all" else min(int(text), total)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info = {
        "cpu": cpu_model(),
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


def build_vae(train_ds: Any, run_dir: str | None, device: torch.device, model: str = "mmvae",
              preset: str | None = "mmvae_polymnist", layout: bool = True) -> Any:
    """A model of the zoo (default: MMVAE with the PolyMNIST ResNets), trained weights
    optional, in the memory format ``pyro-mmvae evaluate`` uses (``layout=False``: torch's
    default, contiguous)."""
    vae = build_model(model, train_ds, preset=preset).vae
    if run_dir:
        from pyro_mmvae.checkpoint import load_checkpoint

        vae.load_state_dict(load_checkpoint(Path(run_dir) / "checkpoint.pt")["vae_state"])
    if layout:
        from pyro_mmvae.engine.networks import set_memory_format

        set_memory_format(vae, "auto", device)  # as load_run (pyro-mmvae evaluate) does
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


def coherence_bound(vae: Any, classifiers: Any, num_tuples: int, chunk: int | None = None,
                    single_source: bool = False) -> dict[str, Any]:
    """The work conditional coherence cannot avoid, timed alone: decoding every (S, t)
    image of ``num_tuples`` tuples (75 per tuple for M = 5; with ``single_source`` only the
    M(M-1) single-source ones, all the mixture engine needs) from random latents in chunks
    of ``chunk`` (default: the coherence engine's, 32 on the CPU) and classifying them; plus
    its FLOPs (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pyro_mmvae.metrics import coherence

    names = list(vae.names)
    if chunk is None:
        chunk = (coherence.CPU_DECODE_CHUNK if classifiers.device.type == "cpu"
                 else coherence.DECODE_CHUNK)
    # subsets S of the others, |S| = 1..M-1 (or the M-1 single sources)
    per_target = len(names) - 1 if single_source else 2 ** (len(names) - 1) - 1
    with evaluation_mode(vae):
        probe = vae.sample(2)  # decoder input width, read from the cached-expert latents
        latent = vae.generation_latents(vae.encode_experts(probe), names[:1], names[1:2])
        width = next(iter(latent.values())).size(-1)
        flops = FlopCounterMode(display=False)
        with flops:
            x = vae.mods[names[0]].mean(torch.randn(1, width))
            classifiers.predict(names[0], x)
        per_image = flops.get_total_flops()
        start = time.perf_counter()
        for t in names:
            latents = torch.randn(num_tuples * per_target, width)
            for part in latents.split(chunk):
                classifiers.predict(t, vae.mods[t].mean(part))
        seconds = time.perf_counter() - start
    images = num_tuples * per_target * len(names)
    return {"seconds": round(seconds, 3), "images": images, "latents_per_call": chunk,
            "gflop_per_image_decoder_and_classifier": round(per_image / 1e9, 4),
            "tflop_total": round(per_image * images / 1e12, 4),
            "achieved_gflop_per_s": round(per_image * images / seconds / 1e9, 2)}


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
    if args.multivae_python or args.dry_run:
        return vs_multivae(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.set_rng_seed(args.seed)
    info = machine(device)
    timer = Timer(device)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(f"evaluation benchmark on {info['cpu']} ({info['torch_threads']} threads), "
          f"device {device}", flush=True)

    test_ds = timer("load test set", load_dataset, args.dataset, args.data_root, "test")
    train_ds = timer("load train set", load_dataset, args.dataset, args.data_root, "train")
    n_test = len(test_ds)
    classifiers = timer("classifiers (cache or train)", get_classifiers, train_ds, test_ds,
                        device=device)
    vae = build_vae(train_ds, args.run_dir, device, args.model, args.preset)
    s = timer.seconds
    full: dict[str, float] = {}
    results: dict[str, Any] = {"classifier_accuracy": classifiers.test_accuracy}
    n_coh = _count(args.coherence_points, n_test)
    n_q = _count(args.quality_samples, n_test)
    n_lik = _count(args.likelihood_points, n_test)

    if "coherence" in parts:
        coh_part = test_ds.subset(torch.arange(n_coh))
        by_engine = {}
        for engine in engines:
            pyro.set_rng_seed(args.seed)
            by_engine[engine] = timer(f"conditional coherence, engine {engine}",
                                      conditional_coherence, vae, coh_part, classifiers,
                                      subset_sizes=None, batch_size=args.batch_size,
                                      device=device, engine=engine)
        first = by_engine[engines[0]]
        n_bound = _count(args.bound_points or args.coherence_points, n_test)
        bound = timer("coherence bound: decode + classify only", coherence_bound, vae,
                      classifiers, n_bound)
        single = timer("coherence bound, single-source images only", coherence_bound, vae,
                       classifiers, n_bound, single_source=True)
        for b in (bound, single):  # extrapolated to the coherence tuples
            b["measured_on_tuples"] = n_bound
            b["seconds_measured"] = b["seconds"]
            b["seconds"] = round(b["seconds"] * n_coh / n_bound, 3)
        uncond = timer("unconditional coherence", unconditional_coherence, vae, classifiers,
                       num_samples=n_coh, batch_size=args.batch_size)
        for engine in engines:
            full[f"conditional coherence (all subsets), engine {engine}"] = \
                s[f"conditional coherence, engine {engine}"] * n_test / n_coh
        full["coherence bound (decode + classify the same images, nothing else)"] = \
            bound["seconds"] * n_test / n_coh
        full["coherence bound, single-source images only (the mixture engine's work)"] = \
            single["seconds"] * n_test / n_coh
        full["unconditional coherence"] = s["unconditional coherence"] * n_test / n_coh
        results["coherence"] = {
            "by_subset_size": first["by_subset_size"],
            "engines_agree": all(r["by_subset"] == first["by_subset"]
                                 for r in by_engine.values()),
            "seconds_over_bound": {e: round(s[f"conditional coherence, engine {e}"]
                                            / bound["seconds"], 2) for e in engines},
            "seconds_over_single_source_bound": {
                e: round(s[f"conditional coherence, engine {e}"] / single["seconds"], 2)
                for e in engines},
            "bound": bound,
            "single_source_bound": single,
            "unconditional_coherence": uncond["coherence"],
        }
    if "quality" in parts:
        real = timer("classifier features of real test images", features_of_real_images,
                     classifiers, test_ds, args.batch_size)
        prior = timer("prior samples + features", prior_features, vae, classifiers, n_q,
                      args.batch_size)
        loo = timer("leave-one-out generations + features", leave_one_out_features, vae,
                    classifiers, test_ds.subset(torch.arange(n_q)), args.batch_size, device)
        distances = timer("classifier Fréchet distances (full)", classifier_distances,
                          real, {"unconditional": prior, "conditional_leave_one_out": loo})
        synthetic = timer("Fréchet distance, 10000 x 2048 features", synthetic_frechet_2048,
                          args.seed)
        full["classifier Fréchet distance (real features, generated unconditional and "
             "leave-one-out, distances)"] = (
            s["classifier features of real test images"]
            + (s["prior samples + features"] + s["leave-one-out generations + features"])
            * n_test / n_q + s["classifier Fréchet distances (full)"])
        results["classifier_frechet_distance"] = distances
        results["synthetic_2048d_frechet_distance"] = synthetic
    if "likelihood" in parts:
        raw = timer(f"log p(X), K={args.num_samples}, chunked", dataset_log_likelihood, vae,
                    test_ds, (), num_samples=args.num_samples, batch_size=min(n_lik, 64),
                    chunk_size=args.chunk_size, max_points=n_lik, device=device)
        full[f"log p(X), K={args.num_samples}, model proposal"] = \
            s[f"log p(X), K={args.num_samples}, chunked"] * n_test / n_lik
        results["log_likelihood"] = likelihood_summary(raw)["joint"]
    full["total"] = sum(v for k, v in full.items() if "bound" not in k)
    result = {
        "benchmark": f"evaluation suite on the {args.dataset} test set",
        "command": "python benchmarks/evaluation.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {**info, "load_average_at_end": list(os.getloadavg()),
                    "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 2**20, 2)},
        "model": f"{args.model}, preset {args.preset}, "
                 + ("trained: " + args.run_dir if args.run_dir else "untrained weights"),
        "test_set": {"tuples": n_test, "modalities": len(vae.names)},
        "measured_on": {"coherence_points": n_coh, "quality_samples": n_q,
                        "likelihood_points": n_lik, "num_samples": args.num_samples,
                        "chunk_size": args.chunk_size or "default (4096 latents per chunk)"},
        "measured_seconds": s,
        "extrapolated_full_test_set_seconds": {k: round(v, 1) for k, v in full.items()},
        "extrapolation": "linear in the number of test points (each metric is a loop over "
                         "batches of data points); real-image features and Fréchet distances "
                         "are measured on the whole test set",
        "results_on_the_measured_part": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["extrapolated_full_test_set_seconds"], indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
