r"""Train one model of the zoo on real PolyMNIST and measure its coherence.

Usage (from the repository root)::

    python benchmarks/polymnist.py --model mmvae_plus --epochs 5 \
        --data-root /tmp/polymnist_full --max-train 12000 \
        --out benchmarks/results/mmvae_plus-cpu.json

``--data-root`` is the folder that holds ``PolyMNIST/{train,test}/m{i}/*.png``; write one with
``pyro-mmvae make-polymnist --mnist-root ../shared/data/mnist --backgrounds
../shared/data/polymnist_backgrounds --out /tmp/polymnist_full``.

Training uses the library's trainer (:func:`pyro_mmvae.train.train`); the run folder with its
checkpoint goes to ``--run-dir`` (default ``runs/benchmarks/<name>``, not committed). Then, on
the first ``--max-test`` test tuples:

* conditional coherence for every source-subset size 1..M-1 (at most
  ``--max-subsets-per-size`` subsets of each size), generating from the posterior mean of
  :math:`q(z|X_S)` and classifying with the library's per-modality digit classifiers
  (trained once on the first ``--classifier-train`` training tuples, then cached);
* unconditional coherence of ``--unconditional-samples`` prior samples, with the predicted-class
  entropy and a diversity figure beside it (a collapsed generator scores ~1 otherwise).

Writes ``--out`` (JSON: settings, loss curves, coherence) and ``<out>.md``, and rewrites
``polymnist-summary.md`` in the same folder from every benchmark JSON there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.checkpoint import load_checkpoint
from pyro_mmvae.cli import parse_setting
from pyro_mmvae.data import MultimodalTensorDataset, load_dataset
from pyro_mmvae.metrics import conditional_coherence, get_classifiers, unconditional_coherence
from pyro_mmvae.train import CHECKPOINT_NAME, TrainConfig, train
from pyro_mmvae.zoo import MODELS, build_model, resolve_settings

SUMMARY_NAME = "polymnist-summary.md"
MAKE_HINT = ("generate it with: pyro-mmvae make-polymnist --mnist-root ../shared/data/mnist "
             "--backgrounds ../shared/data/polymnist_backgrounds --out {root}")


# --------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--epochs", required=True, type=int)
    p.add_argument("--data-root", default=os.environ.get("PYRO_MMVAE_DATA_ROOT"),
                   help="folder containing PolyMNIST/ (default: $PYRO_MMVAE_DATA_ROOT)")
    p.add_argument("--preset", help="named recipe of the zoo, e.g. mmvae_plus_polymnist")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   type=parse_setting,
                   help="model setting override (repeatable), e.g. --set private_dim=32")
    p.add_argument("--max-train", type=int, help="train on a random subset of this many tuples")
    p.add_argument("--max-test", type=int, default=2000,
                   help="test tuples used for conditional coherence (default: 2000)")
    p.add_argument("--max-subsets-per-size", type=int,
                   help="cap on source subsets of each size (default: all)")
    p.add_argument("--unconditional-samples", type=int, default=1000)
    p.add_argument("--classifier-train", type=int, default=10000,
                   help="training tuples for the digit classifiers (default: 10000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True,
                   help="JSON file to write (e.g. benchmarks/results/x.json)")
    p.add_argument("--run-dir", help="trainer run folder (default: runs/benchmarks/<out stem>)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


# --------------------------------------------------------------------------- data
def load_polymnist(root: str | None) -> tuple[MultimodalTensorDataset, MultimodalTensorDataset]:
    """The train and test splits under ``root``, or a FileNotFoundError saying how to make them."""
    if not root:
        raise FileNotFoundError("no --data-root given (nor $PYRO_MMVAE_DATA_ROOT); "
                                + MAKE_HINT.format(root="/tmp/polymnist_full"))
    if not (Path(root) / "PolyMNIST").is_dir():
        raise FileNotFoundError(f"{root} has no PolyMNIST/ folder; " + MAKE_HINT.format(root=root))
    return load_dataset("polymnist", root, "train"), load_dataset("polymnist", root, "test")


def random_subset(dataset: MultimodalTensorDataset, size: int | None,
                  seed: int) -> MultimodalTensorDataset:
    """``size`` tuples drawn without replacement with ``seed`` (all of them if None/larger)."""
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return dataset.subset(index)


def head(dataset: MultimodalTensorDataset, size: int | None) -> MultimodalTensorDataset:
    """The first ``size`` tuples (all of them if None/larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.subset(torch.arange(size))


# --------------------------------------------------------------------------- run
def train_model(args: argparse.Namespace, train_ds, test_ds, overrides: dict[str, Any],
                run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Train with the library's trainer; return the trained VAE (from the checkpoint) and
    the trainer's summary."""
    config = TrainConfig(model=args.model, dataset="polymnist", preset=args.preset,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         device=args.device, seed=args.seed, out=str(run_dir),
                         settings=overrides)
    summary = train(config, progress=False, datasets=(train_ds, test_ds))
    spec = build_model(args.model, train_ds, args.preset, **overrides)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    spec.vae.load_state_dict(state["vae_state"])
    device = torch.device(summary["device"])
    return spec.vae.to(device), summary


def evaluate(vae, args: argparse.Namespace, full_train, full_test) -> dict[str, Any]:
    """Conditional coherence by number of inputs and unconditional coherence."""
    device = next(vae.parameters()).device
    classifiers = get_classifiers(head(full_train, args.classifier_train), full_test,
                                  device=device)
    names = list(vae.names)
    pyro.set_rng_seed(args.seed)
    conditional = conditional_coherence(
        vae, head(full_test, args.max_test), classifiers, subset_sizes=range(1, len(names)),
        device=device, max_subsets_per_size=args.max_subsets_per_size)
    unconditional = unconditional_coherence(vae, classifiers, args.unconditional_samples)
    return {"conditional": conditional, "unconditional": unconditional,
            "classifier_accuracy": dict(classifiers.test_accuracy),
            "classifier_train_size": classifiers.info.get("train_size")}


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate, write the JSON, the markdown and the folder summary."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(args.overrides)
    out = Path(args.out)
    run_dir = Path(args.run_dir or Path("runs") / "benchmarks" / out.stem)
    if (run_dir / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass another --run-dir")
    full_train, full_test = load_polymnist(args.data_root)
    train_ds = random_subset(full_train, args.max_train, args.seed)
    settings = resolve_settings(args.model, args.preset, "polymnist", **overrides)
    start = time.perf_counter()
    vae, summary = train_model(args, train_ds, full_test, overrides, run_dir)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(vae, args, full_train, full_test)
    result = {
        "model": args.model,
        "preset": args.preset,
        "overrides": overrides,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "epochs": summary["epochs"],
        "batch_size": summary["batch_size"],
        "lr": summary["lr"],
        "train_size": len(train_ds),
        "train_subsample": None if args.max_train is None else f"random {len(train_ds)} "
                                                                f"(seed {args.seed})",
        "coherence_test_size": metrics["conditional"]["num_datapoints"],
        "parameters": summary["parameters"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
        "device": summary["device"],
        "threads": torch.get_num_threads(),
        "loss_curve": summary_history(run_dir),
        "conditional_coherence": pick(metrics["conditional"], (
            "by_subset_size", "mean_single_source", "mean_leave_one_out",
            "single_source_matrix", "leave_one_out", "by_subset", "posterior")),
        "unconditional_coherence": pick(metrics["unconditional"], (
            "coherence", "num_samples", "class_histogram", "class_entropy_normalised",
            "diversity", "mean_pairwise_l2")),
        "classifier_accuracy": metrics["classifier_accuracy"],
        "classifier_train_size": metrics["classifier_train_size"],
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None
                                                        else sys.argv[1:])]),
        "library_version": __version__,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown([result]))
    (out.parent / SUMMARY_NAME).write_text(folder_summary(out.parent))
    print(markdown([result]))
    return 0


def summary_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (train/test loss per data point, seconds)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    keep = ("epoch", "train_loss", "test_loss", "seconds")
    return [{k: json.loads(line)[k] for k in keep} for line in lines if line.strip()]


def pick(mapping: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The entries of ``mapping`` named in ``keys`` (JSON-safe: int keys become strings)."""
    return json.loads(json.dumps({k: mapping.get(k) for k in keys}))


# --------------------------------------------------------------------------- reports
def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """A table: one row per run, conditional coherence (%) by number of inputs, unconditional
    coherence with the class entropy beside it, final losses and the budget."""
    sizes = sorted({int(k) for r in results
                    for k in r["conditional_coherence"]["by_subset_size"]})
    head_row = (["model", "preset/overrides", "train N", "epochs", "train s"]
                + [f"cond {k} in" for k in sizes]
                + ["uncond", "class entropy", "final train loss", "final test loss"])
    rows = ["| " + " | ".join(head_row) + " |", "|" + "---|" * len(head_row)]
    for r in results:
        by_size = r["conditional_coherence"]["by_subset_size"]
        uncond = r["unconditional_coherence"]
        last = r["loss_curve"][-1] if r["loss_curve"] else {}
        recipe = r["preset"] or ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        cells = ([r["model"], recipe, str(r["train_size"]), str(r["epochs"]),
                  f"{r['train_seconds']:.0f}"]
                 + [_pct(by_size.get(str(k))) for k in sizes]
                 + [_pct(uncond["coherence"]), f"{uncond['class_entropy_normalised']:.2f}",
                    f"{last.get('train_loss', float('nan')):.1f}",
                    f"{last.get('test_loss', float('nan')):.1f}"])
        rows.append("| " + " | ".join(cells) + " |")
    note = ("\nCoherence in %, on the first test tuples (conditional: decoder mean at the "
            "posterior mean; MMVAE+ family: w ~ p(w) for cross-generated targets). Class "
            "entropy: normalised entropy of the classes predicted for prior samples "
            "(1 = uniform).\n")
    return "\n".join(rows) + "\n" + note


def folder_summary(folder: Path) -> str:
    """The table of every benchmark JSON in ``folder`` (files with loss curves and
    conditional coherence), by file name."""
    results = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            data = json.loads(path.read_text())
            if "conditional_coherence" in data and "loss_curve" in data:
                results.append(data)
    commands = "\n".join(f"- `{r['command']}`" for r in results)
    return ("# PolyMNIST benchmark results\n\n" + markdown(results)
            + "\nCommands:\n\n" + commands + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
