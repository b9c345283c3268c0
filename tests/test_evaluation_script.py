"""benchmarks/evaluation.py beside MultiVae (benchmarks/peer_coherence.py): its port of our
digit classifier is exact, its arithmetic is right, and its dry run works (our side only;
MultiVae is never needed here)."""

import json
import os
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest
import torch
from _scripts import load_script

from pyro_mmvae.nets.classifier import DigitClassifier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "evaluation.py"


@pytest.fixture(scope="module")
def peer():
    return load_script("peer_coherence", "peer_coherence_script")


def test_ported_classifier_is_ours(peer):
    """Same parameter and buffer names and shapes; with our weights, the same logits."""
    torch.manual_seed(0)
    ours = DigitClassifier((3, 28, 28), 10)
    port = peer.DigitClassifier()
    assert {k: v.shape for k, v in port.state_dict().items()} == \
        {k: v.shape for k, v in ours.state_dict().items()}
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    port.load_state_dict(ours.state_dict())
    ours.eval()
    port.eval()
    x = torch.rand(4, 3, 28, 28)
    assert torch.equal(port(x), ours(x))


def test_row_counter_counts_data_points(peer):
    enc, dec = torch.nn.Conv2d(3, 1, 1), torch.nn.Linear(6, 2)
    rows = peer._RowCounter({"encoder": [enc], "decoder": [dec]})
    enc(torch.rand(4, 3, 5, 5))
    enc(torch.rand(2, 3, 5, 5))
    dec(torch.rand(3, 7, 6))  # 21 latents of width 6
    rows.remove()
    enc(torch.rand(9, 3, 5, 5))  # after remove(): not counted
    assert rows.rows == {"encoder": 6, "decoder": 21}


def test_compare_sides_splits_the_ratio(peer):
    """speed-up (CPU) = FLOP ratio x achieved-rate ratio, by hand: 100 GFLOP in 10 s against
    400 GFLOP in 80 s is 4x the work at 10/5 = 2x the rate, 8x the time."""
    ours = {"flops_per_evaluation": 100e9, "wall_median_s": 20.0, "cpu_median_s": 10.0,
            "cpu_s": [10.0, 11.0], "achieved_gflop_per_cpu_s": 10.0}
    theirs = {"flops_per_evaluation": 400e9, "wall_median_s": 150.0, "cpu_median_s": 80.0,
              "cpu_s": [80.0, 77.0], "achieved_gflop_per_cpu_s": 5.0}
    c = peer.compare_sides(ours, theirs)
    assert c["flop_ratio_less_work"] == pytest.approx(4.0)
    assert c["achieved_rate_ratio_faster_work"] == pytest.approx(2.0)
    assert c["speedup_cpu"] == pytest.approx(8.0)
    assert c["speedup_wall"] == pytest.approx(7.5)
    assert c["speedup_per_round_cpu"] == pytest.approx([8.0, 7.0])


def test_dry_run_ours_only(tmp_path):
    """The whole path (parent, worker process, protocol, counters, table) on 2 tuples."""
    out = tmp_path / "vs.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert list(result["sides"]) == ["ours"] and "comparison" not in result
    assert (result["tuples"], result["rounds"], result["threads"]) == (2, 1, 1)
    ours = result["sides"]["ours"]
    m = 5
    pairs = sum(comb(m, k) * (m - k) for k in range(1, m))  # (S, t), t not in S: 75
    assert ours["pairs"] == pairs == 75
    # each tuple encoded once per modality; MMVAE+ is a mixture posterior, so the default
    # engine generates and classifies the M(M-1) single-source images only, and every (S, t)
    # is their mean over the experts of S
    singles = m * (m - 1)
    assert ours["images"] == {"encoder": 2 * m, "decoder": 2 * singles,
                              "classifier": 2 * singles}
    # the counted FLOPs are the networks' (per-image FLOPs x images), nothing else
    per = ours["flops_per_image"]
    assert ours["flops_per_evaluation"] == sum(per[k] * ours["images"][k] for k in per)
    assert per["decoder"] > per["classifier"] > 0
    assert len(ours["wall_s"]) == len(ours["cpu_s"]) == 1 and ours["wall_s"][0] > 0
    assert len(ours["coherence_by_subset_size"]) == m - 1
    assert "| ours |" in out.with_suffix(".md").read_text()


def test_missing_multivae_python_is_rejected(peer):
    with pytest.raises(ValueError, match="--multivae-python /nonexistent/python"):
        peer.run(2, 1, 1, 0, "/nonexistent/python", "cmd")
