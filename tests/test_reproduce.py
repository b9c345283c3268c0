"""benchmarks/reproduce.py: the protocol's rows, its errors, and a tiny run that resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _scripts import load_script

from pyro_mmvae.data import make_polymnist
from pyro_mmvae.presets import PRESETS, preset_settings
from pyro_mmvae.zoo import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("PYRO_MMVAE_DATA_ROOT", ROOT.parent / "shared" / "data")) / "mnist"


reproduce = load_script("reproduce")


@pytest.mark.parametrize("row", reproduce.ROWS, ids=lambda r: r.key)
def test_every_row_has_a_cpu_and_a_full_recipe_for_its_model(row):
    assert preset_settings(row.cpu_preset, row.model)["nets"] == "mlp"
    assert preset_settings(row.full_preset, row.model)["nets"] == "resnet"
    cpu = resolve_settings(row.model, row.cpu_preset, "polymnist")
    full = resolve_settings(row.model, row.full_preset, "polymnist")
    # same objective settings as the paper's recipe; only networks, batch and epochs differ
    differ = {k for k in cpu if cpu[k] != full[k]}
    assert differ <= {"nets", "batch_size", "epochs", "kl_warmup_epochs"}, differ


def test_one_budget_for_every_cpu_row():
    assert len({PRESETS[r.cpu_preset]["epochs"] for r in reproduce.ROWS}) == 1
    assert len({PRESETS[r.cpu_preset]["batch_size"] for r in reproduce.ROWS}) == 1


def test_bad_rows_and_missing_data_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--rows", "mmvae,nope"])
    assert "unknown row(s) ['nope']" in capsys.readouterr().err
    args = reproduce.parse_args(["--rows", "crmvae/translated", "--translated", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="make-polymnist .* --translated"):
        reproduce.data_root(args, reproduce.row_of("crmvae/translated"))


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files of ../shared/data")
def test_tiny_run_writes_the_table_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(tmp_path / "cache"))
    make_polymnist(MNIST, "procedural", out=tmp_path / "data", limit=150, workers=1)
    out = tmp_path / "results" / "reproduction.json"
    argv = ["--rows", "mopoe", "--polymnist", str(tmp_path / "data"), "--runs",
            str(tmp_path / "runs"), "--curve-points", "40", "--eval-points", "50",
            "--out", str(out)]
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- reproduction-table-start -->\nold\n"
                      "<!-- reproduction-table-end -->\noutro\n")
    assert reproduce.main([*argv, "--epochs", "1", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| mopoe | 1 |" in text and "# PolyMNIST reproduction" not in text
    first = json.loads(out.read_text())["mopoe"]
    assert len(first["conditional_coherence"]) == 4
    assert all(0 <= c <= 1 for c in first["conditional_coherence"])
    assert first["frechet_prior"] > 0 and first["epochs"] == 1
    assert "--rows mopoe" in first["command"] and "mopoe" in out.with_suffix(".md").read_text()
    # a second call with more epochs continues the run: epoch 1 of the curve is kept
    assert reproduce.main([*argv, "--epochs", "2"]) == 0
    second = json.loads(out.read_text())["mopoe"]
    assert [r["epoch"] for r in second["learning_curve"]] == [1, 2]
    assert second["learning_curve"][0] == first["learning_curve"][0]
    # a finished, evaluated row is not evaluated again unless --reevaluate asks
    calls = []
    real_evaluate = reproduce.evaluate_row
    monkeypatch.setattr(reproduce, "evaluate_row",
                        lambda *a: calls.append(a) or real_evaluate(*a))
    assert reproduce.main([*argv, "--epochs", "2"]) == 0
    assert calls == [] and json.loads(out.read_text())["mopoe"] == second
    assert reproduce.main([*argv, "--epochs", "2", "--reevaluate"]) == 0
    assert len(calls) == 1 and json.loads(out.read_text())["mopoe"]["learning_curve"] == \
        second["learning_curve"]
    # --progress prints the curve recorded so far, one table row per epoch
    capsys.readouterr()
    assert reproduce.main(["--progress", "--rows", "mopoe,mmvae", "--runs",
                           str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "### mopoe (preset `mopoe_polymnist_cpu`, 2 of 20 epochs)" in printed
    coherence = second["learning_curve"][1]["coherence_single_source"]
    assert "| 2 | " in printed and f"{coherence:.3f}" in printed
    assert "### mmvae" not in printed  # no curve recorded for it
    # coherence is also evaluated with z ~ q(z|X_S) (RUN/eval-sample); a finished entry
    # without that figure gets it added, reusing an evaluation of the final epoch
    sampled = second["conditional_coherence_sampled"]
    assert len(sampled) == 4 and all(0 <= c <= 1 for c in sampled) and sampled != \
        second["conditional_coherence"]
    saved = json.loads((tmp_path / "runs" / "mopoe" / "eval-sample" / "eval.json").read_text())
    assert saved["settings"]["posterior"] == "sample" and saved["epoch"] == 2
    table = json.loads(out.read_text())
    del table["mopoe"]["conditional_coherence_sampled"]
    out.write_text(json.dumps(table))
    monkeypatch.setattr(reproduce, "evaluate_run", lambda *a, **k: pytest.fail("re-evaluated"))
    assert reproduce.main([*argv, "--epochs", "2"]) == 0
    assert json.loads(out.read_text())["mopoe"]["conditional_coherence_sampled"] == sampled
    assert "sampled z" in out.with_suffix(".md").read_text()


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files of ../shared/data")
def test_estimate_prints_each_rows_time_from_measured_steps(tmp_path, capsys):
    make_polymnist(MNIST, "procedural", out=tmp_path / "data", limit=150, workers=1,
                   splits=("test",))
    assert reproduce.main(["--estimate", "--rows", "mopoe,crmvae", "--polymnist",
                           str(tmp_path / "data")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["mopoe", "crmvae"]
    epochs = PRESETS["mopoe_polymnist_cpu"]["epochs"]
    for line in lines:  # "<row>: <preset>, 20 epochs x 469 steps x 0.123 s = 0.2 h (...)"
        assert f"{epochs} epochs x 469 steps x" in line
        assert float(line.split(" = ")[1].split(" h")[0]) > 0


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files of ../shared/data")
def test_pilot_and_digit_probe_report_per_epoch_and_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(tmp_path / "cache"))
    make_polymnist(MNIST, "procedural", out=tmp_path / "data", limit=150, workers=1)
    pilot = load_script("reproduce_pilot")
    records = pilot.main(["--model", "mmvae", "--preset", "mmvae_polymnist_cpu", "--polymnist",
                          str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                          "--train-tuples", "64", "--epochs", "2", "--points", "40",
                          "--set", "latent_dim=4", "--set", 'hidden=[16]'])
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["coherence_single_source"] <= 1 for r in records)
    assert records[1]["loss"] < records[0]["loss"] * 1.5  # a finite, logged training loss
    probe = load_script("digit_probe")
    steps = probe.main(["--data-root", str(tmp_path / "data"), "--nets", "mlp", "--steps", "4",
                        "--every", "2", "--batch-size", "16", "--train-images", "100"])
    assert [r["step"] for r in steps] == [2, 4]
    assert all(0 <= r["probe"] <= 1 and r["kl"] == r["kl"] for r in steps)


def _write_one(out: str, key: str) -> None:
    entry = {"conditional_coherence": [0.1] * 4, "epochs": 1, "seconds": 1.0,
             "unconditional_coherence": 0.1, "class_entropy_normalised": 1.0,
             "frechet_prior": 1.0, "frechet_conditional": 1.0, "command": key,
             "machine": "m", "torch": "t", "date": "d"}
    for j in range(10):
        reproduce.write_results(Path(out), f"{key}-{j}", entry)


def test_a_readme_without_the_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="reproduction-table-start"):
        reproduce.update_readme(readme, {})
    assert readme.read_text() == "no markers\n"


def test_queues_writing_one_table_side_by_side_lose_no_row(tmp_path):
    import multiprocessing

    out = tmp_path / "reproduction.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_one, args=(str(out), f"row{i}"))
               for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert all(worker.exitcode == 0 for worker in workers)
    table = json.loads(out.read_text())
    keys = sorted(f"row{i}-{j}" for i in range(8) for j in range(10))
    assert sorted(table) == keys  # without the lock, read-modify-write races drop rows
    assert all(f"- {key}:" in out.with_suffix(".md").read_text() for key in keys)


def _row(cond: float, prior: float, conditional: float) -> dict:
    return {"conditional_coherence": [cond] * 4, "frechet_prior": prior,
            "frechet_conditional": conditional}


def test_orderings_check_the_seeds_claims_on_the_rows_present():
    table = {"mmvae_plus": _row(0.7, 5.0, 9.0), "mmvae": _row(0.8, 6.0, 8.0),
             "crmvae/translated": _row(0.2, 1.0, 1.0)}
    lines = "\n".join(reproduce.orderings(table))
    assert "| MMVAE+ at least as coherent as MMVAE (seed 001) | mmvae_plus 70.0 % vs mmvae " \
           "80.0 % | **no** |" in lines
    assert "(prior samples) than MMVAE (seed 001) | mmvae_plus 5.00 vs mmvae 6.00 | yes |" \
        in lines
    assert "(conditional) than MMVAE (seed 001) | mmvae_plus 9.00 vs mmvae 8.00 | **no** |" \
        in lines
    assert "private" not in lines and "JMVAE" not in lines  # rows not in the table
    assert reproduce.orderings({"mmvae": _row(0.8, 6.0, 8.0)}) == []
    # with the sampled-z figures of both rows, the coherence claims are checked on them too
    table["mmvae_plus"]["conditional_coherence_sampled"] = [0.6] * 4
    table["mmvae"]["conditional_coherence_sampled"] = [0.5] * 4
    assert "| mmvae_plus 70.0 % vs mmvae 80.0 % (sampled z: 60.0 % vs 50.0 %) | **no** (yes) |" \
        in "\n".join(reproduce.orderings(table))


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files of ../shared/data")
def test_private_latent_diagnosis_separates_what_the_decoder_reads_from_w(tmp_path, monkeypatch):
    import torch

    from pyro_mmvae.runs import load_datasets, load_run

    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(tmp_path / "cache"))
    make_polymnist(MNIST, "procedural", out=tmp_path / "data", limit=150, workers=1)
    pilot = load_script("reproduce_pilot")
    for model in ("mmvae", "mmvae_plus"):
        pilot.main(["--model", model, "--preset", f"{model}_polymnist_cpu", "--polymnist",
                    str(tmp_path / "data"), "--out", str(tmp_path / model), "--train-tuples",
                    "64", "--epochs", "1", "--points", "40", "--set", "latent_dim=4",
                    "--set", "hidden=[16]"])
    diagnosis = load_script("private_latent_diagnosis")
    out = tmp_path / "diagnosis.json"
    runs = f"{tmp_path / 'mmvae'},{tmp_path / 'mmvae_plus'}"
    assert diagnosis.main(["--runs", runs, "--data-root", str(tmp_path / "data"), "--points",
                           "60", "--probe-train", "80", "--out", str(out)]) == 0
    mmvae, plus = json.loads(out.read_text())["runs"]
    assert set(mmvae["coherence"]) == {"prior"} and "probe_w" not in mmvae
    assert set(plus["coherence"]) == set(diagnosis.VARIANTS) and 0 <= plus["probe_w"] <= 1
    assert all(0 <= v <= 1 for r in (mmvae, plus) for v in r["coherence"].values())
    # a decoder blind to w (its first layer's w columns zeroed) gives one coherence whatever
    # w is; the trained one reads w, so the variants differ. The "classifier" hashes the
    # image, so any change of the generated images changes its predictions.

    class ImageHash:
        def predict(self, name, images):
            return (images.flatten(1).sum(1) * 1e4).long() % 10

    datasets = load_datasets("polymnist", str(tmp_path / "data"))
    classifiers = ImageHash()
    vae = load_run(tmp_path / "mmvae_plus", datasets=datasets).vae
    read = diagnosis.diagnose_model(vae, datasets, classifiers, 60, 80, seed=0)["coherence"]
    with torch.no_grad():
        for mod in vae.mods.values():
            first = next(m for m in mod.decoder.modules() if isinstance(m, torch.nn.Linear))
            first.weight[:, vae.latent_dim:] = 0.0
    blind = diagnosis.diagnose_model(vae, datasets, classifiers, 60, 80, seed=0)["coherence"]
    assert len(set(blind.values())) == 1
    assert len(set(read.values())) > 1
