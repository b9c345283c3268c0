r"""The evaluation suite: coherence, generative quality, likelihoods, latent probes, figures.

:func:`evaluate_model` runs the chosen metrics on any multimodal VAE of the library (or an
object with the same methods: ``names``, ``generate``, ``sample``, ``model``/``guide``):

* ``"coherence"``: conditional coherence for every source-subset size 1..M−1, with the
  single-source matrix and leave-one-out figures, and unconditional coherence with its
  class histogram and sample diversity (:mod:`pyro_mmvae.metrics.coherence`); the
  classifiers' own test accuracy is reported beside each figure.
* ``"quality"``: classifier Fréchet distance per modality, for prior samples and for
  leave-one-out conditional generations, against test images, with the train-vs-test
  distance of real images as a floor (:mod:`pyro_mmvae.metrics.frechet`); Inception FID
  when ``fid_weights`` names the FID Inception weights file.
* ``"likelihood"``: importance-sampled :math:`\log p(X)`, :math:`\log p(X_S)` and
  :math:`\log p(X_{\bar S} \mid X_S)` per data point with PSIS :math:`\hat k` and ESS, for
  each chosen proposal (the model's q, a defensive mixture, a refined per-point Normal;
  opt-in, annealed importance sampling from the refined one), the
  best by :math:`\hat k` on top and a warning when :math:`\hat k > 0.7` for more than 10 %
  of the points (:mod:`pyro_mmvae.metrics.likelihood`).
* ``"probe"``: linear-probe accuracy of the label from :math:`E[z \mid X_S]` by :math:`|S|`
  (:mod:`pyro_mmvae.metrics.probe`).

:func:`evaluate_run` rebuilds a trained run from ``RUN_DIR/checkpoint.pt`` and writes
``eval.json`` (atomically, after each metric) and the figures ``eval_conditional_grid.png``,
``eval_unconditional_grid.png``, ``eval_coherence.png`` and ``eval_pareto_k.png`` to the run
folder or ``out_dir``, having checked first that it can write there. With
``progress=True`` each metric shows a progress bar on stderr.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_mmvae.engine.networks import check_precision, network_precision, warn_if_emulated
from pyro_mmvae.jsonutil import jsonable
from pyro_mmvae.metrics.coherence import (
    ENGINES,
)
from pyro_mmvae.metrics.likelihood import (
    CHEAP_PROPOSALS,
    parse_proposals,
)
from pyro_mmvae.metrics.suite import (
    FIGURES,
    draw_figures,
    record_seconds,
    run_coherence,
    run_likelihood,
    run_probe,
    run_quality,
    seeded,
)
from pyro_mmvae.models.base import check_posterior_point

#: The metric groups of :func:`evaluate_model`, in the order they run.
METRICS: tuple[str, ...] = ("coherence", "quality", "likelihood", "probe")
#: File name of the evaluation results written into the run folder.
EVAL_NAME = "eval.json"
#: File names of the figures written into the run folder, by figure.


__all__ = ["EVAL_NAME", "FIGURES", "METRICS", "EvalSettings", "evaluate_model", "evaluate_run",
           "parse_metrics"]


@dataclass
class EvalSettings:
    """How much work each metric does; ``None`` means "all of it".

    :param num_samples: K, importance samples per data point for the likelihoods.
    :param max_points: test points for the likelihoods (the first ones; each is estimated
        with every chosen proposal).
    :param chunk_size: particles decoded at once (default: 4096 latents per chunk).
    :param likelihood_batch_size: data points per likelihood batch.
    :param likelihood_subsets: source subsets S per size 1..M−1 for which log p(X_S) and
        log p(X_rest | X_S) are estimated (0: the joint only).
    :param coherence_points: test points for conditional coherence.
    :param coherence_subsets: source subsets per size for conditional coherence.
    :param quality_points: test images (and as many generated ones) per Fréchet distance.
    :param unconditional_samples: prior samples for unconditional coherence (default: as
        many as ``quality_points``, at most the test set's size).
    :param probe_subsets: source subsets per size for the latent probe.
    :param probe_train_points: training points the probe is fitted on.
    :param probe_test_points: test points the probe is scored on.
    :param fid_weights: path of the FID Inception weights file (enables Inception FID).
    :param batch_size: batch size of coherence, generation and feature extraction.
    :param seed: seed of every random choice (restored afterwards).
    :param proposal: importance proposals for the likelihoods: ``"model"``, ``"mixture"``,
        ``"refined"``, ``"annealed"`` or ``"all"`` (the first three), or several
        comma-separated (``"all,annealed"``); the best by k-hat is reported on top (see
        :mod:`pyro_mmvae.metrics.likelihood`).
    :param refine_steps: gradient steps of the ``"refined"`` proposal per batch.
    :param annealed_temperatures: T of the ``"annealed"`` proposal (AIS; opt-in, not in
        ``"all"``: name it, e.g. ``"all,annealed"``).
    :param annealed_samples: AIS chains per data point (at most ``num_samples``).
    :param annealed_leapfrog: leapfrog steps per HMC transition of AIS (1: MALA).
    :param annealed_start: the proposal AIS starts from (``"refined"``, ``"model"``,
        ``"mixture"``).
    :param engine: cross-generation engine of coherence and quality (``"auto"``: each
        batch encoded once, subset posteriors from cached experts, and for mixture posteriors
        coherence as the expectation over the drawn expert, see
        :func:`~pyro_mmvae.metrics.coherence.conditional_coherence`; ``"cached"``: one
        expert drawn per row as generation does; ``"generate"``: one ``vae.generate`` call
        per subset; ``"mixture"``: the expectation, an error for other models).
    :param posterior: the point of :math:`q(z|X_S)` that conditional generation decodes in
        coherence and quality: ``"mean"`` (default) or ``"sample"``, one draw per data point
        (MultiVae's coherence).
    :param progress: progress bars on stderr.
    """

    num_samples: int = 1000
    max_points: int | None = 100
    chunk_size: int | None = None
    likelihood_batch_size: int = 64
    likelihood_subsets: int = 0
    coherence_points: int | None = None
    coherence_subsets: int | None = None
    quality_points: int | None = 10000
    unconditional_samples: int | None = None
    probe_subsets: int = 3
    probe_train_points: int = 3000
    probe_test_points: int = 2000
    fid_weights: str | None = None
    batch_size: int = 256
    seed: int = 0
    proposal: str = "all"
    refine_steps: int = 50
    annealed_temperatures: int = 100
    annealed_samples: int = 50
    annealed_leapfrog: int = 1
    annealed_start: str = "refined"
    engine: str = "auto"
    posterior: str = "mean"
    #: Precision of the model's networks (encoders, decoders) in coherence and quality:
    #: ``"32"``, ``"bf16"`` or ``"16"`` autocast (:func:`pyro_mmvae.engine.network_precision`,
    #: outputs cast back to fp32); likelihoods and probes always run them in fp32.
    precision: str = "32"
    progress: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("num_samples", "likelihood_batch_size", "probe_subsets",
                     "probe_train_points", "probe_test_points", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_points", "chunk_size", "coherence_points", "coherence_subsets",
                     "quality_points", "unconditional_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for all), got {value}")
        if self.likelihood_subsets < 0:
            raise ValueError(f"likelihood_subsets must be >= 0, got {self.likelihood_subsets}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        for name in ("annealed_temperatures", "annealed_samples", "annealed_leapfrog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.annealed_start not in CHEAP_PROPOSALS:
            raise ValueError(f"annealed_start must be one of {', '.join(CHEAP_PROPOSALS)}, "
                             f"got {self.annealed_start!r}")
        parse_proposals(self.proposal)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        check_posterior_point(self.posterior)
        self.precision = check_precision(self.precision)


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"coherence,likelihood"`` or a list -> validated tuple (None: every metric)."""
    if metrics is None:
        return METRICS
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else \
        [str(m).strip() for m in metrics]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from "
                         f"{', '.join(METRICS)} (comma-separated)")
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------- entry points
def evaluate_model(
    vae: Any,
    train_ds: Any,
    test_ds: Any,
    metrics: str | Sequence[str] | None = None,
    settings: EvalSettings | None = None,
    device: torch.device | str = "cpu",
    classifiers: Any | None = None,
    out_dir: str | Path | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run ``metrics`` (default: all of :data:`METRICS`) on a trained multimodal VAE.

    ``settings`` (or keyword ``overrides`` of its fields) bound the work of each metric.
    ``classifiers`` default to the library's cached per-modality classifiers for these
    datasets (:func:`~pyro_mmvae.metrics.get_classifiers`; trained on first use). With
    ``out_dir`` the figures are written there. Returns a JSON-ready dict: one entry per
    metric, ``settings``, ``seconds`` per metric and ``figures``. A metric the model cannot
    support (e.g. likelihoods of a guide without ``stratify=False``) is reported as
    ``{"skipped": reason}``. ``on_result`` is called with the JSON-ready results so far
    each time a metric (and the figures) is done, e.g. to save them as they come.
    """
    settings = dataclasses.replace(settings or EvalSettings(), **overrides)
    settings.check()
    chosen = parse_metrics(metrics)
    device = torch.device(device)
    if len(test_ds) == 0:
        raise ValueError("the test dataset is empty; nothing to evaluate")
    unlabelled = not getattr(test_ds, "has_labels", True)
    needs_classifiers = {"coherence", "quality"} & set(chosen) and not unlabelled
    if classifiers is None and needs_classifiers:
        from pyro_mmvae.metrics.classifiers import get_classifiers

        _say(settings, "digit classifiers: loading them from the cache (trained on first use)")
        classifiers = get_classifiers(train_ds, test_ds, device=device)
    results: dict[str, Any] = {"metrics": list(chosen), "settings": dataclasses.asdict(settings)}
    if classifiers is not None:
        results["classifiers"] = {"test_accuracy": dict(classifiers.test_accuracy),
                                  "info": dict(classifiers.info)}
    raw_likelihood = None
    if {"coherence", "quality"} & set(chosen):
        warn_if_emulated(settings.precision, device)
    with seeded(settings.seed):
        for name in chosen:
            start = time.perf_counter()
            if unlabelled and name in ("coherence", "quality", "probe"):
                results[name] = {"skipped": "the dataset has no labels (labels.npy): "
                                            "coherence, quality and probes need classes"}
            elif name == "coherence":
                with network_precision(settings.precision, device):
                    results[name] = run_coherence(vae, test_ds, classifiers, settings, device)
            elif name == "quality":
                with network_precision(settings.precision, device):
                    results[name] = run_quality(vae, train_ds, test_ds, classifiers, settings,
                                                device)
            elif name == "likelihood":
                results[name], raw_likelihood = run_likelihood(vae, test_ds, settings, device)
            elif name == "probe":
                results[name] = run_probe(vae, train_ds, test_ds, settings, device)
            record_seconds(results, name, start)
            _say(settings, f"{name}: done in {results['seconds'][name]} s")
            _report(results, on_result)
        if out_dir is not None:
            start = time.perf_counter()
            results["figures"] = draw_figures(vae, test_ds, results, raw_likelihood,
                                          Path(out_dir), classifiers, device)
            record_seconds(results, "figures", start)
            _report(results, on_result)
    return jsonable(results)


def _report(results: dict[str, Any], on_result: Callable[[dict[str, Any]], None] | None
            ) -> None:
    if on_result is not None:
        on_result(jsonable(results))


def _say(settings: EvalSettings, message: str) -> None:
    """A status line on stderr while progress is shown."""
    if settings.progress:
        print(message, file=sys.stderr, flush=True)


def _load_run(run_dir: Path, device: torch.device, data_root: str | None
              ) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Rebuild the trained model of a run folder and load its datasets."""
    from pyro_mmvae.runs import load_run

    run = load_run(run_dir, device, data_root)
    return run.vae, run.train_ds, run.test_ds, run.state


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written there, before any
    computation (PermissionError naming the folder otherwise)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".eval-write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"cannot write the evaluation to {folder} ({err.strerror or err}); pass --out DIR "
            "(out_dir=...) to write eval.json and the figures elsewhere") from err


def evaluate_run(
    run_dir: str | Path,
    metrics: str | Sequence[str] | None = None,
    num_samples: int = 1000,
    device: str = "auto",
    data_root: str | None = None,
    settings: EvalSettings | None = None,
    write: bool = True,
    out_dir: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate the model trained in ``run_dir`` and write ``eval.json`` + figures.

    The model is rebuilt as the trainer built it (model name, preset and overrides stored
    in ``checkpoint.pt``) and its parameters loaded; the datasets come from the checkpoint's
    dataset name and data root (``data_root`` or ``$PYRO_MMVAE_DATA_ROOT`` override it).
    ``num_samples`` is K for the likelihoods; other bounds are fields of
    :class:`EvalSettings`, given as ``settings`` or keyword ``overrides``.

    Files go to ``out_dir`` (default: ``run_dir``), which must be writable: that is checked
    before anything is computed. ``eval.json`` is rewritten atomically as each metric is
    done (``"complete": false`` until the end), so an interrupted evaluation keeps what it
    finished. ``write=False`` writes nothing.
    """
    from pyro_mmvae import __version__
    from pyro_mmvae.checkpoint import save_json
    from pyro_mmvae.engine.device import describe_device, resolve_device

    run_dir = Path(run_dir)
    folder = Path(out_dir) if out_dir is not None else run_dir
    chosen = parse_metrics(metrics)
    settings = dataclasses.replace(settings or EvalSettings(), num_samples=num_samples,
                                   **overrides)
    settings.check()
    torch_device = resolve_device(device)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}; pass the --out folder of a "
                                "`pyro-mmvae train` run")
    if write:
        _check_writable(folder)
    start = time.perf_counter()
    _say(settings, f"loading the run in {run_dir}")
    vae, train_ds, test_ds, state = _load_run(run_dir, torch_device, data_root)
    header = {
        "run_dir": str(run_dir),
        "model": state["model"],
        "dataset": state["dataset"],
        "preset": state.get("preset"),
        "epoch": state.get("epoch"),
        "test_points": len(test_ds),
        "device": str(torch_device),
        "machine": describe_device(torch_device),
        "library_version": __version__,
    }

    def save_partial(partial: dict[str, Any]) -> None:
        save_json(folder / EVAL_NAME, {**header, "complete": False, **partial})

    results = evaluate_model(vae, train_ds, test_ds, chosen, settings, torch_device,
                             out_dir=folder if write else None,
                             on_result=save_partial if write else None)
    header["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    header["total_seconds"] = round(time.perf_counter() - start, 2)
    results = {**header, "complete": True, **results}
    if write:
        save_json(folder / EVAL_NAME, results)
    return results
