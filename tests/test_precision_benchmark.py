"""benchmarks/precision.py: bf16 against fp32 default runs — what it trains, resumes and reports."""

from __future__ import annotations

import json
import subprocess

import pytest
from _scripts import load_script

precision = load_script("precision")


def _finish(runs, model, prec, coherence, seconds=10.0):
    out = precision.run_dir(runs, model, prec)
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({
        "conditional_coherence": coherence, "final_test_loss": 6500.0, "seconds": seconds,
        "epochs": 12}))


def test_differences_are_against_the_first_precision_and_judged_by_the_target(tmp_path):
    _finish(tmp_path, "mmvae", "32", 0.90)
    _finish(tmp_path, "mmvae", "bf16", 0.88)
    _finish(tmp_path, "mmvae_plus", "32", 0.88)
    _finish(tmp_path, "mmvae_plus", "bf16", 0.84)
    result = precision.compare(tmp_path, ["mmvae", "mmvae_plus"], ["32", "bf16"])
    mmvae, plus = result["rows"]["mmvae"], result["rows"]["mmvae_plus"]
    assert mmvae["bf16"]["difference"] == pytest.approx(-0.02)
    assert mmvae["bf16"]["within_target"] is True
    assert plus["bf16"]["difference"] == pytest.approx(-0.04)
    assert plus["bf16"]["within_target"] is False
    assert "difference" not in mmvae["32"]
    table = precision.markdown(result)
    assert "| mmvae | bf16 | 0.880 | -0.020 | yes |" in table
    assert "| mmvae_plus | bf16 | 0.840 | -0.040 | **no** |" in table
    assert "--precision bf16" in table and result["machine"]


def test_unfinished_runs_are_reported_as_such(tmp_path):
    _finish(tmp_path, "mmvae", "32", 0.90)
    cut = precision.run_dir(tmp_path, "mmvae", "bf16")
    cut.mkdir()
    (cut / "summary.json").write_text(json.dumps({"final_loss": 1.0}))  # trained, not evaluated
    result = precision.compare(tmp_path, ["mmvae"], ["32", "bf16"])
    assert result["rows"]["mmvae"]["bf16"] is None
    assert "not finished" in precision.markdown(result)


def test_train_skips_finished_runs_and_resumes_cut_ones(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append(command))
    _finish(tmp_path, "mmvae", "32", 0.90)
    precision.train("mmvae", "32", tmp_path, [])
    assert calls == []
    cut = precision.run_dir(tmp_path, "mmvae", "bf16")
    cut.mkdir()
    (cut / "checkpoint.pt").write_bytes(b"")
    precision.train("mmvae", "bf16", tmp_path, ["--epochs", "2"])
    precision.train("mmvae_plus", "bf16", tmp_path, [])
    assert calls[0][1:4] == ["-m", "pyro_mmvae", "train"]
    assert calls[0][-3:] == ["--epochs", "2", "--resume"]
    assert "--resume" not in calls[1]
    assert calls[1][calls[1].index("--precision") + 1] == "bf16"
    assert calls[1][calls[1].index("--out") + 1] == str(tmp_path / "mmvae_plus-bf16")


def test_report_only_writes_json_and_markdown(tmp_path):
    _finish(tmp_path / "runs", "mmvae", "32", 0.90)
    _finish(tmp_path / "runs", "mmvae", "bf16", 0.91)
    out = tmp_path / "res" / "precision"
    assert precision.main(["--runs", str(tmp_path / "runs"), "--models", "mmvae", "--report",
                           "--out", str(out), "--note", "alone on the machine"]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"]["mmvae"]["bf16"]["within_target"] is True
    assert saved["note"] == "alone on the machine"
    assert "0.910" in out.with_suffix(".md").read_text()
    assert "alone on the machine" in out.with_suffix(".md").read_text()
