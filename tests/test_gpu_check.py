"""benchmarks/gpu/check.sh, the prepared GPU check, runs end to end on the CPU (dry run):
every step inside its own time box, each leaving its results under $OUT as it ends."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["preflight", "ddp", "throughput-fp32", "estimate", "sync-free", "recipe"]


def steps_of(out: Path) -> list[dict[str, str]]:
    header, *lines = (out / "steps.tsv").read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    if not (ROOT / "benchmarks" / "throughput.py").exists():
        pytest.skip("benchmarks/throughput.py not present")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--device", "cpu",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "out"
    steps = steps_of(out)
    report = "\n".join(f"{s['step']:<16} {s['status']:<8} {s['seconds']:>4} s of {s['box']} s"
                       for s in steps)
    print(report)  # each box's time (pytest -s)
    assert done.returncode == 0, report + done.stdout[-4000:] + done.stderr[-4000:]
    assert [s["step"] for s in steps] == STEPS, report
    assert all(s["status"] == "ok" and int(s["seconds"]) <= int(s["box"]) for s in steps), report
    assert "torch" in (out / "machine.txt").read_text()
    preflight = json.loads((out / "preflight.json").read_text())
    assert all(check["ok"] for check in preflight.values()), preflight
    assert preflight["distributed"]["two_ranks_use"] == "gloo"
    assert (out / "throughput-fp32.json").is_file()
    ddp = (out / "ddp.log").read_text()
    assert "rank 0 of 2, backend gloo" in ddp and "rank 1 of 2, backend gloo" in ddp, ddp
    estimate = (out / "reproduce_estimate.txt").read_text()
    assert estimate.startswith("mmvae: mmvae_polymnist, precision 32"), estimate
    assert "ratio sync-free / synchronous" in (out / "sync_free.md").read_text()
    curve = [json.loads(line) for line in (out / "recipe_curve.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == [1]
    assert all(0.0 <= r["coherence"] <= 1.0 for r in curve)


def test_gpu_check_keeps_to_its_budget(tmp_path):
    """With the budget spent before the first step, every step is skipped and counted."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "CHECK_SECONDS": "5", "CHECK_BOX_SCALE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--device", "cpu",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.count("SKIPPED (budget spent)") == len(STEPS), done.stdout
    assert done.returncode == len(STEPS)
    assert [s["status"] for s in steps_of(tmp_path / "out")] == ["skipped"] * len(STEPS)
    assert not (tmp_path / "out" / "throughput-fp32.json").exists()
