"""One resolved run specification (issue 26, item 3): flags, preset, ``--set``, dataset and
model defaults and the checkpoint resolve once into a :class:`~pyro_mmvae.run_config.RunSpec`,
validated completely before any folder is created; ``summary.json`` records it in full and
``--resume`` compares it (stages included)."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pytest
import torch

from pyro_mmvae import cli, run_config
from pyro_mmvae import train as train_module
from pyro_mmvae.checkpoint import load_checkpoint
from pyro_mmvae.run_config import RunSpec, TrainConfig, resolve_run
from pyro_mmvae.runs import RunFolder
from pyro_mmvae.settings import GROUP_OF

torch.set_num_threads(1)

TINY = ["--epochs", "1", "--set", "hidden=[16]", "--no-evaluate", "--no-progress",
        "--device", "cpu", "--precision", "32"]


@pytest.fixture
def small_mini(monkeypatch):
    """polymnist-mini cut to 64 training / 32 test tuples (fast CLI runs)."""
    from pyro_mmvae.data import registry

    real = registry.polymnist_mini

    def small(split="train", *args, **kwargs):
        dataset = real(split, *args, **kwargs)
        return dataset.subset(torch.arange(64 if split == "train" else 32))

    monkeypatch.setattr(registry, "polymnist_mini", small)


@pytest.fixture(scope="module")
def mini():
    from pyro_mmvae.data import polymnist_mini

    return (polymnist_mini("train").subset(torch.arange(64)),
            polymnist_mini("test").subset(torch.arange(32)))


def _cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines, err
    assert "Traceback" not in err
    return lines[-1]


def _strict(text: str):
    """``json.loads`` that refuses NaN and Infinity (what strict parsers do)."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- early errors


def test_negative_seed_names_the_option_and_leaves_no_run_folder(tmp_path, capsys, small_mini):
    run = tmp_path / "run"
    code, err = _cli(["train", "--seed=-1", "--out", str(run), *TINY], capsys)
    assert code == 2
    assert "--seed" in _error_line(err) and "-1" in _error_line(err)
    assert not run.exists()
    with pytest.raises(ValueError, match="seed"):  # the library refuses it as early
        train_module.train(TrainConfig(seed=-1, device="cpu", out=str(run)), progress=False)
    assert not run.exists()


@pytest.mark.parametrize("argv, named", [
    (["--batch-size", "16", "--set", "batch_size=7"], "batch_size"),
    (["--set", "epochs=3"], "epochs"),  # TINY has --epochs 1
    (["--beta", "2", "--set", "beta=3"], "beta"),
    (["--set", "latent_dim=4", "--set", "latent_dim=5"], "latent_dim"),  # argparse kept 5
])
def test_a_flag_and_set_that_disagree_are_refused(tmp_path, capsys, small_mini, argv, named):
    run = tmp_path / "run"
    code, err = _cli(["train", "--out", str(run), *TINY, *argv], capsys)
    assert code == 2
    line = _error_line(err)
    assert named in line and "given twice" in line
    assert not run.exists()


@pytest.mark.parametrize("argv, named", [
    (["--num-particles", "1e9"], "num_particles"),
    (["--num-particles", "1000000000"], "num_particles"),
    (["--set", "latent_dim=1e9"], "latent_dim"),
    (["--set", "hidden=[100000000000]"], "hidden"),
    (["--set", "hidden=[1e11]"], "hidden"),
])
def test_sizes_beyond_memory_are_refused_before_allocation(tmp_path, capsys, small_mini,
                                                           argv, named):
    run = tmp_path / "run"
    tiny = TINY if "hidden" not in named else [a for a in TINY if a not in ("--set",
                                                                          "hidden=[16]")]
    code, err = _cli(["train", "--out", str(run), *tiny, *argv], capsys)
    assert code == 2
    line = _error_line(err)
    assert named in line and "memory" in line
    assert len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_the_full_polymnist_presets_still_fit(mini, monkeypatch):
    """The memory bound refuses what clearly cannot fit, not the papers' ResNet recipes (on
    a 16 GB machine, whatever this one has)."""
    monkeypatch.setattr(run_config, "memory_limit", lambda device: 16 * 2**30)
    for model, preset in [("mopoe", "mopoe_polymnist"), ("jmvae", "jmvae_polymnist"),
                          ("mmvae_plus", "mmvae_plus_polymnist")]:
        spec = resolve_run(TrainConfig(model=model, preset=preset, dataset="mini",
                                       precision="32", out="unused"),
                           datasets=mini, device="cpu")
        assert spec.settings["nets"] == "resnet" and spec.epochs >= 250


def test_no_trace_shape_table_after_an_error(monkeypatch, capsys):
    """Pyro appends a right-justified shape table to errors raised inside a traced model;
    the CLI prints the message alone, on one line."""
    def model():
        pyro.sample("a_rather_long_site_name", pyro.distributions.Normal(0.0, 1.0))
        raise ValueError("decoder output has the wrong shape")

    def failing_train(config, progress=True, **kwargs):
        pyro.poutine.trace(model).get_trace()

    with pytest.raises(ValueError, match="Trace Shapes:") as raised:  # what Pyro raises
        failing_train(None)
    assert "\n   " in str(raised.value)  # the table is right-justified: indented title
    monkeypatch.setattr(train_module, "train", failing_train)
    monkeypatch.setattr(cli, "_model_names", lambda: ("mmvae",))
    monkeypatch.setattr(cli, "_dataset_names", lambda: ("polymnist-mini",))
    assert cli.main(["train", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: decoder output has the wrong shape"]


# --------------------------------------------------------------------------- summary and resume


def test_summary_holds_the_whole_resolved_spec_as_strict_json(tmp_path, capsys, small_mini):
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *TINY, "--set", "epochs=1", "--set", "beta=0.5"]
    assert cli.main(argv) == 0  # a flag and --set that agree are accepted
    summary = _strict((run / "summary.json").read_text())
    spec = summary["spec"]
    assert spec["precision"] == "32" and spec["epochs"] == 1 and spec["seed"] == 0
    assert spec["model"] == "mmvae" and spec["dataset"] == "polymnist-mini"
    assert set(spec["settings"]) == set(GROUP_OF)  # every setting, not only the overrides
    assert spec["settings"]["beta"] == 0.5 and spec["settings"]["hidden"] == [16]
    assert spec["settings"]["latent_dim"] == 20 and spec["settings"]["epochs"] == 1
    assert spec["batch_size"] == spec["settings"]["batch_size"] == 64  # the dataset default
    assert (spec["num_particles"], spec["estimator"]) == (1, "elbo")
    assert load_checkpoint(run / "checkpoint.pt")["hyper"] == spec
    # non-finite figures added later (a coherence that cannot be measured) stay strict JSON
    RunFolder(run).write_summary({**summary, "conditional_coherence": float("nan")})
    assert _strict((run / "summary.json").read_text())["conditional_coherence"] is None


def test_the_spec_resolved_on_resume_is_the_original_one(tmp_path, mini):
    config = TrainConfig(model="mmvae", dataset="mini", device="cpu", out=str(tmp_path),
                         epochs=1, batch_size=32, precision="32", lr_schedule="cosine",
                         settings={"hidden": (16,), "latent_dim": 4})
    original = resolve_run(config, datasets=mini)
    assert isinstance(original, RunSpec) and not tmp_path.joinpath("checkpoint.pt").exists()
    summary = train_module.train(config, progress=False, datasets=mini)
    resumed = resolve_run(TrainConfig(model="mmvae", dataset="mini", device="cpu",
                                      out=str(tmp_path), resume=True),
                          load_checkpoint(tmp_path / "checkpoint.pt"), datasets=mini)
    assert resumed == original
    assert resumed.to_json() == summary["spec"] == original.to_json()


def test_resume_with_another_stage_schedule_is_refused(tmp_path, capsys, small_mini):
    run = str(tmp_path / "run")
    first = ["train", "--out", run, *TINY, "--stage", "1:mods.*.decoder"]
    assert cli.main(first) == 0
    again = [*first, "--resume"]
    again[again.index("--epochs") + 1] = "2"
    before = load_checkpoint(Path(run, "checkpoint.pt"))["hyper"]["stages"]
    changed = [*again]
    changed[changed.index("1:mods.*.decoder")] = "1:mods.*.encoder"
    code, err = _cli(changed, capsys)
    assert code == 2
    line = _error_line(err)
    assert "stages" in line and "--out" in line
    assert len(Path(run, "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained
    assert load_checkpoint(Path(run, "checkpoint.pt"))["hyper"]["stages"] == before
    assert cli.main(again) == 0  # the same schedule resumes
    assert load_checkpoint(Path(run, "checkpoint.pt"))["hyper"]["stages"] == before


def test_deterministic_flag_turns_on_deterministic_kernels_and_is_recorded(
        small_mini, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train_module, "enable_deterministic", lambda: calls.append(True))
    out = tmp_path / "det"
    code, err = _cli(["train", "--model", "mmvae", *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    assert calls == []
    assert json.loads((out / "summary.json").read_text())["spec"]["deterministic"] is False
    out = tmp_path / "det2"
    code, err = _cli(["train", "--model", "mmvae", *TINY, "--deterministic", "--out", str(out)],
                     capsys)
    assert code == 0, err
    assert calls == [True]
    assert json.loads((out / "summary.json").read_text())["spec"]["deterministic"] is True


def test_enable_deterministic_sets_torch_flags(monkeypatch):
    from pyro_mmvae.engine import enable_deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        enable_deterministic()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def test_the_run_folder_is_announced_only_once_the_run_is_checked(small_mini, tmp_path, capsys):
    out = tmp_path / "huge"
    code = cli.main(["train", "--model", "mmvae", *TINY, "--set", "latent_dim=1000000000",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "latent_dim" in captured.err
    assert "run folder:" not in captured.out and not out.exists()
    out = tmp_path / "fine"
    assert cli.main(["train", "--model", "mmvae", *TINY, "--out", str(out)]) == 0
    assert f"run folder: {out} (mmvae, precision 32, device cpu)" in capsys.readouterr().out
