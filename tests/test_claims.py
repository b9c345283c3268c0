"""benchmarks/claims.py: the decision rule, the matched rows, the report from finished runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
claims = pytest.importorskip("claims")


# --------------------------------------------------------------------------- decision rule
def test_decide_holds_hand_computed():
    # means 0.82 / 0.71, sds 0.02 / 0.01: SE = sqrt(0.0004/3 + 0.0001/3) = 0.012910
    d = claims.decide([0.80, 0.82, 0.84], [0.70, 0.71, 0.72], "higher")
    assert d["verdict"] == "holds"
    assert d["difference"] == pytest.approx(0.11)
    assert d["se"] == pytest.approx(math.sqrt(0.0005 / 3))
    assert d["better"]["sd"] == pytest.approx(0.02)


def test_decide_fails_when_reversed_beyond_two_se():
    d = claims.decide([0.70, 0.71, 0.72], [0.80, 0.82, 0.84], "higher")
    assert d["verdict"] == "fails"
    assert d["difference"] == pytest.approx(-0.11)


def test_decide_inconclusive_within_two_se():
    # difference 0.01, SE = sqrt(0.01/3 + 0.0004/3) = 0.0589: 0.01 < 2 SE
    d = claims.decide([0.81, 0.91, 0.71], [0.78, 0.80, 0.82], "higher")
    assert d["verdict"] == "inconclusive"
    assert d["se"] == pytest.approx(math.sqrt((0.01 + 0.0004) / 3))


def test_decide_just_past_two_se_and_lower_direction():
    # lower is better: a = 100 +- 1, b = 103 +- 1 (n = 3): diff 3, SE = sqrt(2/3) = 0.816
    d = claims.decide([99.0, 100.0, 101.0], [102.0, 103.0, 104.0], "lower")
    assert d["verdict"] == "holds" and d["difference"] == pytest.approx(3.0)
    # diff 1.5 < 2 SE = 1.633: inconclusive
    d = claims.decide([99.0, 100.0, 101.0], [100.5, 101.5, 102.5], "lower")
    assert d["verdict"] == "inconclusive"
    # the same numbers, higher claimed better: fails
    d = claims.decide([99.0, 100.0, 101.0], [102.0, 103.0, 104.0], "higher")
    assert d["verdict"] == "fails"


def test_decide_unfinished_and_zero_spread():
    assert claims.decide([0.8], [0.7, 0.7], "higher")["verdict"] == "unfinished"
    assert claims.decide([0.8, 0.8], [0.7, 0.7], "higher")["verdict"] == "holds"
    assert claims.decide([0.7, 0.7], [0.7, 0.7], "higher")["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        claims.decide([1.0, 2.0], [1.0, 2.0], "up")


def test_spread_side_uses_seeds_finished_on_every_row():
    results = {"a": {0: {"m": 0.5}, 1: {"m": 0.6}}, "b": {0: {"m": 0.8}, 1: {"m": 0.7}},
               "c": {0: {"m": 0.1}}}
    assert claims.side_values(results, ("a", "b"), "m") == pytest.approx([0.3, 0.1])
    assert claims.side_values(results, ("a", "c"), "m") == pytest.approx([0.4])
    assert claims.side_values(results, ("a",), "m") == [0.5, 0.6]


# --------------------------------------------------------------------------- matching
def test_every_claim_pair_is_matched():
    assert claims.check_matching() == []
    for claim in claims.CLAIMS:
        for a, b in zip(claim.better, claim.worse, strict=True):
            sa, sb = (claims.row_settings(claims.row_of(k)) for k in (a, b))
            for name in ("beta", "nets", "hidden", "latent_budget", "epochs", "batch_size"):
                assert sa[name] == sb[name], (claim.key, a, b, name)
            assert len(claims.row_of(a).seeds) >= 3


def test_matching_reports_an_unmatched_pair(monkeypatch):
    bad = claims.Claim("x", "001", "x", ("mmvae_plus-b2.5",), ("mmvae-b1",), "coherence",
                       "higher")
    problems = claims.check_matching([bad])
    assert len(problems) == 1 and "beta=2.5" in problems[0] and "1.0" in problems[0]


def test_protocol_covers_the_issue():
    keys = set(claims.ROW_KEYS)
    for dw in (4, 16, 32, 64):
        for model in ("mmvae_plus", "mmvae_private"):
            assert f"{model}{claims.DW_SWEEP[dw]}" in keys
            assert claims.row_settings(claims.row_of(f"{model}{claims.DW_SWEEP[dw]}"))[
                "private_dim"] == dw
    betas = {claims.row_settings(claims.row_of(k))["beta"]
             for k in ("mmvae_plus-b2.5", "mmvae-b2.5", "mmvae_plus-b1", "mmvae-b1")}
    assert betas == {2.5, 1.0}
    assert {c.seed_paper for c in claims.CLAIMS} == {"000", "001"}


def test_commands_are_the_users():
    row = claims.row_of("mmvae_plus-b2.5")
    args = claims.train_args(row, 2, Path("R"), "/data", resume=True)
    assert args[:5] == ["train", "--model", "mmvae_plus", "--dataset", "polymnist-mini"]
    assert "--data-root" not in args  # the mini dataset needs none
    text = " ".join(args)
    assert "--seed 2 --out R/mmvae_plus-b2.5-s2" in text
    assert "--set beta=2.5" in text and "--resume --break-lock" in text
    ev = " ".join(claims.evaluate_args(Path("R/x"), "sample", None, "polymnist-mini"))
    assert "--posterior sample" in ev and "--coherence-points all" in ev
    assert "--quality-points all" in ev


# --------------------------------------------------------------------------- report
def _fake_result(row: str, seed: int, coherence: float, frechet: float) -> dict:
    return {"row": row, "seed": seed, "epochs": claims.row_of(row).epochs, "precision": "32",
            "coherence": coherence, "coherence_class": coherence - 0.01,
            "coherence_mean_z": coherence + 0.02, "unconditional_coherence": 0.3,
            "frechet_prior": frechet, "frechet_conditional": frechet + 5,
            "train_seconds": 600.0, "commands": []}


def test_report_from_fake_finished_runs(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    figures = {"mmvae_plus-b2.5": (0.80, 200.0), "mmvae-b2.5": (0.70, 230.0)}
    for row, (coh, fd) in figures.items():
        for seed in (0, 1, 2):
            run_dir = claims.row_of(row).run_dir(runs, seed)
            run_dir.mkdir(parents=True)
            (run_dir / claims.RESULT_NAME).write_text(
                json.dumps(_fake_result(row, seed, coh + 0.01 * seed, fd + seed)))
    # a run of another row with the wrong epoch count is not finished
    stale = claims.row_of("mmvae_private-b2.5").run_dir(runs, 0)
    stale.mkdir(parents=True)
    (stale / claims.RESULT_NAME).write_text(json.dumps(
        {**_fake_result("mmvae_private-b2.5", 0, 0.1, 90.0), "epochs": 1}))

    report = claims.write_report(runs, out, with_plots=True)
    assert report["runs_finished"] == 6
    by_key = {c["key"]: c for c in report["claims"]}
    assert by_key["plus_vs_mmvae_coh_b2.5"]["verdict"] == "holds"
    assert by_key["plus_vs_mmvae_fd_b2.5"]["verdict"] == "holds"
    assert by_key["plus_vs_private_coh"]["verdict"] == "unfinished"
    saved = json.loads((out / "claims.json").read_text())
    assert saved["claims"][0]["by_measure"]["coherence"]["better"]["mean"] == pytest.approx(0.81)
    md = (out / "claims.md").read_text()
    assert "**holds**" in md and "unfinished" in md and "3/3" in md
    assert "pyro-mmvae train --model mmvae_plus" in md
    # the cost of the protocol: 6 finished runs of 600 s training each = 1.0 h
    assert saved["cost"] == {"train_hours": pytest.approx(1.0), "eval_hours": 0.0, "runs": 6}
    assert "Cost: 1.0 h of training" in md and "6 finished runs" in md
    assert "flags: " in md
    assert (out / "claims-coherence-quality.png").is_file()
    assert (out / "claims-dw.png").is_file()  # mmvae_plus-b2.5 is D_w = 32 of the sweep


# --------------------------------------------------------------------------- runner
def test_runner_skips_finished_runs_and_survives_a_failed_one(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "results"
    row = claims.row_of("mvtcae-l20")
    done = row.run_dir(runs, 0)
    done.mkdir(parents=True)
    (done / claims.RESULT_NAME).write_text(json.dumps(_fake_result(row.key, 0, 0.6, 150.0)))
    calls = []

    def fake_run_one(r, seed, runs_root, data_root):
        calls.append((r.key, seed))
        if seed == 1:
            raise RuntimeError("exit 1: pyro-mmvae train ...")
        result = _fake_result(r.key, seed, 0.6, 150.0)
        (r.run_dir(runs_root, seed)).mkdir(parents=True, exist_ok=True)
        (r.run_dir(runs_root, seed) / claims.RESULT_NAME).write_text(json.dumps(result))
        return result

    monkeypatch.setattr(claims, "run_one", fake_run_one)
    code = claims.main(["run", "--runs", str(runs), "--rows", row.key, "--results", str(out)])
    assert code == 1  # one run failed
    assert calls == [(row.key, 1), (row.key, 2)]  # seed 0 was finished: skipped
    report = json.loads((out / "claims.json").read_text())
    assert report["runs_finished"] == 2


def test_translated_rows_are_the_measured_reason_not_a_claim(tmp_path):
    rows = [claims.row_of(k) for k in claims.TRANSLATED_ROWS]
    assert {r.model for r in rows} == {"crmvae", "mvtcae", "jmvae"}
    assert {claims.row_settings(r)["beta"] for r in rows} == {1.0, 0.1}
    for row in rows:
        s = claims.row_settings(row)
        assert s["nets"] == "conv" and s["dataset"] == "polymnist:translated"
        args = claims.train_args(row, 0, Path("R"), claims.data_root_of(row, "/d", "/t"))
        assert args[args.index("--data-root") + 1] == "/t"
    mini = claims.row_of("crmvae-l20")
    assert claims.data_root_of(mini, "/d", "/t") is None
    # no claim reads them: their verdicts would compare generators collapsed onto one digit
    read = {k for c in claims.CLAIMS for k in (*c.better, *c.worse)}
    assert not read & set(claims.TRANSLATED_ROWS)
    # ... and a translated row never matches a mini row (different datasets)
    bad = claims.Claim("x", "000", "x", ("crmvae-translated",), ("mvtcae-l20",),
                       "coherence", "higher")
    assert any("dataset" in p for p in claims.check_matching([bad]))
    # the report shows where a collapsed generator's figures come from
    runs = tmp_path / "runs"
    run_dir = claims.row_of("crmvae-translated").run_dir(runs, 0)
    run_dir.mkdir(parents=True)
    result = {**_fake_result("crmvae-translated", 0, 0.117, 348.0), "coherence_class": 0.100,
              "coherence_by_class": {"0": 0.0, "1": 0.996, "4": 0.003},
              "unconditional_class_histogram": [0.01, 0.87, 0.12]}
    (run_dir / claims.RESULT_NAME).write_text(json.dumps(result))
    md = (claims.write_report(runs, tmp_path / "out", with_plots=False) and
          (tmp_path / "out" / "claims.md").read_text())
    line = next(x for x in md.splitlines() if x.startswith("| crmvae-translated (seed 0)"))
    assert "| 11.7 | 10.0 |" in line and "1 (99.6)" in line and "| 0.3 |" in line
    assert "class 1: 87 %" in line
    assert "| mvtcae-translated | 1.0 | unfinished" in md


def test_committed_results_are_restored_on_a_new_machine(tmp_path):
    """A fresh run root continues from the committed report instead of starting over; a
    result whose command no longer matches its row is not restored."""
    old_runs, new_runs, out = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    row = claims.row_of("mmvae-b2.5")
    for seed in (0, 1):
        run_dir = row.run_dir(old_runs, seed)
        run_dir.mkdir(parents=True)
        result = {**_fake_result(row.key, seed, 0.8, 200.0),
                  "commands": [claims.shown(claims.train_args(row, seed, old_runs, None))]}
        if seed == 1:  # made with other settings: stale
            result["commands"] = [result["commands"][0].replace("beta=2.5", "beta=2.0")]
        (run_dir / claims.RESULT_NAME).write_text(json.dumps(result))
    claims.write_report(old_runs, out, with_plots=False)

    restored = claims.restore_committed(new_runs, out / "claims.json")
    assert restored == ["mmvae-b2.5-s0"]
    assert claims.finished(row, 0, new_runs)["coherence"] == pytest.approx(0.8)
    assert claims.finished(row, 1, new_runs) is None
    assert claims.restore_committed(new_runs, out / "claims.json") == []  # idempotent
    assert claims.restore_committed(new_runs, out / "missing.json") == []


def test_two_runners_share_a_run_root(tmp_path):
    row = claims.row_of("mvtcae-l20")
    with claims.run_lock(tmp_path, row, 0) as first:
        assert first
        with claims.run_lock(tmp_path, row, 0) as second:
            assert not second  # the other runner's run
        with claims.run_lock(tmp_path, row, 1) as other:
            assert other
    with claims.run_lock(tmp_path, row, 0) as again:
        assert again  # released


def test_runner_skips_a_run_another_runner_holds(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "results"
    row = claims.row_of("mvtcae-l20")
    calls = []

    def fake_run_one(r, seed, runs_root, data_root):
        calls.append(seed)
        result = _fake_result(r.key, seed, 0.6, 150.0)
        r.run_dir(runs_root, seed).mkdir(parents=True, exist_ok=True)
        (r.run_dir(runs_root, seed) / claims.RESULT_NAME).write_text(json.dumps(result))
        return result

    monkeypatch.setattr(claims, "run_one", fake_run_one)
    with claims.run_lock(runs, row, 1) as held:
        assert held
        code = claims.main(["run", "--runs", str(runs), "--rows", row.key,
                            "--results", str(out)])
    assert code == 0 and calls == [0, 2]


def test_docs_table_is_rewritten_between_its_markers(tmp_path):
    runs = tmp_path / "runs"
    row = claims.row_of("mmvae_plus-b2.5")
    for seed in (0, 1, 2):
        run_dir = row.run_dir(runs, seed)
        run_dir.mkdir(parents=True)
        (run_dir / claims.RESULT_NAME).write_text(
            json.dumps(_fake_result(row.key, seed, 0.8 + 0.01 * seed, 200.0)))
    page = tmp_path / "page.md"
    start, end = claims.DOCS_MARKERS
    page.write_text(f"# Results\n\nintro\n\n{start}\nold table\n{end}\n\nafter\n")
    report = claims.write_report(runs, tmp_path / "results", with_plots=False,
                                 docs_page=page)
    text = page.read_text()
    assert "old table" not in text and text.startswith("# Results\n\nintro")
    assert text.rstrip().endswith("after")
    assert "81.0 ± 1.0 (n=3)" in text  # MMVAE+'s coherence, three seeds
    assert text.count("\n| 001 |") + text.count("\n| 000 |") == len(report["claims"])
    assert "/work" not in text and str(tmp_path) not in text  # no folders on a user page
    assert report["torch"] and report["pyro"]
    # a page without the markers is left alone
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not claims.update_docs(plain, report) and plain.read_text() == "no markers\n"


def test_the_documentation_page_has_the_markers():
    text = claims.DOCS_PAGE.read_text()
    assert all(m in text for m in claims.DOCS_MARKERS)


def test_translated_data_is_written_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(claims, "_call", lambda args, log: calls.append(args))
    root = tmp_path / "translated"
    assert claims.prepare_translated(root, "MNIST", "BG", tmp_path / "log")
    assert [a[a.index("--splits") + 1] for a in calls] == ["train", "test"]
    assert all("--translated" in a and a[a.index("--out") + 1] == str(root) for a in calls)
    limits = [int(a[a.index("--limit") + 1]) for a in calls]
    assert limits == [claims.TRANSLATED_TRAIN, claims.TRANSLATED_TEST]
    assert not claims.prepare_translated(root, "MNIST", "BG", tmp_path / "log")  # marker
    assert len(calls) == 2


def test_a_command_log_in_a_missing_folder_is_created(tmp_path, monkeypatch):
    # `claims.py prepare` on a fresh machine: the run root (and its commands.log) is not there
    monkeypatch.setattr(claims.subprocess, "call", lambda cmd, stdout, stderr: 0)
    log = tmp_path / "runs" / "commands.log"
    claims._call(["make-polymnist", "--help"], log)
    assert "make-polymnist --help" in log.read_text()


def _fake_pilot_call(calls):
    """A ``_call`` that records the command and writes what train/evaluate would."""
    def call(args, log):
        calls.append(args)
        run_dir = Path(args[args.index("--out") + 1]) if args[0] == "train" else Path(args[1])
        if args[0] == "train":
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoint.pt").write_bytes(b"x")
            epochs = int(args[args.index("--epochs") + 1])
            (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": epochs}) + "\n")
            return
        latent = int(run_dir.name.split("-l")[1].split("-")[0])
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        sizes = {str(k): 0.1 + latent / 1000 + k / 100 for k in range(1, 5)}
        (out / "eval.json").write_text(json.dumps({
            "complete": True, "epoch": 12, "settings": {"posterior": "sample"},
            "test_points": 2000,
            "probe": {"by_subset_size": {**sizes, "5": 0.2}},
            "coherence": {"by_subset_size": sizes, "by_subset_size_class_average": sizes,
                          "unconditional_coherence": 0.5, "mean_classifier_accuracy": 0.85}}))
    return call


def test_pilots_train_evaluate_once_and_reach_the_report(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(claims, "_call", _fake_pilot_call(calls))
    runs, out = tmp_path / "runs", tmp_path / "results"
    out.mkdir()
    report = claims.run_pilots(runs, "/translated", out / claims.PILOTS.name)
    kinds = [(a[0], a[a.index("--out") + 1].split("/")[-1 if a[0] == "train" else -2])
             for a in calls]
    assert kinds == [(k, f"crmvae-translated-l{d}-pilot-s0")
                     for d in (20, 64, 128) for k in ("train", "evaluate")]
    train = calls[0]
    assert "--set latent_dim=20" in " ".join(train) and train[train.index("--epochs") + 1] == "12"
    assert train[-2:] == ["--data-root", "/translated"]
    assert "probe,coherence" in calls[1] and calls[1][-2:] == ["--data-root", "/translated"]
    assert [p["latent_dim"] for p in report["pilots"]] == [20, 64, 128]
    assert report["pilots"][2]["probe_by_size"]["5"] == 0.2
    # done runs are skipped
    claims.run_pilots(runs, "/translated", out / claims.PILOTS.name)
    assert len(calls) == 6
    md = claims.markdown(claims.write_report(tmp_path / "none", out, with_plots=False))
    # latent 128: sizes 1-4 at 0.1 + 0.128 + k/100 = 23.8-26.8 %, the probe's size 5 at 20 %
    assert "| 128 | 20.0–26.8 | 23.8–26.8 | 23.8–26.8 | 50.0 |" in md
    assert "pilots --runs RUNS" in md
