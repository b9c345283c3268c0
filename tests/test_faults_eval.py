"""Fault injection of `pyro-mmvae evaluate` and of the files the library writes (issue 26):
the run lock for evaluations, a killed evaluation, a non-finite checkpoint, a full disk at
the lock file and at a figure, absurd sizes, and figures that the data leaves undefined
(a modality absent in every test row) reported as not measurable in strict JSON.

Each test fails on the code before issue 26 and passes after it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint, save_json
from pyro_mmvae.data import MultimodalTensorDataset, load_dataset, registry, write_files
from pyro_mmvae.jsonutil import dumps
from pyro_mmvae.lock import LOCK_NAME, RunLock
from pyro_mmvae.metrics import evaluate as evaluate_module
from pyro_mmvae.metrics.evaluate import EVAL_NAME, LIMITS, PARTIAL_NAME, EvalSettings
from pyro_mmvae.train import TrainConfig, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
DATASET = "polymnist-mini-faults"


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _tiny(split: str) -> MultimodalTensorDataset:
    full = load_dataset("polymnist-mini", split=split)
    n = 64 if split == "train" else 32
    return MultimodalTensorDataset({k: full.data[k][:n] for k in ("m0", "m1")},
                                   full.labels[:n], name=DATASET)


@pytest.fixture
def run(monkeypatch, tmp_path) -> Path:
    """A one-epoch MVAE run on two modalities of 64 polymnist-mini tuples (fp32)."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.register_dataset(DATASET, lambda _root, split: _tiny(split))
    out = tmp_path / "run"
    train(TrainConfig(model="mvae", dataset=DATASET, epochs=1, batch_size=32, out=str(out),
                      device="cpu", precision="32", settings={"hidden": (16,), "latent_dim": 4}),
          progress=False)
    return out


#: A cheap evaluation: the joint likelihood of 4 points with q as proposal (K = 25: enough
#: for the Pareto k-hat figure).
CHEAP = ["--metrics", "likelihood", "--proposal", "model", "--num-samples", "25",
         "--max-points", "4", "--device", "cpu", "--no-progress"]


def _evaluate(run_dir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["evaluate", str(run_dir), *CHEAP, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ============================================================================ the run lock
HOLD_LOCK = textwrap.dedent("""
    import sys
    from pyro_mmvae.lock import RunLock
    lock = RunLock(sys.argv[1], command="pyro-mmvae evaluate RUN").acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
""")


@contextlib.contextmanager
def lock_held_by_child(run_dir: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_evaluate_takes_the_run_lock(run, capsys):
    """A second evaluation (or one during training) of a run is refused naming the owner,
    instead of both exiting 0 and one eval.json overwriting the other."""
    with lock_held_by_child(run) as child:
        code, _, err = _evaluate(run, capsys)
        assert code == 2
        line = _one_error_line(err)
        assert f"locked by PID {child.pid}" in line and "pyro-mmvae evaluate RUN" in line
        assert not (run / EVAL_NAME).exists() and not (run / PARTIAL_NAME).exists()
    code, out, _ = _evaluate(run, capsys)  # free again: evaluates, and releases the lock
    assert code == 0 and f"{run}/{EVAL_NAME}" in out
    assert not (run / LOCK_NAME).exists()


def test_evaluate_into_another_folder_locks_it_too(run, capsys, tmp_path):
    out = tmp_path / "elsewhere"
    with lock_held_by_child(out) as child:
        code, _, err = _evaluate(run, capsys, "--out", str(out))
    assert code == 2 and f"output folder {out} is locked by PID {child.pid}" in err
    assert not (out / EVAL_NAME).exists()


def test_evaluate_after_a_killed_one_names_the_stale_lock_and_can_break_it(run, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "command": "pyro-mmvae evaluate"}
    (run / LOCK_NAME).write_text(json.dumps(record) + "\n")
    code, _, err = _evaluate(run, capsys)
    assert code == 2 and "stale lock" in _one_error_line(err) and "--break-lock" in err
    code, _, _ = _evaluate(run, capsys, "--break-lock")
    assert code == 0 and not (run / LOCK_NAME).exists()


# ====================================================================== a killed evaluation
def test_killed_evaluate_keeps_the_previous_complete_eval_json(run, capsys, monkeypatch):
    code, _, _ = _evaluate(run, capsys)
    assert code == 0
    before = (run / EVAL_NAME).read_text()
    assert strict_json(before)["complete"] is True

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (a kill -9 stops it just as abruptly)

    monkeypatch.setattr(evaluate_module, "run_likelihood", killed)
    code = cli.main(["evaluate", str(run), *CHEAP, "--metrics", "probe,likelihood"])
    capsys.readouterr()
    assert code == 130
    assert (run / EVAL_NAME).read_text() == before  # the complete result stands
    partial = strict_json((run / PARTIAL_NAME).read_text())  # the progress is kept apart
    assert partial["complete"] is False and "probe" in partial and "likelihood" not in partial
    assert not (run / LOCK_NAME).exists()
    monkeypatch.undo()
    registry.register_dataset(DATASET, lambda _root, split: _tiny(split))
    code, _, _ = _evaluate(run, capsys)
    assert code == 0 and not (run / PARTIAL_NAME).exists()  # done: the progress file goes


# ================================================================ a non-finite checkpoint
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_evaluate_refuses_a_checkpoint_with_non_finite_parameters(run, capsys, value):
    state = load_checkpoint(run / "checkpoint.pt")
    name = next(k for k in state["vae_state"] if "decoder" in k and k.endswith("bias"))
    state["vae_state"][name].view(-1)[3] = value
    save_checkpoint(run / "checkpoint.pt", state)
    code, _, err = _evaluate(run, capsys)
    assert code == 2
    line = _one_error_line(err)
    kind = "NaN" if math.isnan(value) else "infinite"
    assert f"parameter {name!r}: 1 {kind}" in line and "checkpoint" in line
    assert not (run / EVAL_NAME).exists()


# ===================================================================== a full disk
def _full_disk_at_the_lock(real_write):
    def write(fd, data):
        if bytes(data).startswith(b'{"pid"'):  # the lock file's record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    return write


def test_disk_full_when_the_lock_file_is_created(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", _full_disk_at_the_lock(os.write))
    with pytest.raises(CheckpointWriteError, match="no space left on device") as info:
        RunLock(tmp_path / "run").acquire()
    assert str(tmp_path / "run" / LOCK_NAME) in str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # nothing left behind


def test_disk_full_at_the_lock_is_one_line_from_the_cli(run, capsys, monkeypatch):
    monkeypatch.setattr(os, "write", _full_disk_at_the_lock(os.write))
    code, _, err = _evaluate(run, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"{run / LOCK_NAME}" in line and "no space left on device" in line


def test_disk_full_when_saving_a_figure(run, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    code, _, err = _evaluate(run, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "eval_pareto_k.png" in line and "no space left on device" in line
    assert not (run / EVAL_NAME).exists() and not (run / LOCK_NAME).exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# ======================================================================= absurd sizes
@pytest.mark.parametrize("option, value", [
    ("--num-samples", "1000000000000"), ("--num-samples", "1e12"),
    ("--chunk-size", "1000000000"), ("--annealed-temperatures", "1000000000"),
    ("--annealed-leapfrog", "1000000"), ("--annealed-samples", "1e12"),
])
def test_absurd_sizes_are_refused_up_front(option, value, capsys, monkeypatch, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(evaluate_module, "_load_run", no_work)
    (tmp_path / "run").mkdir()
    code = cli.main(["evaluate", str(tmp_path / "run"), option, value, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {option}: must be at most" in err.splitlines()[-1]


def test_the_bounds_are_in_the_help_and_in_the_library(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "at most 1,000,000" in text and "at most 10,000" in text and "at most 1024" in text
    assert cli.EVAL_LIMITS["num_samples"] == LIMITS["num_samples"]
    batch = EvalSettings.likelihood_batch_size
    assert cli.EVAL_LIMITS["chunk_size"] == LIMITS["chunk_latents"] // batch
    for name in ("annealed_temperatures", "annealed_leapfrog"):
        assert cli.EVAL_LIMITS[name] == LIMITS[name]
    for field, value in [("num_samples", 10**12), ("annealed_temperatures", 10**9),
                         ("chunk_size", 10**6), ("unconditional_samples", 10**12)]:
        with pytest.raises(ValueError, match=f"{field} must be at most"):
            EvalSettings(**{field: value}).check()


# ========================================================= not measurable, strict JSON
def test_strict_json_everywhere(tmp_path):
    assert dumps({"a": float("nan"), "b": [float("inf"), np.float32("-inf")],
                  "c": torch.tensor([1.0, float("nan")])}) == \
        '{"a": null, "b": [null, null], "c": [1.0, null]}'
    save_json(tmp_path / "x.json", {"loss": float("nan"), "ok": 1.5})
    assert strict_json((tmp_path / "x.json").read_text()) == {"loss": None, "ok": 1.5}
    from pyro_mmvae.runs import RunFolder

    folder = RunFolder(tmp_path)
    folder.append_metrics({"epoch": 1, "test_loss": float("inf")})
    folder.write_metrics([{"epoch": 1, "test_loss": float("nan")}] * 2)
    for line in folder.metrics_path.read_text().splitlines():
        assert strict_json(line)["test_loss"] is None


def _absent_modality_data(root: Path, n: int = 48) -> Path:
    """img, vec, tok with ``vec`` masked absent in every row of both splits."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_files(root / split,
                    {"img": rng.random((n, 1, 6, 6)).astype(np.float32),
                     "vec": rng.normal(size=(n, 5)).astype(np.float32),
                     "tok": rng.integers(0, 7, size=(n, 4))},
                    labels=rng.integers(0, 3, n), masks={"vec": np.zeros(n, bool)})
    return root


def test_a_modality_absent_in_every_row_is_not_measurable(tmp_path, capsys):
    """Train with evaluation: exit 0 (the training succeeded; the data leaves the figure
    undefined, not wrong) with a warning, and null + a note in a strict summary.json."""
    data = _absent_modality_data(tmp_path / "data")
    run = tmp_path / "run"
    code = cli.main(["train", "--dataset", f"files:{data}", "--epochs", "1", "--batch-size",
                     "16", "--set", "hidden=[16]", "--precision", "32", "--device", "cpu",
                     "--out", str(run), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "coherence (1 -> rest) not measurable: modality vec is absent" in captured.err
    assert "nan" not in captured.out.lower()
    summary = strict_json((run / "summary.json").read_text())
    assert summary["conditional_coherence"] is None
    assert summary["conditional_coherence_note"].startswith(
        "not measurable: modality vec is absent in all 48 test rows")
    assert summary["coherence_matrix"]["img"]["tok"] is not None  # measurable pairs stay
    assert summary["coherence_matrix"]["vec"] == {"img": None, "tok": None}
    assert summary["classifier_accuracy"]["vec"] is None  # not 0.0: no row to measure it on

    code = cli.main(["evaluate", str(run), "--metrics", "coherence,quality,likelihood,probe",
                     "--num-samples", "8", "--max-points", "8", "--device", "cpu",
                     "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1:n/a" in captured.out and "warning: coherence not measurable" in captured.out
    result = strict_json((run / EVAL_NAME).read_text())
    coherence = result["coherence"]
    assert coherence["by_subset_size"]["1"] is None
    assert coherence["note"].startswith("not measurable: ")
    assert coherence["conditional"]["not_measurable"]["vec -> img"] == \
        "not measurable: modality vec is absent in all 48 test rows evaluated"
    assert result["probe"]["by_subset"]["vec"] is None and result["probe"]["note"]
    assert "skipped" in result["likelihood"]


def test_frechet_distance_of_a_modality_without_test_images_is_not_measurable():
    from pyro_mmvae.metrics.suite import NOTES, _distances

    g = torch.Generator().manual_seed(0)
    sets = {"test": {"m0": [torch.randn(20, 4, generator=g)], "m1": [torch.zeros(0, 4)]},
            "unconditional": {"m0": [torch.randn(20, 4, generator=g)],
                              "m1": [torch.randn(20, 4, generator=g)]}}
    out = _distances(sets, ["m0", "m1"])
    assert out["unconditional"]["m0"] > 0 and out["unconditional"]["m1"] is None
    assert out[NOTES]["unconditional/m1"].startswith("not measurable: modality m1 is absent")
