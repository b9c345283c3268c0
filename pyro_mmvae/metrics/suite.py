"""The metrics of :func:`pyro_mmvae.metrics.evaluate.evaluate_model`, one runner each, and
the evaluation figures: what each runner computes is documented in
:mod:`pyro_mmvae.metrics.evaluate`."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from torch import Tensor

from pyro_mmvae.metrics.coherence import (
    conditional_coherence,
    cross_generate,
    unconditional_coherence,
)
from pyro_mmvae.metrics.common import evaluation_mode, head, progress_bar
from pyro_mmvae.metrics.frechet import (
    frechet_distances,
    have_pytorch_fid,
    inception_features,
    load_fid_inception,
)
from pyro_mmvae.metrics.likelihood import (
    dataset_log_likelihood,
    likelihood_subsets,
    likelihood_summary,
    supports_unstratified,
)
from pyro_mmvae.metrics.probe import latent_probe

#: The metric groups of :func:`evaluate_model`, in the order they run.
METRICS: tuple[str, ...] = ("coherence", "quality", "likelihood", "probe")
#: File name of the evaluation results written into the run folder.

if TYPE_CHECKING:
    from pyro_mmvae.metrics.evaluate import EvalSettings

#: The PNG files of an evaluation, by figure.
FIGURES = {
    "conditional_grid": "eval_conditional_grid.png",
    "unconditional_grid": "eval_unconditional_grid.png",
    "coherence": "eval_coherence.png",
    "pareto_k": "eval_pareto_k.png",
}
GRID_EXAMPLES = 8
UNCONDITIONAL_EXAMPLES = 16
REFERENCE = "test"  # the image set every Fréchet distance is measured against


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, NumPy and Python's RNG in the block; restore the caller's states after."""
    import random

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _mean(values: Mapping[str, float]) -> float | None:
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def record_seconds(results: dict[str, Any], name: str, start: float) -> None:
    """``results["seconds"][name]``: the seconds since ``start``."""
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)


# ---------------------------------------------------------------------- metrics
def run_coherence(vae: Any, test_ds: Any, classifiers: Any, settings: EvalSettings,
                  device: torch.device) -> dict[str, Any]:
    """Conditional coherence for every subset size and unconditional coherence."""
    data = head(test_ds, settings.coherence_points)
    conditional = conditional_coherence(
        vae, data, classifiers, subset_sizes=None, batch_size=settings.batch_size,
        device=device, max_subsets_per_size=settings.coherence_subsets,
        engine=settings.engine, progress=settings.progress, posterior=settings.posterior)
    num = settings.unconditional_samples or min(len(test_ds), settings.quality_points
                                                or len(test_ds))
    unconditional = unconditional_coherence(vae, classifiers, num_samples=num,
                                            batch_size=settings.batch_size,
                                            progress=settings.progress)
    accuracy = dict(classifiers.test_accuracy)
    unconditional["classifier_accuracy"] = accuracy
    return {
        "conditional": conditional,
        "by_subset_size": conditional["by_subset_size"],
        "unconditional": unconditional,
        "unconditional_coherence": unconditional["coherence"],
        "classifier_accuracy": accuracy,
        "mean_classifier_accuracy": _mean(accuracy),
        "classifier_info": dict(classifiers.info),
    }


def _observed(batch: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """Each modality of ``names`` on the rows that observe it (all rows without masks)."""
    mask = getattr(batch, "mask", None)
    return {m: batch[m] if mask is None else batch[m][mask[m]] for m in names}


def _quality_batches(vae: Any, train_ds: Any, test_part: Any, names: Sequence[str],
                     batch_size: int, device: torch.device, engine: str = "auto",
                     posterior: str = "mean") -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``(set, {modality: images})`` batches: test images (the reference), leave-one-out
    generations of every modality from all the others, training images, prior samples."""
    n = len(test_part)
    plan = [(tuple(s for s in vae.names if s != t), [t]) for t in names]
    for batch, _ in test_part.batches(batch_size, device=device):
        yield REFERENCE, _observed(batch, names)
        if len(vae.names) > 1:
            # generated images are needed here: the mixture engine's expectation is coherence's
            generated = cross_generate(vae, batch, plan, "cached" if engine == "mixture"
                                       else engine, posterior=posterior)
            mask = getattr(batch, "mask", None)
            out = {}
            for s, t in plan:
                x = generated[s, t[0]]
                if mask is not None:  # rows that observe every source
                    x = x[torch.stack([mask[m] for m in s]).all(0).to(x.device)]
                out[t[0]] = x
            yield "conditional_leave_one_out", out
    for batch, _ in head(train_ds, n).batches(batch_size, device=device):
        yield "train_vs_test", _observed(batch, names)
    for start in range(0, n, batch_size):
        samples = vae.sample(min(batch_size, n - start))
        yield "unconditional", {m: samples[m] for m in names}


def run_quality(vae: Any, train_ds: Any, test_ds: Any, classifiers: Any, settings: EvalSettings,
                device: torch.device) -> dict[str, Any]:
    """Classifier Fréchet distances (and Inception FID) of generations vs test images.

    Images are turned into features batch by batch (memory ~ features, not images).
    """
    names = [n for n in vae.names if n in classifiers.names
             and len(test_ds.event_shapes[n]) == 3
             and n not in (getattr(test_ds, "vocab_sizes", None) or {})]
    if not names:
        return {"skipped": "no image modality with a classifier; Fréchet distances need "
                           "images"}
    test_part = head(test_ds, settings.quality_points)
    extractors: dict[str, Any] = {
        "classifier": lambda m, x: classifiers.features(m, x).float().cpu()}
    inception = _inception_network(settings, device)
    if not isinstance(inception, str):
        extractors["inception"] = lambda m, x: inception_features(inception, x).float()
    features: dict[str, dict[str, dict[str, list[Tensor]]]] = {k: {} for k in extractors}
    steps = math.ceil(len(test_part) / settings.batch_size)
    steps *= 3 + (len(vae.names) > 1)
    with evaluation_mode(vae), progress_bar(steps, "quality", settings.progress,
                                            unit="batch") as bar:
        for label, images in _quality_batches(vae, train_ds, test_part, names,
                                              settings.batch_size, device, settings.engine,
                                              settings.posterior):
            bar.update()
            for key, extract in extractors.items():
                for m, x in images.items():
                    part = extract(m, x.float().clamp(0, 1))
                    features[key].setdefault(label, {}).setdefault(m, []).append(part)
    distances = {key: _distances(sets, names) for key, sets in features.items()}
    dim = features["classifier"][REFERENCE][names[0]][0].size(1)
    classifier = distances["classifier"]
    result: dict[str, Any] = {
        "classifier_frechet_distance": {
            **classifier,
            **{f"mean_{label}": _mean(values) for label, values in classifier.items()},
            "feature_space": "penultimate layer of the library's DigitClassifier for each "
                             f"modality ({dim}-d); not FID",
            "reference": "test images",
            "conditional": "decoder means of x_t from the posterior mean of q(z | all other "
                           "modalities)",
            "num_points": len(test_part),
        },
    }
    if isinstance(inception, str):
        result["inception_fid"] = {"skipped": inception}
    else:
        fid = distances["inception"]
        result["inception_fid"] = {
            **{k: v for k, v in fid.items() if k != "train_vs_test"},
            **{f"mean_{label}": _mean(values) for label, values in fid.items()
               if label != "train_vs_test"},
            "weights": str(settings.fid_weights), "num_points": len(test_part)}
    return result


def _distances(sets: Mapping[str, Mapping[str, list[Tensor]]], names: Sequence[str]
               ) -> dict[str, dict[str, float]]:
    """Fréchet distance of every set's features to the reference (test) features."""
    out: dict[str, dict[str, float]] = {label: {} for label in sets if label != REFERENCE}
    for m in names:
        candidates = {label: torch.cat(parts[m]) for label, parts in sets.items()
                      if label != REFERENCE and m in parts}
        for label, value in frechet_distances(torch.cat(sets[REFERENCE][m]),
                                              candidates).items():
            out[label][m] = value
    return out


def _inception_network(settings: EvalSettings, device: torch.device) -> Any:
    """The FID Inception network, or the reason why Inception FID is skipped (a str)."""
    if settings.fid_weights is None:
        return ("no FID Inception weights given (--fid-weights PATH to "
                "pt_inception-2015-12-05-6726825d.pth)")
    if not have_pytorch_fid():
        return "pytorch-fid is not installed (pip install 'pyro_mmvae[fid]')"
    return load_fid_inception(settings.fid_weights, device)


def run_likelihood(vae: Any, test_ds: Any, settings: EvalSettings, device: torch.device
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Importance-sampled log-likelihoods with every proposal (summary and raw results), or
    the reason they are skipped."""
    reason = supports_unstratified(vae)
    if reason is not None:
        return {"skipped": reason}, None
    subsets = likelihood_subsets(vae.names, settings.likelihood_subsets, settings.seed)
    masked = getattr(test_ds, "masks", None) is not None
    if masked:  # log p(X) needs every modality: the rows that observe all of them
        test_ds = test_ds.complete()
        if len(test_ds) == 0:
            return {"skipped": "no test row observes every modality"}, None
    try:
        raw = dataset_log_likelihood(
            vae, test_ds, subsets, num_samples=settings.num_samples,
            batch_size=settings.likelihood_batch_size, chunk_size=settings.chunk_size,
            max_points=settings.max_points, device=device, proposals=settings.proposal,
            progress=settings.progress, refine_steps=settings.refine_steps,
            annealed_temperatures=settings.annealed_temperatures,
            annealed_samples=settings.annealed_samples,
            annealed_leapfrog=settings.annealed_leapfrog,
            annealed_start=settings.annealed_start)
    except NotImplementedError as err:
        return {"skipped": f"{type(vae).__name__} cannot be importance-sampled: {err}"}, None
    summary = likelihood_summary(raw)
    if masked:
        summary["rows"] = "test rows that observe every modality"
    return summary, raw


def run_probe(vae: Any, train_ds: Any, test_ds: Any, settings: EvalSettings,
              device: torch.device) -> dict[str, Any]:
    """Linear-probe accuracy of the posterior means by number of inputs."""
    return latent_probe(vae, train_ds, test_ds, max_subsets_per_size=settings.probe_subsets,
                        max_train_points=settings.probe_train_points,
                        max_test_points=settings.probe_test_points,
                        batch_size=settings.batch_size, device=device, seed=settings.seed,
                        progress=settings.progress)


# ---------------------------------------------------------------------- figures
def draw_figures(vae: Any, test_ds: Any, results: dict[str, Any], raw_likelihood: Any,
                 out_dir: Path, classifiers: Any, device: torch.device) -> dict[str, Any]:
    """The evaluation PNGs (:data:`FIGURES`) in ``out_dir``; returns their paths."""
    from pyro_mmvae.metrics.plots import (
        save_coherence_plot,
        save_cross_generation_grid,
        save_pareto_k_histogram,
        save_unconditional_grid,
    )

    figures: dict[str, Any] = {}

    def attempt(key: str, draw: Any) -> None:
        try:
            figures[key] = str(draw(out_dir / FIGURES[key]))
        except ValueError as err:  # e.g. modalities that are not images
            figures[key] = {"skipped": str(err)}

    batch, labels = next(iter(test_ds.batches(GRID_EXAMPLES, device=device)))
    attempt("conditional_grid",
            lambda p: save_cross_generation_grid(vae, batch, p, num_examples=GRID_EXAMPLES,
                                                 labels=labels))
    attempt("unconditional_grid",
            lambda p: save_unconditional_grid(vae, p, num_samples=UNCONDITIONAL_EXAMPLES))
    coherence = results.get("coherence")
    if coherence:
        probe = (results.get("probe") or {}).get("by_subset_size")
        attempt("coherence", lambda p: save_coherence_plot(
            coherence["conditional"], p, unconditional=coherence["unconditional_coherence"],
            probe=probe, num_classes=classifiers.num_classes if classifiers else None))
    if raw_likelihood is not None:
        joint = raw_likelihood["joint"]
        proposals = raw_likelihood.get("proposals") or {}
        diagnostics = {f"log p(X), {name}": (r["joint"].pareto_k, r["joint"].ess,
                                             r["joint"].num_samples)
                       for name, r in proposals.items()} if len(proposals) > 1 else {
            "log p(X)": (joint.pareto_k, joint.ess, joint.num_samples)}
        for key, estimate in raw_likelihood["subsets"].items():
            diagnostics[f"log p({key})"] = (estimate.pareto_k, estimate.ess,
                                            estimate.num_samples)
        if joint.num_samples >= 25:
            attempt("pareto_k", lambda p: save_pareto_k_histogram(diagnostics, p))
    return figures
