r"""Reproduce the seeds' claims on real PolyMNIST: one protocol, every model, resumable.

Usage (from the repository root)::

    # once: write PolyMNIST and Translated PolyMNIST (about 4 + 6 minutes on 2 cores)
    pyro-mmvae make-polymnist --mnist-root ../shared/data/mnist \
        --backgrounds ../shared/data/polymnist_backgrounds --out DATA/polymnist
    pyro-mmvae make-polymnist --mnist-root ../shared/data/mnist \
        --backgrounds ../shared/data/polymnist_backgrounds --out DATA/translated --translated

    # the CPU protocol, model by model (each row resumes where it stopped; after a killed
    # run, add --break-lock)
    python benchmarks/reproduce.py --rows mmvae_plus --polymnist DATA/polymnist \
        --translated DATA/translated --runs RUNS
    python benchmarks/reproduce.py --rows all ...          # every row in turn
    python benchmarks/reproduce.py --estimate ...          # time of each row, from a few steps
    python benchmarks/reproduce.py --progress --runs RUNS  # the learning curves so far

    # the papers' recipes (ResNets, 150-800 epochs) on a GPU
    python benchmarks/reproduce.py --full --device cuda --rows all ...

**Protocol** (:data:`ROWS`, presets ``<model>_polymnist_cpu`` in :mod:`pyro_mmvae.presets`):
all 60,000 training tuples, the library's MLP networks (chosen over the small convolutional
networks of :mod:`pyro_mmvae.nets.conv` by measurement, see :mod:`pyro_mmvae.presets` and
``benchmarks/digit_probe.py``), each model's paper settings otherwise (β, α, latent sizes,
posterior family), a fixed number of epochs chosen so that a row fits in 2 hours of a 2-core
CPU. After every epoch the script records the losses and the single-source conditional
coherence of the first ``--curve-points`` test tuples (``RUNS/<row>/curve.jsonl``, the
learning curve). After the last epoch it evaluates with the library's evaluator
(:func:`pyro_mmvae.metrics.evaluate.evaluate_run`) on the first ``--eval-points`` test tuples:
conditional coherence for 1..4 inputs (every subset), unconditional coherence with its
class histogram and diversity, classifier Fréchet distances of prior samples and of
leave-one-out conditional generations; conditional coherence twice, decoding the posterior
mean of z and one draw z ~ q(z|X_S) per tuple (``--posterior sample`` of the evaluator,
MultiVae's protocol), since the two differ (by 27 points on MVTCAE's 1-input figure; a finished
row evaluated before the sampled figure existed gets it added, coherence only, written to
``RUN/eval-sample/``). Training runs one epoch per call of the library's
trainer with ``resume=True`` (exact resume), so killing the script loses at most one epoch.
A row that has finished and whose evaluation of that final epoch is already in the JSON is
skipped (``--reevaluate`` evaluates it again, e.g. after the evaluator changed).

Writes ``benchmarks/results/reproduction.json``
(``{"<model>[/<dataset>]": {"conditional_coherence": [c1, c2, c3, c4],
"conditional_coherence_sampled": [c1, c2, c3, c4],
"unconditional_coherence": u, "frechet_prior": f, "epochs": e, "seconds": s, ...}}``)
and ``reproduction.md`` (the table with the papers' figures and the command of each row).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_mmvae.checkpoint import save_json
from pyro_mmvae.data import load_dataset
from pyro_mmvae.engine.device import describe_device
from pyro_mmvae.metrics import conditional_coherence, get_classifiers
from pyro_mmvae.metrics.evaluate import evaluate_run
from pyro_mmvae.presets import PRESETS
from pyro_mmvae.runs import load_run
from pyro_mmvae.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
JSON_NAME, MD_NAME = "reproduction.json", "reproduction.md"


@dataclass(frozen=True)
class Row:
    """One row of the reproduction table: a model on a dataset, its CPU and full recipes."""

    key: str
    model: str
    dataset: str  # "polymnist" or "translated"
    cpu_preset: str
    full_preset: str


#: The table, in the order ``--rows all`` trains it (the seed's headline comparison first).
ROWS: tuple[Row, ...] = (
    Row("mmvae_plus", "mmvae_plus", "polymnist", "mmvae_plus_polymnist_cpu",
        "mmvae_plus_polymnist"),
    Row("mmvae", "mmvae", "polymnist", "mmvae_polymnist_cpu", "mmvae_polymnist"),
    Row("mmvae_private", "mmvae_private", "polymnist", "mmvae_private_polymnist_cpu",
        "mmvae_private_polymnist"),
    Row("mopoe", "mopoe", "polymnist", "mopoe_polymnist_cpu", "mopoe_polymnist"),
    Row("mvtcae", "mvtcae", "polymnist", "mvtcae_polymnist_cpu", "mvtcae_polymnist"),
    Row("crmvae", "crmvae", "polymnist", "crmvae_polymnist_cpu", "crmvae_translated_polymnist"),
    Row("crmvae/translated", "crmvae", "translated", "crmvae_polymnist_cpu",
        "crmvae_translated_polymnist"),
    Row("mvtcae/translated", "mvtcae", "translated", "mvtcae_polymnist_cpu",
        "mvtcae_polymnist"),
    Row("jmvae/translated", "jmvae", "translated", "jmvae_polymnist_cpu", "jmvae_polymnist"),
)
ROW_KEYS = tuple(r.key for r in ROWS)

#: The papers' figures (MODELS.md): conditional coherence (%) by number of inputs, or its
#: mean; Inception FID (not comparable with our classifier Fréchet distance).
PAPERS: dict[str, dict[str, Any]] = {
    "mmvae_plus": {"mean_conditional": 86.9, "fid": 92.8,
                   "source": "Palumbo et al. 2023 (MultiVae: 88.6 ± 0.8, FID 93 ± 5)"},
    "mopoe": {"conditional": [66, 77, 81, 83], "source": "Sutter et al. 2021"},
    "mvtcae": {"conditional": [69, 77, 83, 86], "source": "Hwang et al. 2021"},
    "crmvae/translated": {"conditional": [14.5, 17.2, 19.2, 21.0],
                          "source": "seed 000 (MultiVae: 16/19/20.5/21)"},
}


# --------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="all",
                   help=f"comma-separated rows or 'all' (rows: {', '.join(ROW_KEYS)})")
    p.add_argument("--polymnist", default=os.environ.get("PYRO_MMVAE_POLYMNIST"),
                   help="folder holding PolyMNIST/ (default: $PYRO_MMVAE_POLYMNIST)")
    p.add_argument("--translated", default=os.environ.get("PYRO_MMVAE_TRANSLATED"),
                   help="folder holding Translated PolyMNIST's PolyMNIST/ "
                        "(default: $PYRO_MMVAE_TRANSLATED)")
    p.add_argument("--runs", default="runs/reproduce", help="run folders (one per row)")
    p.add_argument("--full", action="store_true",
                   help="the papers' recipes (ResNets, 150-800 epochs): for a GPU")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--curve-points", type=int, default=1000,
                   help="test tuples for the per-epoch coherence (default: 1000)")
    p.add_argument("--eval-points", type=int, default=10000,
                   help="test tuples for the final evaluation (default: all 10,000)")
    p.add_argument("--estimate", action="store_true",
                   help="time a few training steps per row and print each row's wall time")
    p.add_argument("--progress", action="store_true",
                   help="print the learning curves recorded so far in --runs (Markdown) and exit")
    p.add_argument("--break-lock", action="store_true",
                   help="replace a stale run-folder lock left by a killed run (never a live one)")
    p.add_argument("--reevaluate", action="store_true",
                   help="evaluate finished rows again even when --out already holds their "
                        "evaluation of the same final epoch (after the evaluator changed)")
    p.add_argument("--out", default=str(RESULTS / JSON_NAME))
    p.add_argument("--readme", help="also rewrite the table between the reproduction-table "
                                    "markers of this README")
    args = p.parse_args(argv)
    rows = ROW_KEYS if args.rows == "all" else tuple(r.strip() for r in args.rows.split(","))
    unknown = [r for r in rows if r not in ROW_KEYS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose from {', '.join(ROW_KEYS)}")
    args.rows = rows
    return args


def row_of(key: str) -> Row:
    """The row named ``key``."""
    return next(r for r in ROWS if r.key == key)


def data_root(args: argparse.Namespace, row: Row) -> str:
    """The folder of the row's dataset, or a FileNotFoundError saying how to write it."""
    root = args.polymnist if row.dataset == "polymnist" else args.translated
    flag = "--polymnist" if row.dataset == "polymnist" else "--translated"
    if not root or not (Path(root) / "PolyMNIST").is_dir():
        extra = " --translated" if row.dataset == "translated" else ""
        raise FileNotFoundError(
            f"row {row.key} needs {flag} DIR holding PolyMNIST/ (got {root!r}); write it "
            "with: pyro-mmvae make-polymnist --mnist-root ../shared/data/mnist --backgrounds "
            f"../shared/data/polymnist_backgrounds --out DIR{extra}")
    return root


def recipe(args: argparse.Namespace, row: Row) -> tuple[str, int]:
    """The preset and the number of epochs of ``row``."""
    preset = row.full_preset if args.full else row.cpu_preset
    return preset, args.epochs or int(PRESETS[preset]["epochs"])


# --------------------------------------------------------------------------- training
def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The learning curve recorded so far (one record per epoch)."""
    path = run_dir / "curve.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_coherence(run_dir: Path, root: str, datasets: tuple[Any, Any], classifiers: Any,
                    points: int, device: str) -> float:
    """Mean single-source conditional coherence of the run's model on ``points`` tuples."""
    test_ds = datasets[1]
    vae = load_run(run_dir, device=device, data_root=root, datasets=datasets).vae
    pyro.set_rng_seed(0)
    part = test_ds.subset(torch.arange(min(points, len(test_ds))))
    result = conditional_coherence(vae, part, classifiers, subset_sizes=(1,), device=device)
    return float(result["by_subset_size"][1])


def train_row(args: argparse.Namespace, row: Row, run_dir: Path, datasets: tuple[Any, Any],
              classifiers: Any) -> list[dict[str, Any]]:
    """Train ``row`` epoch by epoch up to its recipe's epochs (resuming what exists),
    recording the learning curve; returns it."""
    preset, epochs = recipe(args, row)
    curve = read_curve(run_dir)
    for epoch in range(len(curve) + 1, epochs + 1):
        start = time.perf_counter()
        config = TrainConfig(model=row.model, dataset="polymnist", data_root=data_root(args, row),
                             preset=preset, epochs=epoch, out=str(run_dir),
                             resume=(run_dir / "checkpoint.pt").is_file(), device=args.device,
                             seed=0, break_lock=args.break_lock)
        summary = train(config, progress=False, datasets=datasets)
        seconds = time.perf_counter() - start
        last = _last_metrics(run_dir)
        coherence = curve_coherence(run_dir, data_root(args, row), datasets, classifiers,
                                    args.curve_points, summary["device"])
        record = {"epoch": epoch, "train_loss": last.get("train_loss"),
                  "test_loss": last.get("test_loss"), "coherence_single_source": coherence,
                  "train_seconds": round(seconds, 1),
                  "time": datetime.datetime.now().isoformat(timespec="seconds")}
        with open(run_dir / "curve.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        curve.append(record)
        print(f"{row.key}: epoch {epoch}/{epochs} loss {record['train_loss']:.1f} "
              f"coherence {coherence:.3f} ({seconds:.0f} s)", flush=True)
    return curve


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


# --------------------------------------------------------------------------- evaluation
def evaluated_entry(args: argparse.Namespace, row: Row, run_dir: Path) -> dict[str, Any] | None:
    """The row's entry of ``--out`` when it already evaluates this run's final epoch: the run
    has trained all its epochs, the entry's learning curve is the run's, and it used the same
    number of test points. None otherwise (or with ``--reevaluate``)."""
    out = Path(args.out)
    if args.reevaluate or not out.is_file():
        return None
    entry = json.loads(out.read_text()).get(row.key)
    curve = read_curve(run_dir)
    _, epochs = recipe(args, row)
    if (not entry or len(curve) < epochs or entry.get("learning_curve") != curve
            or entry.get("eval_points") != args.eval_points):
        return None
    return entry


def evaluate_row(args: argparse.Namespace, row: Row, run_dir: Path) -> dict[str, Any]:
    """The library's evaluator on the trained row (writes ``RUN/eval.json`` and figures)."""
    pyro.set_rng_seed(0)
    return evaluate_run(run_dir, metrics=("coherence", "quality"), device=args.device,
                        data_root=data_root(args, row), coherence_points=args.eval_points,
                        quality_points=args.eval_points, progress=False)


SAMPLED_DIR = "eval-sample"


def sampled_coherence(args: argparse.Namespace, row: Row, run_dir: Path) -> list[float]:
    """Conditional coherence for 1..4 inputs decoding z ~ q(z|X_S) (the evaluator's
    ``posterior="sample"``, coherence only, ``RUN/eval-sample/eval.json``); an evaluation
    already there of the run's final epoch with the same test tuples is reused."""
    saved = run_dir / SAMPLED_DIR / "eval.json"
    _, epochs = recipe(args, row)
    result = json.loads(saved.read_text()) if saved.is_file() else {}
    settings = result.get("settings", {})
    if not (result.get("complete") and result.get("epoch") == epochs
            and settings.get("posterior") == "sample"
            and settings.get("coherence_points") == args.eval_points):
        pyro.set_rng_seed(0)
        result = evaluate_run(run_dir, metrics=("coherence",), device=args.device,
                              data_root=data_root(args, row), coherence_points=args.eval_points,
                              quality_points=args.eval_points, posterior="sample",
                              progress=False, out_dir=run_dir / SAMPLED_DIR)
    by_size = result["coherence"]["by_subset_size"]
    return [by_size[str(k)] if str(k) in by_size else by_size[k] for k in range(1, 5)]


def row_result(args: argparse.Namespace, row: Row, run_dir: Path, curve: list[dict[str, Any]],
               results: dict[str, Any]) -> dict[str, Any]:
    """The JSON entry of ``row`` (see the module docstring)."""
    preset, epochs = recipe(args, row)
    coherence, quality = results["coherence"], results["quality"]
    by_size = coherence["by_subset_size"]
    frechet = quality["classifier_frechet_distance"]
    uncond = coherence["unconditional"]
    seconds = sum(r["train_seconds"] for r in curve)
    return {
        "conditional_coherence": [by_size[str(k)] if str(k) in by_size else by_size[k]
                                  for k in range(1, 5)],
        "conditional_coherence_sampled": sampled_coherence(args, row, run_dir),
        "unconditional_coherence": coherence["unconditional_coherence"],
        "class_entropy_normalised": uncond.get("class_entropy_normalised"),
        "diversity": uncond.get("diversity"),
        "frechet_prior": frechet.get("mean_unconditional"),
        "frechet_conditional": frechet.get("mean_conditional_leave_one_out"),
        "frechet_train_vs_test": frechet.get("mean_train_vs_test"),
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "eval_seconds": sum(results.get("seconds", {}).values()),
        "eval_points": args.eval_points,
        "learning_curve": curve,
        "preset": preset,
        "settings": dict(PRESETS[preset]),
        "classifier_accuracy": coherence.get("classifier_accuracy"),
        "command": command_line(args, row),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def command_line(args: argparse.Namespace, row: Row) -> str:
    """The command that makes ``row`` (data folders as given)."""
    parts = ["python benchmarks/reproduce.py", f"--rows {row.key}",
             f"--polymnist {args.polymnist}" if row.dataset == "polymnist" else
             f"--translated {args.translated}", f"--runs {args.runs}"]
    if args.full:
        parts.append("--full")
    if args.device != "auto":
        parts.append(f"--device {args.device}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.epochs:
        parts.append(f"--epochs {args.epochs}")
    if args.curve_points != 1000:
        parts.append(f"--curve-points {args.curve_points}")
    if args.eval_points != 10000:
        parts.append(f"--eval-points {args.eval_points}")
    return " ".join(parts)


def machine() -> str:
    """CPU model, cores and torch threads (or the GPU's name)."""
    return describe_device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- reports
def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


#: The seeds' orderings: (claim, better row, worse row, measure); measure is
#: ``"coherence"`` (mean conditional coherence over 1-4 inputs, higher is better) or a
#: Fréchet distance key (lower is better).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("MMVAE+ at least as coherent as MMVAE (seed 001)", "mmvae_plus", "mmvae", "coherence"),
    ("MMVAE+ more coherent than its private-latent baseline (seed 001)", "mmvae_plus",
     "mmvae_private", "coherence"),
    ("MMVAE+ lower Fréchet distance (prior samples) than MMVAE (seed 001)", "mmvae_plus",
     "mmvae", "frechet_prior"),
    ("MMVAE+ lower Fréchet distance (conditional) than MMVAE (seed 001)", "mmvae_plus",
     "mmvae", "frechet_conditional"),
    ("MMVAE+ lower Fréchet distance (prior samples) than the private-latent baseline "
     "(seed 001)", "mmvae_plus", "mmvae_private", "frechet_prior"),
    ("CRMVAE more coherent than MVTCAE on Translated PolyMNIST (seed 000)",
     "crmvae/translated", "mvtcae/translated", "coherence"),
    ("CRMVAE more coherent than JMVAE on Translated PolyMNIST (seed 000)",
     "crmvae/translated", "jmvae/translated", "coherence"),
)


def _measure(entry: dict[str, Any], measure: str) -> float:
    if measure in ("coherence", "coherence_sampled"):
        cond = entry["conditional_" + measure]
        return sum(cond) / len(cond)
    return float(entry[measure])


def orderings(table: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows checking each of :data:`CLAIMS` whose two rows are in ``table``:
    the two figures and whether our measurement orders them as the paper does."""
    lines = []
    for claim, better, worse, measure in CLAIMS:
        if better not in table or worse not in table:
            continue
        a, b = _measure(table[better], measure), _measure(table[worse], measure)
        holds = a >= b if measure == "coherence" else a < b
        unit = (lambda v: f"{100 * v:.1f} %") if measure == "coherence" \
            else (lambda v: f"{v:.2f}")
        ours, verdict = f"{better} {unit(a)} vs {worse} {unit(b)}", "yes" if holds else "**no**"
        if measure == "coherence" and all("conditional_coherence_sampled" in table[k]
                                          for k in (better, worse)):
            a, b = (_measure(table[k], "coherence_sampled") for k in (better, worse))
            ours += f" (sampled z: {unit(a)} vs {unit(b)})"
            verdict += f" ({'yes' if a >= b else '**no**'})"
        lines.append(f"| {claim} | {ours} | {verdict} |")
    if not lines:
        return []
    return ["", "The seeds' orderings on our rows (the reasons for a **no** are in "
            "`reproduction-progress.md`):", "", "| claim | ours | holds |", "|---|---|---|",
            *lines]


def markdown(table: dict[str, dict[str, Any]]) -> str:
    """The reproduction table with the papers' figures in the same rows."""
    head = ("| row | epochs | hours | cond. coherence 1/2/3/4 inputs (%), mean z | mean | "
            "sampled z | mean | paper (%) | uncond. (%) | class entropy | Fréchet prior | "
            "Fréchet cond. |")
    lines = ["# PolyMNIST reproduction (CPU protocol)", "", head, "|" + "---|" * 12]
    for key in [k for k in ROW_KEYS if k in table] + [k for k in table if k not in ROW_KEYS]:
        r = table[key]
        cond = r["conditional_coherence"]
        paper = PAPERS.get(key, {})
        paper_text = ("/".join(f"{v:g}" for v in paper["conditional"]) if "conditional" in paper
                      else f"mean {paper['mean_conditional']:g}, FID {paper['fid']:g}"
                      if "mean_conditional" in paper else "–")
        sampled = r.get("conditional_coherence_sampled")
        sampled_text = (f"{'/'.join(_pct(c) for c in sampled)} | "
                        f"{_pct(sum(sampled) / len(sampled))}" if sampled else "– | –")
        lines.append(
            f"| {key} | {r['epochs']} | {r['seconds'] / 3600:.2f} | "
            f"{'/'.join(_pct(c) for c in cond)} | {_pct(sum(cond) / len(cond))} | "
            f"{sampled_text} | {paper_text} | "
            f"{_pct(r['unconditional_coherence'])} | "
            f"{r['class_entropy_normalised']:.2f} | {r['frechet_prior']:.1f} | "
            f"{r['frechet_conditional']:.1f} |")
    lines += orderings(table)
    lines += ["", "Coherence: decoder means at the posterior mean of z, or at one draw "
              "z ~ q(z|X_S) per test tuple (\"sampled z\", MultiVae's protocol), classified by "
              "the library's digit classifiers (MMVAE+ family: private latents of the targets "
              "from their prior); "
              "Fréchet: classifier Fréchet distance (penultimate layer of the library's digit "
              "classifier, not Inception FID) of prior samples / leave-one-out conditional "
              "generations (decoded at the posterior mean) against test images.", "",
              "Sources of the papers' figures: "
              + "; ".join(f"{k}: {v['source']}" for k, v in PAPERS.items()) + ".", "",
              "Commands and machines:", ""]
    lines += [f"- {key}: `{table[key]['command']}` ({table[key]['machine']}, "
              f"torch {table[key]['torch']}, {table[key]['date']})" for key in table]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive ``flock`` on ``.<out name>.lock`` beside ``out``: queues of rows run
    side by side (``--rows a,b`` and ``--rows c,d``) merge into one table without losing an
    entry."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_results(out: Path, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Merge ``entry`` into the JSON at ``out`` and rewrite the Markdown beside it."""
    with _exclusive(out):
        table = json.loads(out.read_text()) if out.is_file() else {}
        table[key] = entry
        save_json(out, table)
        out.with_suffix(".md").write_text(markdown(table))
    return table


README_START, README_END = "<!-- reproduction-table-start -->", "<!-- reproduction-table-end -->"


def update_readme(readme: Path, table: dict[str, dict[str, Any]]) -> None:
    """Replace the text between the README's reproduction-table markers with the table
    (without its title); a README without both markers is an error."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    body = markdown(table).split("\n", 2)[2]  # drop the "# ..." title and its blank line
    readme.write_text(text[:start + len(README_START)] + "\n" + body + text[end:])


# --------------------------------------------------------------------------- progress
def progress(args: argparse.Namespace) -> str:
    """The learning curves recorded so far in ``args.runs``, one Markdown table per row."""
    parts = []
    for key in args.rows:
        curve = read_curve(Path(args.runs) / key.replace("/", "-"))
        if not curve:
            continue
        preset, epochs = recipe(args, row_of(key))
        lines = [f"### {key} (preset `{preset}`, {len(curve)} of {epochs} epochs)", "",
                 "| epoch | train loss | test loss | single-source coherence | train s | "
                 "finished |", "|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['epoch']} | {r['train_loss']:.1f} | {r['test_loss']:.1f} | "
                  f"{r['coherence_single_source']:.3f} | {r['train_seconds']:.0f} | "
                  f"{r['time']} |" for r in curve]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else "no learning curve recorded yet\n"


# --------------------------------------------------------------------------- estimate
def time_steps(model: str, preset: str, dataset: Any, device: str, train_size: int,
               steps: int = 6) -> tuple[float, int]:
    """Median seconds of one training step of ``preset`` (the engine's
    :class:`~pyro_mmvae.engine.TrainStep` with the layout and optimizer ``pyro-mmvae train``
    uses on ``device``; validation off, after two warm-up steps) and the steps of one epoch of
    ``train_size``."""
    from pyro_mmvae.engine import TrainStep, build_optimizer
    from pyro_mmvae.engine.device import resolve_device
    from pyro_mmvae.engine.networks import set_decoder_batching, set_memory_format
    from pyro_mmvae.zoo import build_model

    torch_device = resolve_device(device)
    spec = build_model(model, dataset, preset)
    vae = spec.vae.to(torch_device)
    set_decoder_batching(vae, "auto", torch_device)
    set_memory_format(vae, "auto", torch_device)
    batch_size = int(PRESETS[preset]["batch_size"])
    batch = next(iter(dataset.batches(batch_size, device=torch_device)))[0]
    params = list(vae.named_parameters())
    optimizer = build_optimizer([p for _, p in params], 1e-4, False, torch_device)
    step = TrainStep(vae, spec.elbo, params, optimizer, torch_device)
    times = []
    with pyro.validation_enabled(False):
        for _ in range(steps + 2):
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(batch)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return times[len(times) // 2], math.ceil(train_size / batch_size)


def estimate(args: argparse.Namespace) -> None:
    """Time a few training steps of each row and print the wall time of its recipe."""
    for key in args.rows:
        row = row_of(key)
        preset, epochs = recipe(args, row)
        seconds_per_step, steps_per_epoch = time_steps(
            row.model, preset, load_dataset("polymnist", data_root(args, row), "test"),
            args.device, train_size=60000)
        hours = seconds_per_step * steps_per_epoch * epochs / 3600
        print(f"{key}: {preset}, {epochs} epochs x {steps_per_epoch} steps x "
              f"{seconds_per_step:.3f} s = {hours:.1f} h ({machine()})")


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Train and evaluate each chosen row, then write the JSON and Markdown tables."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.estimate:
        estimate(args)
        return 0
    if args.progress:
        print(progress(args), end="")
        return 0
    for key in args.rows:
        row = row_of(key)
        run_dir = Path(args.runs) / key.replace("/", "-")
        run_dir.mkdir(parents=True, exist_ok=True)
        done = evaluated_entry(args, row, run_dir)
        if done is not None and "conditional_coherence_sampled" not in done:
            done = write_results(Path(args.out), key, {
                **done, "conditional_coherence_sampled": sampled_coherence(args, row, run_dir)
            })[key]
            print(f"{key}: sampled-z coherence added", flush=True)
        if done is not None:
            print(f"{key}: finished and evaluated ({done['date']}); --reevaluate redoes it",
                  flush=True)
            if args.readme:
                update_readme(Path(args.readme), json.loads(Path(args.out).read_text()))
            continue
        root = data_root(args, row)
        datasets = (load_dataset("polymnist", root, "train"),
                    load_dataset("polymnist", root, "test"))
        classifiers = get_classifiers(*datasets, device="cpu")
        curve = train_row(args, row, run_dir, datasets, classifiers)
        results = evaluate_row(args, row, run_dir)
        table = write_results(Path(args.out), key, row_result(args, row, run_dir, curve,
                                                               results))
        if args.readme:
            update_readme(Path(args.readme), table)
        print(markdown({key: table[key]}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
