r"""Does bf16 learn what fp32 learns? The README's default runs at both precisions.

Issue 11 makes bf16 the default only if it learns as fp32 does: the default ``polymnist-mini``
run of ``mmvae`` and ``mmvae_plus`` trained with ``--precision bf16`` must reach the fp32 run's
mean single-source conditional coherence

.. math:: \bar C = \frac{1}{M(M-1)} \sum_{s \neq t} \Pr[\mathrm{clf}_t(\hat x_t(x_s)) = y]

within 0.03. For each model and precision this script runs exactly the user's command,
``pyro-mmvae train --model M --precision P --out RUNS/M-P --no-progress`` (same seed; bf16 is
autocast around the networks only, so the objective stays fp32), resumes a run that was cut
(``--resume``: checkpoints are per epoch and resume bit-exactly), skips finished ones, and
writes the comparison with the machine it ran on.

A CPU without bfloat16 matrix units (AMX-BF16 / AVX512-BF16) runs bf16 emulated: operands
and results are rounded to bf16 as on hardware that has them, so the learning comparison holds,
but it is about 8x (the mini MLPs) to 15x (the PolyMNIST ResNets) slower than fp32 on an AVX2
CPU; the table names the machine and whether it has the units.

Usage::

    python benchmarks/precision.py --runs ~/precision-runs --jobs 2   # train / resume, then report
    python benchmarks/precision.py --runs ~/precision-runs --report   # table from finished runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from pyro_mmvae.engine.device import cpu_model, describe_device
from pyro_mmvae.engine.networks import bf16_supported
from pyro_mmvae.runs import RunFolder

TARGET = 0.03
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the run folders")
    parser.add_argument("--models", nargs="+", default=["mmvae", "mmvae_plus"])
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"],
                        help="the first is the reference")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--report", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "precision_mini_cpu",
                        help="results path without suffix (.json and .md are written)")
    parser.add_argument("--note", default="",
                        help="how the runs shared the machine (kept in the JSON and the table)")
    parser.add_argument("train_args", nargs="*",
                        help="extra `pyro-mmvae train` arguments after --, e.g. -- --epochs 2")
    return parser.parse_args(argv)


def run_dir(runs: Path, model: str, precision: str) -> Path:
    return runs / f"{model}-{precision}"


def train_command(model: str, precision: str, out: Path, extra: Sequence[str] = (),
                  resume: bool = False) -> list[str]:
    """The user's default-run command at ``precision`` (``--resume`` when a checkpoint exists)."""
    command = ["pyro-mmvae", "train", "--model", model, "--precision", precision,
               "--out", str(out), "--no-progress", *extra]
    return command + ["--resume"] if resume else command


def finished_summary(out: Path) -> dict[str, Any] | None:
    """The run's summary.json if training and its evaluation finished, else None."""
    summary = RunFolder(out).read_summary()
    return summary if "conditional_coherence" in summary else None


def train(model: str, precision: str, runs: Path, extra: Sequence[str]) -> None:
    out = run_dir(runs, model, precision)
    if finished_summary(out) is not None:
        return
    resume = RunFolder(out).checkpoint_path.exists()
    command = train_command(model, precision, out, extra, resume=resume)
    log = out.parent / f"{out.name}.log"
    with log.open("a") as stream:
        subprocess.run([sys.executable, "-m", "pyro_mmvae", *command[1:]], check=True,
                       stdout=stream, stderr=subprocess.STDOUT)


def compare(runs: Path, models: Sequence[str], precisions: Sequence[str],
            extra: Sequence[str] = ()) -> dict[str, Any]:
    """Coherence per model and precision, and each precision's difference to the first."""
    reference, rows = precisions[0], {}
    for model in models:
        row: dict[str, Any] = {}
        for precision in precisions:
            summary = finished_summary(run_dir(runs, model, precision))
            row[precision] = None if summary is None else {
                "conditional_coherence": summary["conditional_coherence"],
                "final_test_loss": summary["final_test_loss"],
                "training_seconds": summary["seconds"], "epochs": summary["epochs"],
                "command": " ".join(train_command(model, precision,
                                                  run_dir(runs, model, precision), extra))}
        base = row[reference]
        for precision in precisions[1:]:
            if base is not None and row[precision] is not None:
                diff = row[precision]["conditional_coherence"] - base["conditional_coherence"]
                row[precision]["difference"] = diff
                row[precision]["within_target"] = abs(diff) <= TARGET
        rows[model] = row
    device = torch.device("cpu")
    return {"target": TARGET, "reference": reference, "rows": rows, "runs": str(runs),
            "machine": describe_device(device), "cpu_model": cpu_model(),
            "bf16_matrix_units": bf16_supported(device), "torch": torch.__version__}


def _cell(entry: dict[str, Any] | None, key: str, fmt: str) -> str:
    return "not finished" if entry is None or key not in entry else format(entry[key], fmt)


def markdown(result: dict[str, Any]) -> str:
    reference = result["reference"]
    others = [p for p in next(iter(result["rows"].values()), {}) if p != reference]
    lines = ["# bf16 against fp32 learning: the default polymnist-mini runs",
             "",
             f"Machine: {result['machine']}; bfloat16 matrix units: "
             f"{'yes' if result['bf16_matrix_units'] else 'no (bf16 emulated)'}; "
             f"torch {result['torch']}. Target: |difference| <= {result['target']}.",
             "",
             "| model | precision | coherence | difference | within target | test loss"
             " | training s |",
             "|---|---|---:|---:|---|---:|---:|"]
    for model, row in result["rows"].items():
        for precision in [reference, *others]:
            entry = row[precision]
            within = "" if entry is None or "within_target" not in entry else (
                "yes" if entry["within_target"] else "**no**")
            diff = _cell(entry, "difference", "+.3f") if precision != reference else ""
            lines.append(f"| {model} | {precision} | {_cell(entry, 'conditional_coherence', '.3f')}"
                         f" | {diff} | {within} | {_cell(entry, 'final_test_loss', '.1f')}"
                         f" | {_cell(entry, 'training_seconds', '.0f')} |")
    if result.get("note"):
        lines += ["", result["note"]]
    lines += ["", f"Written by `python benchmarks/precision.py --runs {result['runs']} --jobs 2`,"
              " which runs (one per row; `--resume` continues a cut run):", ""]
    lines += [f"    {entry['command']}" for row in result["rows"].values()
              for entry in row.values() if entry is not None]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.report:
        pending = [(m, p) for m in args.models for p in args.precisions]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for future in [pool.submit(train, m, p, args.runs, args.train_args)
                           for m, p in pending]:
                future.result()
    result = compare(args.runs, args.models, args.precisions, args.train_args)
    result["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
