r"""Generation quality and a comparison table for the coordination-based models on PolyMNIST.

Run after ``benchmarks/polymnist.py`` has trained and scored the models (same budget each)::

    python benchmarks/polymnist.py --model crmvae --epochs 5 --max-train 12000 \
        --data-root /tmp/polymnist_full --out benchmarks/results/crmvae-cpu.json \
        --run-dir runs/benchmarks/crmvae-cpu
    ...
    python benchmarks/coordination.py --data-root /tmp/polymnist_full \
        benchmarks/results/jmvae-cpu.json benchmarks/results/mvtcae-cpu.json \
        benchmarks/results/crmvae-cpu.json ...

For each result JSON it reloads the trained model from ``runs/benchmarks/<json stem>`` (the
checkpoint ``polymnist.py`` wrote), measures the classifier Fréchet distance
(:mod:`pyro_mmvae.metrics.frechet`, in the feature space of the library's own digit
classifiers, *not* FID) of

* unconditional samples (decoder means for :math:`z \sim p(z)`) and
* leave-one-out conditional generations (decoder mean of :math:`x_t` from the posterior mean of
  :math:`q(z \mid X_{\setminus t})`)

against the first ``--quality-points`` test images, adds them to the JSON
(``"quality"``) and writes ``coordination.md`` beside the JSONs: conditional coherence by
number of inputs, unconditional coherence, Fréchet distances and final test loss.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_mmvae.checkpoint import load_checkpoint
from pyro_mmvae.data import MultimodalTensorDataset, load_dataset
from pyro_mmvae.metrics import get_classifiers
from pyro_mmvae.metrics.evaluate import evaluate_model
from pyro_mmvae.train import CHECKPOINT_NAME
from pyro_mmvae.zoo import build_model


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result JSONs written by benchmarks/polymnist.py")
    p.add_argument("--data-root", required=True, help="folder containing PolyMNIST/")
    p.add_argument("--run-root", default="runs/benchmarks",
                   help="folder of the trainer run folders (default: runs/benchmarks)")
    p.add_argument("--quality-points", type=int, default=2000,
                   help="test images (and generations) per Fréchet distance (default: 2000)")
    p.add_argument("--classifier-train", type=int, default=10000,
                   help="as in polymnist.py: training tuples of the cached classifiers")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def head(dataset: MultimodalTensorDataset, size: int) -> MultimodalTensorDataset:
    """The first ``size`` tuples."""
    return dataset if size >= len(dataset) else dataset.subset(torch.arange(size))


def load_trained(result: dict[str, Any], run_dir: Path, dataset) -> torch.nn.Module:
    """The model of a benchmark run, rebuilt with its overrides and its trained parameters."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the --run-root the benchmark "
                                "wrote to")
    spec = build_model(result["model"], dataset, result.get("preset"),
                       **{k: tuple(v) if isinstance(v, list) else v
                          for k, v in (result.get("overrides") or {}).items()})
    spec.vae.load_state_dict(load_checkpoint(path)["vae_state"])
    return spec.vae


def quality(result: dict[str, Any], run_dir: Path, train_ds, test_ds, classifiers,
            points: int) -> dict[str, Any]:
    """Classifier Fréchet distances of unconditional and leave-one-out generations."""
    vae = load_trained(result, run_dir, test_ds)
    scores = evaluate_model(vae, train_ds, test_ds, metrics=["quality"], classifiers=classifiers,
                            quality_points=points)
    fd = scores["quality"]["classifier_frechet_distance"]
    return {key: fd.get(key) for key in ("unconditional", "conditional_leave_one_out",
                                     "mean_unconditional", "mean_conditional_leave_one_out",
                                     "mean_train_vs_test", "num_points", "feature_space")}


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def label(result: dict[str, Any]) -> str:
    """Model name plus its non-default options."""
    options = ", ".join(f"{k}={v}" for k, v in (result.get("overrides") or {}).items())
    return result["model"] + (f" ({options})" if options else "")


def table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: coherence (%) by number of inputs, single-source mean, unconditional
    coherence, classifier Fréchet distances, final test loss."""
    sizes = sorted({int(k) for r in results
                    for k in r["conditional_coherence"]["by_subset_size"]})
    header = (["model", "train N", "epochs"] + [f"cond {k} in" for k in sizes]
              + ["uncond", "class entropy", "FD uncond", "FD cond (LOO)", "test loss"])
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        by_size = r["conditional_coherence"]["by_subset_size"]
        q = r.get("quality", {})
        last = r["loss_curve"][-1] if r["loss_curve"] else {}
        cells = ([label(r), str(r["train_size"]), str(r["epochs"])]
                 + [_pct(by_size.get(str(k))) for k in sizes]
                 + [_pct(r["unconditional_coherence"]["coherence"]),
                    f"{r['unconditional_coherence']['class_entropy_normalised']:.2f}",
                    f"{q.get('mean_unconditional', float('nan')):.2f}",
                    f"{q.get('mean_conditional_leave_one_out', float('nan')):.2f}",
                    f"{last.get('test_loss', float('nan')):.1f}"])
        rows.append("| " + " | ".join(cells) + " |")
    reference = next((r["quality"]["mean_train_vs_test"] for r in results if "quality" in r),
                     None)
    note = ("\nCoherence in % (conditional: decoder mean at the posterior mean of q(z|X_S), "
            "averaged over all subsets S of each size and targets outside S). FD: Fréchet "
            "distance in the feature space of the library's digit classifiers (not FID), "
            "averaged over modalities, lower is better")
    if reference is not None:
        note += f"; real training images score {reference:.2f}"
    return "\n".join(rows) + "\n" + note + ".\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Add quality figures to each result JSON and write ``coordination.md``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train_ds = load_dataset("polymnist", args.data_root, "train")
    test_ds = load_dataset("polymnist", args.data_root, "test")
    classifiers = get_classifiers(head(train_ds, args.classifier_train), test_ds)
    results = []
    for name in args.results:
        path = Path(name)
        result = json.loads(path.read_text())
        run_dir = Path(args.run_root) / path.stem
        result["quality"] = quality(result, run_dir, train_ds, test_ds, classifiers,
                                    args.quality_points)
        path.write_text(json.dumps(result, indent=1) + "\n")
        results.append(result)
        print(f"{label(result)}: FD uncond {result['quality']['mean_unconditional']:.2f}, "
              f"cond {result['quality']['mean_conditional_leave_one_out']:.2f}", flush=True)
    out = Path(args.results[0]).parent / "coordination.md"
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out.write_text("# Coordination-based models on PolyMNIST (same short budget)\n\n"
                   + table(results) + f"\nCommand: `{command}`\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
