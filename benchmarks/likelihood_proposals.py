"""PSIS k-hat, ESS, estimate and wall time of each likelihood proposal on trained runs.

For every run folder: the joint log p(X) of the first ``--points`` test points with each
proposal of ``--proposals`` (each timed on its own, same seed), and optionally a sweep of
the annealed proposal's number of temperatures T on the first ``--sweep-points`` points.
Writes a JSON file (command, machine, settings, per run and proposal: the summary of
:func:`pyro_mmvae.metrics.likelihood.likelihood_summary`, the per-point k-hat, seconds) and a
figure: per run, the k-hat histogram of each proposal and k-hat against T.

    python benchmarks/likelihood_proposals.py RUN_MMVAE RUN_MMVAE_PLUS \\
        --out benchmarks/results/likelihood_proposals_mini.json \\
        --figure benchmarks/results/likelihood_proposals_mini_pareto_k.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package beside this file

from pyro_mmvae.engine.device import cpu_model  # noqa: E402
from pyro_mmvae.metrics.common import head  # noqa: E402
from pyro_mmvae.metrics.likelihood import (  # noqa: E402
    PARETO_K_THRESHOLD,
    dataset_log_likelihood,
    likelihood_summary,
    parse_proposals,
)
from pyro_mmvae.runs import load_run  # noqa: E402


def machine() -> dict[str, Any]:
    """CPU model (lscpu), cores, torch threads and versions."""
    import os

    model = cpu_model()

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "load_average_1min_at_start": load}


def estimate(vae: Any, dataset: Any, proposal: str, args: argparse.Namespace, seed: int,
             **options: Any) -> dict[str, Any]:
    """One proposal's joint estimate on ``dataset``: summary, per-point k-hat, seconds."""
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    raw = dataset_log_likelihood(vae, dataset, num_samples=args.num_samples,
                                 batch_size=args.batch_size, max_points=None,
                                 proposals=(proposal,), refine_steps=args.refine_steps,
                                 **options)
    seconds = time.perf_counter() - start
    summary = likelihood_summary(raw)
    joint = raw["joint"]
    return {"seconds": seconds, "joint": summary["joint"], "info":
            summary["proposals"][proposal]["info"],
            "pareto_k": [round(float(k), 4) for k in joint.pareto_k],
            "log_likelihood": [round(float(v), 3) for v in joint.log_likelihood]}


def annealed_options(args: argparse.Namespace, temperatures: int) -> dict[str, Any]:
    return {"annealed_temperatures": temperatures, "annealed_samples": args.annealed_samples,
            "annealed_leapfrog": args.annealed_leapfrog, "annealed_start": args.annealed_start}


def evaluate_run(run_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    run = load_run(run_dir)
    vae, test = run.vae, run.test_ds
    dataset = head(test, args.points)
    out: dict[str, Any] = {"run": run_dir, "model": run.state.get("model"),
                           "epoch": run.state.get("epoch"),
                           "num_datapoints": len(dataset), "proposals": {}, "sweep": {}}
    for proposal in parse_proposals(args.proposals):
        options = annealed_options(args, args.annealed_temperatures) \
            if proposal == "annealed" else {}
        result = estimate(vae, dataset, proposal, args, args.seed, **options)
        out["proposals"][proposal] = result
        _report(out["model"], proposal, result)
    if args.sweep:
        subset = head(test, args.sweep_points)
        for temperatures in args.sweep:
            result = estimate(vae, subset, "annealed", args, args.seed,
                              **annealed_options(args, temperatures))
            out["sweep"][str(temperatures)] = result
            _report(out["model"], f"annealed T={temperatures} ({len(subset)} points)", result)
    return out


def _report(model: str, label: str, result: dict[str, Any]) -> None:
    joint = result["joint"]
    k = joint["pareto_k"]
    print(f"{model:<12} {label:<32} mean {joint['mean']:10.2f}  k-hat median "
          f"{k['median']:6.2f}  > 0.7: {k['fraction_above_0.7']:5.0%}  ESS/K "
          f"{joint['ess']['mean_fraction']:.4f}  {result['seconds']:7.1f} s", flush=True)


def draw(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    figure, axes = plt.subplots(rows, 2, figsize=(12, 5.2 * rows), squeeze=False)
    for (ax_hist, ax_sweep), run in zip(axes, results, strict=True):
        for name, result in run["proposals"].items():  # empirical CDF of k-hat per proposal
            k = sorted(result["pareto_k"])
            above = result["joint"]["pareto_k"]["fraction_above_0.7"]
            ax_hist.step(k, [(i + 1) / len(k) for i in range(len(k))], where="post",
                         label=f"{name}: {above:.0%} > 0.7, mean {result['joint']['mean']:.1f} "
                         f"(K = {result['joint']['num_samples']}, {result['seconds']:.0f} s)")
        ax_hist.axvline(0.5, color="k", ls=":", lw=0.8)
        ax_hist.axvline(PARETO_K_THRESHOLD, color="k", ls="--", lw=0.8)
        ax_hist.axhline(0.8, color="gray", ls=":", lw=0.8)
        ax_hist.set_xscale("symlog", linthresh=1.0, linscale=3.0)
        ax_hist.set_xlim(left=-0.3)
        ticks = [0, 0.5, 0.7, 1, 2, 5, 10, 20]
        ax_hist.set_xticks(ticks, [str(t) for t in ticks])
        ax_hist.set_xlabel(r"Pareto $\hat{k}$ of log p(X) per test point (linear below 1, "
                           "log above)")
        ax_hist.set_ylabel(r"fraction of test points with $\hat{k}$ below")
        ax_hist.set_title(f"{run['model']} (epoch {run['epoch']}), "
                          f"{run['num_datapoints']} test points; target: 80 % below 0.7")
        ax_hist.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        if run["sweep"]:
            ts = [int(t) for t in run["sweep"]]
            med = [run["sweep"][str(t)]["joint"]["pareto_k"]["median"] for t in ts]
            frac = [run["sweep"][str(t)]["joint"]["pareto_k"]["fraction_above_0.7"]
                    for t in ts]
            points = next(iter(run["sweep"].values()))["joint"]["num_datapoints"]
            ax_sweep.plot(ts, med, "o-", label=r"median $\hat{k}$")
            ax_sweep.plot(ts, frac, "s--", label=r"fraction $\hat{k}$ > 0.7")
            ax_sweep.axhline(PARETO_K_THRESHOLD, color="k", ls="--", lw=0.8)
            ax_sweep.axhline(0.2, color="gray", ls=":", lw=0.8, label="target fraction 0.2")
            ax_sweep.set_xscale("log")
            ax_sweep.set_xlabel("AIS temperatures T")
            ax_sweep.set_title(f"annealed: k-hat against T ({points} points)")
            ax_sweep.legend(fontsize=8)
        else:
            ax_sweep.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="trained run folders")
    parser.add_argument("--points", type=int, default=100, help="test points (default: 100, "
                        "as pyro-mmvae evaluate)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--refine-steps", type=int, default=50)
    parser.add_argument("--proposals", default="all,annealed")
    parser.add_argument("--annealed-temperatures", type=int, default=100)
    parser.add_argument("--annealed-samples", type=int, default=50)
    parser.add_argument("--annealed-leapfrog", type=int, default=1)
    parser.add_argument("--annealed-start", default="refined")
    parser.add_argument("--sweep", type=lambda s: [int(t) for t in s.split(",") if t],
                        default=[], help="comma-separated T values for the k-hat vs T curve")
    parser.add_argument("--sweep-points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--figure", help="PNG file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine(), "settings": {k: v for k, v in vars(args).items()
                                           if k not in ("runs", "out", "figure")},
        "runs": []}
    for run_dir in args.runs:
        record["runs"].append(evaluate_run(run_dir, args))
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    if args.figure:
        draw(record["runs"], args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
