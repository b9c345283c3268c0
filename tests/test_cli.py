"""Tests of the `pyro-mmvae` command line (pyro_mmvae.cli)."""

from __future__ import annotations

import gzip
import importlib
import json
import re
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae import train as train_module
from pyro_mmvae.checkpoint import CheckpointError
from pyro_mmvae.data import registry
from pyro_mmvae.train import TrainingError

torch.set_num_threads(1)


def _importable(*names: str) -> bool:
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


HAVE_ZOO = _importable("pyro_mmvae.zoo")
HAVE_DATA = _importable("pyro_mmvae.data.registry")
needs_zoo = pytest.mark.skipif(not HAVE_ZOO, reason="pyro_mmvae.zoo does not import yet")
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="pyro_mmvae.data.registry (load_dataset, DATASETS) does not import yet"
)


def test_help_lists_commands_without_importing_torch(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "make-polymnist" in text
    code = (
        "import sys; from pyro_mmvae.cli import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'pyro') if m in sys.modules]; "
        "sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, "pyro-mmvae --help imported torch or pyro"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "pyro_mmvae", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "pyro_mmvae" in done.stdout


@needs_zoo
@needs_data
def test_train_arguments_are_parsed():
    args = cli.build_parser().parse_args(
        ["train", "--model", "mmvae", "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
         "--num-particles", "3", "--estimator", "iwae", "--seed", "5", "--resume",
         "--no-evaluate", "--device", "cpu"]
    )
    assert (args.model, args.epochs, args.batch_size, args.lr) == ("mmvae", 2, 8, 0.01)
    assert (args.num_particles, args.estimator, args.seed) == (3, "iwae", 5)
    assert args.resume and not args.evaluate and args.dataset == "polymnist-mini"
    assert args.precision is None  # TrainConfig: the checkpoint's, else "auto"
    assert cli.build_parser().parse_args(["train", "--precision", "auto"]).precision == "auto"


def test_set_parses_model_settings():
    args = cli.build_parser().parse_args(
        ["train", "--set", "beta=2.5", "--set", "hidden=[64, 32]", "--set", "posterior=laplace",
         "--set", "decoder_stop_gradient=true"])
    assert dict(args.settings) == {"beta": 2.5, "hidden": (64, 32), "posterior": "laplace",
                                   "decoder_stop_gradient": True}


def test_evaluate_takes_proposal_lists_and_annealing_options():
    args = cli.build_parser().parse_args(
        ["evaluate", "RUN", "--proposal", "all, annealed", "--annealed-temperatures", "300",
         "--annealed-samples", "50", "--annealed-leapfrog", "2", "--annealed-start", "model"])
    assert args.proposal == "all,annealed"
    assert (args.annealed_temperatures, args.annealed_samples, args.annealed_leapfrog,
            args.annealed_start) == (300, 50, 2, "model")
    assert cli.build_parser().parse_args(["evaluate", "RUN"]).proposal == "all"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "RUN", "--proposal", "refined,bogus"], "unknown proposal(s) bogus"),
        (["evaluate", "RUN", "--annealed-temperatures", "0"], "positive integer"),
        (["evaluate", "RUN", "--annealed-start", "annealed"], "invalid choice"),
    ],
)
def test_bad_evaluate_arguments_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


@needs_zoo
@needs_data
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "no-such-model"], "invalid choice"),
        (["train", "--dataset", "no-such-data"], "invalid choice"),
        (["train", "--epochs", "0"], "positive integer"),
        (["train", "--estimator", "vimco"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["train", "--set", "beta"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


@needs_zoo
@needs_data
def test_no_arguments_trains_the_default_model(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train(config, progress=True, on_start=None):
        seen["config"] = config
        on_start(types.SimpleNamespace(
            model=config.model, precision="32", device="cpu", epochs=12, batch_size=64,
            lr=1e-3, settings={"latent_dim": 20, "beta": 1.0, "nets": "mlp"}))
        return {"final_loss": 1.5, "model": config.model, "seconds": 0.1}

    def fake_evaluation(summary, out, device):
        seen["evaluated"] = out
        return summary

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(cli, "_evaluate_training", fake_evaluation)
    assert cli.main([]) == 0
    config = seen["config"]
    assert (config.model, config.dataset) == ("mmvae", "polymnist-mini")
    assert seen["evaluated"] == config.out  # the CLI evaluates after training
    assert config.out.startswith("runs/mmvae-polymnist-mini-")
    out = capsys.readouterr().out
    assert f"run folder: {config.out}" in out and "1.500" in out
    assert "12 epochs, batch 64, lr 0.001, latent 20, beta 1, nets mlp" in out


@pytest.mark.parametrize(
    "error, code",
    [
        (CheckpointError("checkpoint x is corrupt"), 2),
        (ValueError("bad value"), 2),
        (FileNotFoundError("no such folder"), 2),
        (TrainingError("loss became nan at epoch 2, step 3"), 1),
    ],
)
def test_user_errors_print_a_message_not_a_traceback(error, code, monkeypatch, capsys):
    def failing_train(config, progress=True, **kwargs):
        raise error

    monkeypatch.setattr(train_module, "train", failing_train)
    monkeypatch.setattr(cli, "_model_names", lambda: ("mmvae",))
    monkeypatch.setattr(cli, "_dataset_names", lambda: ("polymnist-mini",))
    assert cli.main(["train", "--out", "unused"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: {error}"
    assert "Traceback" not in err


def test_bugs_are_not_swallowed(monkeypatch):
    def buggy_train(config, progress=True, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(train_module, "train", buggy_train)
    monkeypatch.setattr(cli, "_model_names", lambda: ("mmvae",))
    monkeypatch.setattr(cli, "_dataset_names", lambda: ("polymnist-mini",))
    with pytest.raises(KeyError):
        cli.main(["train", "--out", "unused"])


@needs_zoo
@needs_data
def test_corrupt_checkpoint_on_resume_exits_2(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    argv = ["train", "--out", str(tmp_path), "--resume", "--no-evaluate", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "corrupt or truncated" in err


@needs_zoo
@needs_data
def test_missing_data_root_exits_2(tmp_path, capsys):
    argv = ["train", "--dataset", "polymnist", "--data-root", str(tmp_path / "nowhere"),
            "--out", str(tmp_path / "run"), "--no-evaluate", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@needs_zoo
@needs_data
def test_train_end_to_end(tmp_path, monkeypatch, capsys):
    def small(root, split):
        dataset = registry.load_dataset("polymnist-mini", root, split)
        return dataset.subset(torch.arange(48))

    monkeypatch.setattr(registry, "_REGISTERED", {})
    registry.register_dataset("mini48", small)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "mini48", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu",
            "--out", str(run), "--no-evaluate", "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "mmvae" and summary["epochs"] == 2
    assert np.isfinite(summary["final_loss"]) and summary["parameters"] > 0
    # the default MLPs: no convolution to lay out, decoders stacked on the CPU
    assert summary["memory_format"] == {"encoder": "contiguous", "decoder": "contiguous"}
    assert summary["decoder_batching"] == ["stacked"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "checkpoint.pt").is_file()
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and "train loss / point" in out
    # --no-progress drops the bars, not the line printed after each epoch
    assert "epoch 1/2  train" in out and "epoch 2/2  train" in out

    # Resume for a third epoch, this time with the evaluation (classifiers cached in tmp_path).
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(tmp_path / "cache"))
    argv[argv.index("2")] = "3"
    argv.remove("--no-evaluate")
    assert cli.main(argv + ["--resume"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and 0.0 <= summary["conditional_coherence"] <= 1.0
    assert set(summary["coherence_matrix"]) == {"m0", "m1", "m2", "m3", "m4"}
    assert (run / "cross_generation.png").stat().st_size > 0
    assert summary["num_classes"] == 10  # the digits: chance coherence is 0.1
    out = capsys.readouterr().out
    assert re.search(r"coherence \(1 -> rest\)\s+\d\.\d{3} \(chance 0\.100\)", out), out


# ---------------------------------------------------------------------------- make-polymnist


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_mnist(folder, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for images, labels in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                           ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        _write_idx(folder / f"{images}.gz", rng.integers(0, 256, (size, 28, 28)))
        _write_idx(folder / f"{labels}.gz", np.arange(size) % 10)


def _has_make_polymnist() -> bool:
    try:
        from pyro_mmvae.data import make_polymnist  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_make_polymnist(), reason="pyro_mmvae.data.make_polymnist missing")
def test_make_polymnist_with_procedural_backgrounds(tmp_path, capsys):
    _fake_mnist(tmp_path / "mnist")
    out = tmp_path / "out"
    argv = ["make-polymnist", "--mnist-root", str(tmp_path / "mnist"), "--backgrounds",
            "procedural", "--modalities", "2", "--seed", "3", "--out", str(out), "--limit", "5"]
    assert cli.main(argv) == 0
    for split in ("train", "test"):
        for m in ("m0", "m1"):
            assert len(list((out / "PolyMNIST" / split / m).glob("*.png"))) == 5
    assert "PolyMNIST written to" in capsys.readouterr().out
    assert cli.main(argv) == 2  # refuses to overwrite without --overwrite
    assert "error:" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0


@pytest.mark.skipif(not _has_make_polymnist(), reason="pyro_mmvae.data.make_polymnist missing")
def test_make_polymnist_missing_mnist_exits_2(tmp_path, capsys):
    argv = ["make-polymnist", "--mnist-root", str(tmp_path / "none"), "--backgrounds",
            "procedural", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("text, expected", [("hidden=400,400", (400, 400)),
                                            ("hidden=[64, 32]", (64, 32)),
                                            ("hidden=128", (128,))])
def test_set_hidden_accepts_lists_and_comma_form(text, expected):
    from pyro_mmvae.cli import parse_setting
    from pyro_mmvae.settings import check_value

    key, value = parse_setting(text)
    assert check_value(key, value) == expected


@pytest.mark.parametrize("text", ["hidden=400,,400", "hidden=0,4", "hidden=a,b"])
def test_set_hidden_rejects_bad_comma_forms(text):
    from pyro_mmvae.cli import parse_setting
    from pyro_mmvae.settings import check_value

    with pytest.raises(ValueError, match="hidden"):
        check_value(*parse_setting(text))
