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

#: The PNG files of an evaluation, by figure. The cross-generation grid has the name of the
#: one ``pyro-mmvae train`` draws (``metrics.quick.GRID_NAME``): evaluating redraws that
#: figure (with its own ``posterior`` point) rather than writing a second copy of it.
FIGURES = {
    "conditional_grid": "cross_generation.png",
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
    """Seed torch, NumPy and Python's RNG in the block; restore the caller's states after.

    Args:
        seed: the seed (``pyro.set_rng_seed``: torch on every CUDA device, NumPy, Python).
    """
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


def _mean(values: Mapping[str, float | None]) -> float | None:
    """The mean, or None (not measurable) when a value is not measurable or there is none."""
    listed = list(values.values())
    if not listed or any(v is None or not math.isfinite(v) for v in listed):
        return None
    return float(np.mean(listed))


def record_seconds(results: dict[str, Any], name: str, start: float) -> None:
    """``results["seconds"][name]``: the seconds since ``start``.

    Args:
        results: the results dict, updated in place (``"seconds"`` created if missing).
        name: the metric (or ``"figures"``) the time is recorded for.
        start: a :func:`time.perf_counter` reading taken when it began.
    """
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)


# ---------------------------------------------------------------------- metrics
def run_coherence(vae: Any, test_ds: Any, classifiers: Any, settings: EvalSettings,
                  device: torch.device) -> dict[str, Any]:
    """Conditional coherence for every subset size and unconditional coherence.

    Args:
        vae: the trained model.
        test_ds: the labelled test dataset (its first ``settings.coherence_points`` points).
        classifiers: the per-modality :class:`~pyro_mmvae.metrics.classifiers.ModalityClassifiers`.
        settings: the :class:`~pyro_mmvae.metrics.evaluate.EvalSettings` bounding the work.
        device: where to run the model.

    Returns:
        The ``"coherence"`` entry of the results (JSON-ready apart from tensors).
    """
    data = head(test_ds, settings.coherence_points)
    conditional = conditional_coherence(
        vae, data, classifiers, subset_sizes=None, batch_size=settings.batch_size,
        device=device, max_subsets_per_size=settings.coherence_subsets,
        engine=settings.engine, progress=settings.progress, posterior=settings.posterior)
    num = settings.unconditional_samples or min(len(test_ds), settings.quality_points
                                                or len(test_ds))
    try:
        unconditional = unconditional_coherence(vae, classifiers, num_samples=num,
                                                batch_size=settings.batch_size,
                                                progress=settings.progress)
    except NotImplementedError as err:  # a model with no prior to sample (conditional VAE)
        unconditional = {"coherence": None, "note": f"not applicable: {err}"}
    accuracy = dict(classifiers.test_accuracy)
    unconditional["classifier_accuracy"] = accuracy
    notes = [part["note"] for part in (conditional, unconditional) if part.get("note")]
    return {
        **({"note": notes[0]} if notes else {}),
        "conditional": conditional,
        "by_subset_size": conditional["by_subset_size"],
        "by_subset_size_class_average": conditional["by_subset_size_class_average"],
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

    Args:
        vae: the trained model.
        train_ds: the training dataset (its images give the train-vs-test floor).
        test_ds: the labelled test dataset, the reference (first ``settings.quality_points``).
        classifiers: the per-modality :class:`~pyro_mmvae.metrics.classifiers.ModalityClassifiers`
            whose features define the distance.
        settings: the :class:`~pyro_mmvae.metrics.evaluate.EvalSettings` bounding the work.
        device: where to run the model.

    Returns:
        The ``"quality"`` entry of the results, or ``{"skipped": reason}`` without an image
        modality.
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
    notes = {key: distances[key].pop(NOTES) for key in distances}
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
            **({"not_measurable": notes["classifier"]} if notes["classifier"] else {}),
        },
    }
    if notes["classifier"]:
        result["note"] = next(iter(notes["classifier"].values()))
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


NOTES = "not_measurable"  # the key of _distances' reasons


def _distances(sets: Mapping[str, Mapping[str, list[Tensor]]], names: Sequence[str]
               ) -> dict[str, Any]:
    """Fréchet distance of every set's features to the reference (test) features.

    A distance needs two feature vectors on each side; one without them (a modality absent
    from every test row, or no row observing every other modality for the leave-one-out
    generation) is ``None``, and ``out[NOTES]`` (``{"set/modality": reason}``) says why.
    """
    out: dict[str, Any] = {label: {} for label in sets if label != REFERENCE}
    notes: dict[str, str] = {}
    for m in names:
        reference = torch.cat(sets[REFERENCE][m])
        candidates = {label: torch.cat(parts[m]) for label, parts in sets.items()
                      if label != REFERENCE and m in parts}
        short = {label: x for label, x in candidates.items() if len(x) < 2}
        for label, x in short.items():
            notes[f"{label}/{m}"] = (f"not measurable: {len(x)} {label} images of {m}; a "
                                     "Fréchet distance needs at least 2")
        if len(reference) < 2:
            short = candidates
            why = (f"modality {m} is absent in every test row evaluated" if not len(reference)
                   else f"modality {m} is observed in only 1 test row evaluated")
            for label in candidates:
                notes[f"{label}/{m}"] = f"not measurable: {why}"
        for label in short:
            out[label][m] = None
        kept = {label: x for label, x in candidates.items() if label not in short}
        if kept:
            for label, value in frechet_distances(reference, kept).items():
                out[label][m] = value
    out[NOTES] = notes
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
    the reason they are skipped.

    Args:
        vae: the trained model; its programs must accept ``stratify=False``.
        test_ds: the test dataset (with masks: only the rows that observe every modality).
        settings: the :class:`~pyro_mmvae.metrics.evaluate.EvalSettings` bounding the work.
        device: where to run the model.

    Returns:
        ``(summary, raw)``: :func:`~pyro_mmvae.metrics.likelihood.likelihood_summary` of the
        results and the :func:`~pyro_mmvae.metrics.likelihood.dataset_log_likelihood` dict,
        or ``({"skipped": reason}, None)``.
    """
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
    """Linear-probe accuracy of the posterior means by number of inputs.

    Args:
        vae: the trained model.
        train_ds: the labelled dataset the probes are fitted on.
        test_ds: the labelled dataset they are scored on.
        settings: the :class:`~pyro_mmvae.metrics.evaluate.EvalSettings` bounding the work.
        device: where to run the model.

    Returns:
        The result of :func:`~pyro_mmvae.metrics.probe.latent_probe`.
    """
    return latent_probe(vae, train_ds, test_ds, max_subsets_per_size=settings.probe_subsets,
                        max_train_points=settings.probe_train_points,
                        max_test_points=settings.probe_test_points,
                        batch_size=settings.batch_size, device=device, seed=settings.seed,
                        progress=settings.progress)


def run_clustering(vae: Any, test_ds: Any, settings: EvalSettings, device: torch.device
                   ) -> dict[str, Any]:
    """NMI/ARI/accuracy of the model's clusters and of k-means on its posterior means, or
    the reason they are skipped (a model without ``cluster_posterior``).

    Args:
        vae: the trained model (e.g. CMVAE).
        test_ds: the labelled test dataset (its first ``settings.probe_test_points`` rows).
        settings: the :class:`~pyro_mmvae.metrics.evaluate.EvalSettings` bounding the work.
        device: where to run the model.

    Returns:
        :func:`~pyro_mmvae.metrics.clustering.evaluate_clustering`'s result, or
        ``{"skipped": reason}``.
    """
    from pyro_mmvae.metrics.clustering import evaluate_clustering, supports_clustering

    reason = supports_clustering(vae)
    if reason is not None:
        return {"skipped": reason}
    return evaluate_clustering(vae, test_ds, batch_size=settings.batch_size, device=device,
                               max_points=settings.probe_test_points, seed=settings.seed)


# ---------------------------------------------------------------------- figures
def draw_figures(vae: Any, test_ds: Any, results: dict[str, Any], raw_likelihood: Any,
                 out_dir: Path, classifiers: Any, device: torch.device) -> dict[str, Any]:
    """The evaluation PNGs (:data:`FIGURES`) in ``out_dir``; returns their paths.

    Args:
        vae: the trained model.
        test_ds: the test dataset (its first 8 points fill the cross-generation grid).
        results: the results so far (its ``"coherence"`` and ``"probe"`` entries are plotted).
        raw_likelihood: the raw
            :func:`~pyro_mmvae.metrics.likelihood.dataset_log_likelihood` dict for the
            PSIS k-hat histogram, or ``None`` (no histogram).
        out_dir: the folder the PNGs are written to.
        classifiers: the classifiers (their ``num_classes`` sets the chance line), or
            ``None``.
        device: where to run the model.

    Returns:
        Figure key -> path written, or ``{"skipped": reason}`` for a figure that cannot be
        drawn (e.g. modalities that are not images).
    """
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
        except (ValueError, NotImplementedError) as err:  # not images; no prior samples
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
