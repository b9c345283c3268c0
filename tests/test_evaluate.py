"""`pyro-mmvae evaluate` on a briefly trained run of every model of the zoo, and the Python API.

Runs use three modalities of polymnist-mini (300 training / 80 test tuples) and small MLPs,
trained for one epoch through the real trainer; the evaluation then rebuilds the model from
the checkpoint exactly as the trainer built it (same monkeypatched builder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.data import MultimodalTensorDataset, load_dataset, registry
from pyro_mmvae.metrics import EvalSettings, evaluate_model
from pyro_mmvae.metrics.evaluate import FIGURES, parse_metrics
from pyro_mmvae.metrics.frechet import have_pytorch_fid
from pyro_mmvae.train import TrainConfig, train
from pyro_mmvae.zoo import MODELS, build_model

torch.set_num_threads(1)

NAMES = ("m0", "m1", "m2")
SIZES = {"train": 300, "test": 80}


def tiny_mini(split: str) -> MultimodalTensorDataset:
    full = load_dataset("polymnist-mini", split=split)
    n = SIZES[split]
    return MultimodalTensorDataset({k: full.data[k][:n] for k in NAMES}, full.labels[:n],
                                   name="polymnist-mini-tiny")


def tiny_model(name, dataset, preset, **overrides):
    return build_model(name, dataset, preset, hidden=(64,), latent_dim=6, **overrides)


TINY_SETTINGS = {"hidden": (64,), "latent_dim": 6}


@pytest.fixture
def patched(monkeypatch):
    """``polymnist-mini-tiny`` as a registered dataset (runs restore it by name)."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.register_dataset("polymnist-mini-tiny", lambda _root, split: tiny_mini(split))


def trained_run(model: str, folder: Path) -> Path:
    out = folder / f"run-{model}"
    train(TrainConfig(model=model, dataset="polymnist-mini-tiny", epochs=1, batch_size=64,
                      out=str(out), device="cpu", settings=dict(TINY_SETTINGS)),
          progress=False)
    return out


def in_unit_interval(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def keys_everywhere(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_everywhere(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_everywhere(v)}
    return set()


@pytest.mark.parametrize("model", MODELS)
def test_evaluate_command_on_a_trained_run(model, patched, tmp_path, capsys):
    run = trained_run(model, tmp_path)
    argv = ["evaluate", str(run), "--num-samples", "30", "--max-points", "16",
            "--quality-points", "60", "--likelihood-subsets", "1", "--device", "cpu"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "eval.json" in out and "coherence by |S|" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["model"] == model and result["epoch"] == 1
    if model == "cvae":  # one pair s -> t, no prior over all modalities, no p(X)
        assert in_unit_interval(result["coherence"]["by_subset_size"]["1"])
        assert result["coherence"]["unconditional_coherence"] is None
        assert "not applicable" in result["coherence"]["unconditional"]["note"]
        for name in ("quality", "likelihood", "probe"):
            assert "not applicable to CVAE" in result[name]["skipped"]
        return
    assert result["settings"]["num_samples"] == 30 and result["settings"]["max_points"] == 16

    coherence = result["coherence"]
    assert set(coherence["by_subset_size"]) == {"1", "2"}
    assert all(in_unit_interval(v) for v in coherence["by_subset_size"].values())
    assert in_unit_interval(coherence["unconditional_coherence"])
    assert set(coherence["conditional"]["single_source_matrix"]) == set(NAMES)
    for figure in (coherence, coherence["conditional"], coherence["unconditional"]):
        assert set(figure["classifier_accuracy"]) == set(NAMES)
        assert all(in_unit_interval(a) for a in figure["classifier_accuracy"].values())

    quality = result["quality"]["classifier_frechet_distance"]
    for kind in ("unconditional", "conditional_leave_one_out", "train_vs_test"):
        assert set(quality[kind]) == set(NAMES)
        assert all(math.isfinite(d) and d >= 0 for d in quality[kind].values())
    assert quality["num_points"] == 60
    assert quality["mean_train_vs_test"] < quality["mean_unconditional"]  # 1 epoch: far off
    assert "skipped" in result["quality"]["inception_fid"]
    assert not [k for k in keys_everywhere(result) if "fid" in k.lower() and k != "fid_weights"
                and k != "inception_fid"], "the classifier distance must never be called FID"

    likelihood = result["likelihood"]
    if "skipped" in likelihood:  # a guide without stratify=False: reported, not crashed
        assert isinstance(likelihood["skipped"], str) and likelihood["skipped"]
    else:
        joint = likelihood["joint"]
        assert joint["num_datapoints"] == 16 and joint["num_samples"] == 30
        assert math.isfinite(joint["mean"]) and joint["std_error"] > 0
        assert joint["pareto_k"]["median"] is not None
        assert 0 <= joint["pareto_k"]["fraction_above_0.7"] <= 1
        assert 1.0 <= joint["ess"]["mean"] <= 30.0
        assert set(likelihood["subsets"]) and set(likelihood["conditional"])
        skipped = likelihood.get("skipped_proposals", {})  # models with several latent levels
        assert set(likelihood["proposals"]) | set(skipped) == {"model", "mixture", "refined"}
        assert "model" in likelihood["proposals"]  # default: all that apply
        assert all("not applicable" in reason for reason in skipped.values())
        best = likelihood["proposals"][likelihood["best_proposal"]]["joint"]
        assert best == joint
        assert all(p["seconds"] > 0 for p in likelihood["proposals"].values())  # timed each
        assert isinstance(likelihood["warnings"], list)
        for key, summary in likelihood["conditional"].items():
            sources = key.split("|")[1]
            expected = joint["mean"] - likelihood["subsets"][sources]["mean"]
            assert summary["mean"] == pytest.approx(expected, rel=1e-9)

    probe = result["probe"]
    assert set(probe["by_subset_size"]) == {"1", "2", "3"}
    assert all(in_unit_interval(v) for v in probe["by_subset_size"].values())

    for key, name in FIGURES.items():
        if key == "pareto_k" and "skipped" in likelihood:
            continue
        path = run / name
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", key
        assert result["figures"][key] == str(path)


def test_evaluate_model_runs_only_the_chosen_metrics(patched):
    train_ds, test_ds = tiny_mini("train"), tiny_mini("test")
    vae = tiny_model("mvae", train_ds, None).vae
    result = evaluate_model(vae, train_ds, test_ds, metrics="likelihood",
                            settings=EvalSettings(num_samples=5, max_points=4,
                                                  likelihood_subsets=0))
    assert result["metrics"] == ["likelihood"]
    assert "coherence" not in result and "classifiers" not in result
    assert result["likelihood"]["joint"]["num_datapoints"] == 4
    assert result["likelihood"]["subsets"] == {} and result["likelihood"]["conditional"] == {}
    assert result["likelihood"]["joint"]["pareto_k"]["median"] is None  # K < 25: no fit


def test_models_without_unstratified_guides_are_skipped_with_a_reason(patched):
    train_ds, test_ds = tiny_mini("train"), tiny_mini("test")
    inner = tiny_model("mmvae", train_ds, None).vae

    class StratifiedOnly:
        """A user's model whose programs take no ``stratify`` argument."""

        names = inner.names

        def model(self, data, mask=None):
            return inner.model(data, mask)

        def guide(self, data, mask=None):
            return inner.guide(data, mask)

    result = evaluate_model(StratifiedOnly(), train_ds, test_ds, metrics=["likelihood"],
                            num_samples=5)
    assert "stratify" in result["likelihood"]["skipped"]


def test_metric_names_are_checked(tmp_path, capsys):
    assert parse_metrics("probe, coherence") == ("probe", "coherence")
    assert parse_metrics(None) == ("coherence", "quality", "likelihood", "probe")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("coherence,fid")
    assert cli.main(["evaluate", str(tmp_path), "--metrics", "coherence,fid"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_evaluating_a_folder_without_a_run_exits_2(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path), "--device", "cpu"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="num_samples"):
        EvalSettings(num_samples=0).check()
    with pytest.raises(ValueError, match="max_points"):
        EvalSettings(max_points=0).check()


@pytest.mark.skipif(not have_pytorch_fid(), reason="pytorch-fid is not installed")
def test_inception_fid_is_reported_beside_the_classifier_distance(patched, tmp_path):
    from test_frechet import random_fid_inception_state

    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state(), weights)
    train_ds, test_ds = tiny_mini("train"), tiny_mini("test")
    vae = tiny_model("mvae", train_ds, None).vae
    result = evaluate_model(vae, train_ds, test_ds, metrics="quality", quality_points=2,
                            fid_weights=str(weights))
    fid = result["quality"]["inception_fid"]
    assert set(fid["unconditional"]) == set(NAMES)
    assert set(fid["conditional_leave_one_out"]) == set(NAMES)
    assert fid["num_points"] == 2 and fid["weights"] == str(weights)
    assert all(v >= 0 for v in fid["unconditional"].values())
    assert set(result["quality"]["classifier_frechet_distance"]["train_vs_test"]) == set(NAMES)


def test_metric_and_proposal_names_of_the_cli_match_the_library():
    from pyro_mmvae.metrics import METRICS
    from pyro_mmvae.metrics.likelihood import CHEAP_PROPOSALS, PROPOSALS

    assert cli.METRIC_NAMES == METRICS
    assert cli.PROPOSAL_NAMES == (*PROPOSALS, "all")
    assert cli.ANNEALED_STARTS == CHEAP_PROPOSALS

    from pyro_mmvae.engine import PRECISIONS

    assert cli.PRECISION_NAMES == PRECISIONS

    from pyro_mmvae.models.base import POSTERIOR_POINTS

    assert cli.POSTERIOR_NAMES == POSTERIOR_POINTS


def test_an_unwritable_output_folder_is_refused_before_any_work(patched, tmp_path, capsys,
                                                                monkeypatch):
    import pyro_mmvae.metrics.evaluate as evaluate_module

    run = trained_run("mvae", tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the run was loaded before the output folder was checked")

    monkeypatch.setattr(evaluate_module, "_load_run", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["evaluate", str(run), "--out", str(blocker / "eval"), "--device",
                     "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the evaluation to") and "--out" in err


def test_eval_json_is_written_after_each_metric_and_out_redirects(patched, tmp_path, capsys,
                                                                  monkeypatch):
    import pyro_mmvae.checkpoint as checkpoint_module

    run = trained_run("mvae", tmp_path)
    saved = []
    original = checkpoint_module.save_json

    def recording(path, obj):
        saved.append((Path(path), json.loads(json.dumps(obj))))
        return original(path, obj)

    monkeypatch.setattr(checkpoint_module, "save_json", recording)
    out = tmp_path / "elsewhere"
    argv = ["evaluate", str(run), "--out", str(out), "--metrics", "probe,likelihood",
            "--num-samples", "30", "--max-points", "8", "--proposal", "model",
            "--no-progress", "--device", "cpu"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: no bars, no status lines
    assert f"{out}/eval.json" in captured.out
    # progress goes to eval.partial.json; eval.json is only ever a complete result
    assert [p for p, _ in saved] == [out / "eval.partial.json"] * 3 + [out / "eval.json"]
    assert not (out / "eval.partial.json").exists()  # removed once complete
    partial = [sorted(k for k in ("probe", "likelihood", "figures") if k in obj)
               for _, obj in saved]
    assert partial == [["probe"], ["likelihood", "probe"], ["figures", "likelihood", "probe"],
                       ["figures", "likelihood", "probe"]]
    assert [obj["complete"] for _, obj in saved] == [False, False, False, True]
    final = json.loads((out / "eval.json").read_text())
    assert final["complete"] and set(final["likelihood"]["proposals"]) == {"model"}
    assert (out / FIGURES["conditional_grid"]).is_file()
    assert not (run / "eval.json").exists()


def test_coherence_can_run_the_networks_in_bf16(patched):
    train_ds, test_ds = tiny_mini("train"), tiny_mini("test")
    vae = tiny_model("mmvae", train_ds, None).vae
    dtypes = set()
    hooks = [m.decoder.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
             for m in vae.mods.values()]
    settings = EvalSettings(coherence_points=8, unconditional_samples=8, precision="bf16")
    result = evaluate_model(vae, train_ds, test_ds, metrics="coherence", settings=settings)
    assert dtypes == {torch.bfloat16}  # the decoders ran under autocast
    assert result["settings"]["precision"] == "bf16"
    assert all(0 <= v <= 1 for v in result["coherence"]["by_subset_size"].values())
    dtypes.clear()
    evaluate_model(vae, train_ds, test_ds, metrics="coherence",
                   settings=EvalSettings(coherence_points=8, unconditional_samples=8))
    assert dtypes == {torch.float32}
    for hook in hooks:
        hook.remove()
    with pytest.raises(ValueError, match="precision"):
        EvalSettings(precision="int8").check()


def test_evaluate_with_sampled_posterior_points(patched, tmp_path, capsys):
    """``--posterior sample``: coherence and quality decode z ~ q(z|X_S); recorded in
    eval.json, and the figures differ from the posterior-mean evaluation of the same run."""
    run = trained_run("mvae", tmp_path)
    common = ["--metrics", "coherence,quality", "--quality-points", "60",
              "--coherence-points", "60", "--no-progress", "--device", "cpu"]
    results = {}
    for point in ("mean", "sample"):
        out = tmp_path / point
        assert cli.main(["evaluate", str(run), "--out", str(out), "--posterior", point,
                         *common]) == 0
        results[point] = json.loads((out / "eval.json").read_text())
        printed = "coherence by |S| (sampled z)" if point == "sample" else \
            "coherence by |S| (mean z)"
        assert printed in capsys.readouterr().out
    for point, result in results.items():
        assert result["settings"]["posterior"] == point
        assert result["coherence"]["conditional"]["posterior"] == point
    mean, sampled = (results[p]["quality"]["classifier_frechet_distance"]
                     for p in ("mean", "sample"))
    assert mean["train_vs_test"] == sampled["train_vs_test"]  # no generation involved
    assert mean["conditional_leave_one_out"] != sampled["conditional_leave_one_out"]
    assert cli.main(["evaluate", str(run), "--posterior", "mode"]) == 2
    assert "invalid choice: 'mode'" in capsys.readouterr().err


def test_evaluation_redraws_the_training_grid_instead_of_a_copy():
    from pyro_mmvae.metrics.quick import GRID_NAME
    from pyro_mmvae.metrics.suite import FIGURES

    assert FIGURES["conditional_grid"] == GRID_NAME
    assert len(set(FIGURES.values())) == len(FIGURES)


def test_a_conv_net_run_evaluates_and_its_checkpoint_holds_no_copies(patched, tmp_path,
                                                                       capsys):
    """Channels-last convolution weights (the CPU's and the GPU's layout for conv nets) are
    the module's parameters, not extra ``pyro.param`` sites: before, the checkpoint stored
    Pyro's copies under the training process's model name and ``evaluate`` refused it."""
    from pyro_mmvae.runs import RunFolder, load_run

    out = tmp_path / "conv"
    train(TrainConfig(model="crmvae", dataset="polymnist-mini-tiny", epochs=1, batch_size=64,
                      out=str(out), device="cpu",
                      settings={**TINY_SETTINGS, "nets": "conv"}), progress=False)
    state = RunFolder(out).load_checkpoint()
    assert state["extra_params"] in ({}, None)
    # a checkpoint of the earlier versions (copies under another process's model name)
    state["extra_params"] = {f"crmvae_7$$${k}": v for k, v in state["vae_state"].items()
                             if v.dim() == 4}
    torch.save(state, out / "checkpoint.pt")
    run = load_run(out)
    weights = dict(run.vae.named_parameters())
    for name, value in state["extra_params"].items():
        torch.testing.assert_close(weights[name.split("$$$")[1]].detach(), value)
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--metrics", "coherence", "--coherence-points",
                     "40", "--no-progress"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert in_unit_interval(result["coherence"]["by_subset_size"]["1"])


def test_a_run_loads_with_the_settings_it_trained_with(patched, tmp_path):
    """load_run builds the model from the checkpoint's resolved settings, not from the
    defaults of the library that loads it (a default that changes must not change a run)."""
    from pyro_mmvae.runs import RunFolder, load_run

    out = trained_run("mvae", tmp_path)
    state = RunFolder(out).load_checkpoint()
    assert state["settings"]["latent_dim"] == 6
    state["overrides"] = {}  # as if latent 6 had been the default when it trained
    torch.save(state, out / "checkpoint.pt")
    run = load_run(out)
    assert run.vae.latent_dim == 6
    # a checkpoint of an older version (no resolved settings) still loads by its overrides
    state["settings"], state["overrides"] = None, dict(TINY_SETTINGS)
    torch.save(state, out / "checkpoint.pt")
    assert load_run(out).vae.latent_dim == 6
