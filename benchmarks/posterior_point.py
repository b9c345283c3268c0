"""Conditional coherence of the reproduction's trained rows with sampled z, beside the mean.

The reproduction table (``benchmarks/reproduce.py``) decodes the posterior *mean* of z;
MultiVae's coherence (and the figures the papers report with its protocol) decodes one draw
:math:`z \\sim q(z|X_S)` per test tuple. This script evaluates each finished row again with
``posterior="sample"`` (the library's evaluator, coherence only, the same test tuples and
seed) and writes both figures side by side, so that "matches / above the paper" is read
under the paper's protocol::

    python benchmarks/posterior_point.py --runs /work/repro/runs-mlp \\
        --polymnist /work/data/polymnist --translated /work/data/translated --threads 1

The mean figures are read from ``benchmarks/results/reproduction.json`` (same evaluator,
``--eval-points`` test tuples, seed 0); rows not finished there are skipped. Each row's
sampled evaluation is written to ``OUT_RUNS/<row>/eval.json`` (default: ``RUN/eval-sample``)
and the table to ``benchmarks/results/posterior-point.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce import PAPERS, ROWS, data_root, machine  # noqa: E402

from pyro_mmvae.checkpoint import save_json  # noqa: E402
from pyro_mmvae.metrics.evaluate import evaluate_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "posterior-point"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the reproduction's --runs folder")
    p.add_argument("--polymnist", help="folder holding PolyMNIST/ (plain rows)")
    p.add_argument("--translated", help="folder holding PolyMNIST/ (translated rows)")
    p.add_argument("--rows", default="all", help="comma-separated row keys (default: all "
                   "finished rows of --table)")
    p.add_argument("--table", default=str(RESULTS / "reproduction.json"),
                   help="the reproduction's JSON (posterior-mean figures)")
    p.add_argument("--out", default=str(RESULTS / f"{NAME}.json"), help="output JSON "
                   "(a Markdown table is written beside it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    return p.parse_args(argv)


def sampled_coherence(args: argparse.Namespace, key: str, points: int) -> dict[str, Any]:
    """The library's evaluator on row ``key`` with ``posterior="sample"`` (coherence only)."""
    row = next(r for r in ROWS if r.key == key)
    run_dir = Path(args.runs) / key.replace("/", "-")
    pyro.set_rng_seed(0)
    result = evaluate_run(run_dir, metrics=("coherence",), device=args.device,
                          data_root=data_root(args, row), coherence_points=points,
                          quality_points=points, posterior="sample", progress=False,
                          out_dir=run_dir / "eval-sample")
    return {**result["coherence"], "seconds": result.get("seconds", {}).get("coherence")}


def by_size(coherence: dict[str, Any]) -> list[float]:
    sizes = coherence["by_subset_size"]
    return [sizes[str(k)] if str(k) in sizes else sizes[k] for k in range(1, 5)]


def markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = ["| row | posterior mean, 1/2/3/4 inputs (%) | sampled z (%) | difference "
             "(points) | paper |", "|---|---|---|---|---|"]
    for key, r in table.items():
        mean, sample = r["mean"], r["sample"]
        paper = PAPERS.get(key, {})
        paper_text = ("/".join(f"{v:g}" for v in paper["conditional"])
                      if "conditional" in paper else
                      f"mean {paper['mean_conditional']:g}" if "mean_conditional" in paper
                      else "–")
        lines.append(
            f"| {key} | {'/'.join(f'{100 * v:.1f}' for v in mean)} | "
            f"{'/'.join(f'{100 * v:.1f}' for v in sample)} | "
            f"{'/'.join(f'{100 * (s - m):+.1f}' for m, s in zip(mean, sample, strict=True))}"
            f" | {paper_text} |")
    first = next(iter(table.values()), {})
    lines += ["", f"{first.get('points', '?')} test tuples, seed 0, every source subset; "
              "mixture posteriors (MMVAE, MMVAE+, baseline): the expectation over the drawn "
              "expert, as in the reproduction table. Command: `"
              f"{first.get('command', '')}`; machine: {first.get('machine', '?')}, torch "
              f"{torch.__version__}, {first.get('date', '?')}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reproduction = json.loads(Path(args.table).read_text())
    keys = list(reproduction) if args.rows == "all" else args.rows.split(",")
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {}
    command = "python benchmarks/posterior_point.py " + " ".join(argv or sys.argv[1:])
    for key in keys:
        if key not in reproduction:
            print(f"{key}: not in {args.table} (not finished); skipped")
            continue
        points = reproduction[key]["eval_points"]
        coherence = sampled_coherence(args, key, points)
        table[key] = {
            "mean": reproduction[key]["conditional_coherence"],
            "sample": by_size(coherence),
            "points": points,
            "eval_seconds": coherence.get("seconds"),
            "command": command,
            "machine": machine(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        save_json(out, table)
        out.with_suffix(".md").write_text(markdown(table))
        print(f"{key}: mean {table[key]['mean']} sample {table[key]['sample']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
