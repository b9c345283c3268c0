"""benchmarks/gpu/check.sh, the prepared GPU check, runs end to end on the CPU (dry run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    if not (ROOT / "benchmarks" / "throughput.py").exists():
        pytest.skip("benchmarks/throughput.py not present")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--device", "cpu",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = tmp_path / "out"
    assert "torch" in (out / "machine.txt").read_text()
    assert (out / "throughput.json").is_file()
    assert "epoch 2/2" in (out / "ddp.log").read_text() or "train loss" in (
        out / "ddp.log").read_text()
    curve = [json.loads(line) for line in (out / "recipe_curve.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == [1, 2]
    assert all(0.0 <= r["coherence"] <= 1.0 for r in curve)


def test_gpu_check_keeps_to_its_budget(tmp_path):
    """With the budget spent before the first step, every step is skipped and counted."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "CHECK_SECONDS": "5", "CHECK_BOX_SCALE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--device", "cpu",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    printed = done.stdout + (tmp_path / "out" / "ddp.log").read_text()  # ddp's step logs there
    assert printed.count("SKIPPED (budget spent)") == 3, printed
    assert done.returncode == 3
    assert not (tmp_path / "out" / "throughput.json").exists()
