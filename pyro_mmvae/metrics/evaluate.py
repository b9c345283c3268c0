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

:func:`evaluate_run` rebuilds a trained run from ``RUN_DIR/checkpoint.pt`` (refusing
non-finite parameters), holds the run's lock while it runs, keeps the results so far in
``eval.partial.json`` (atomically, after each metric), writes ``eval.json`` only once
complete, and the figures ``cross_generation.png`` (the grid training drew, redrawn),
``eval_unconditional_grid.png``, ``eval_coherence.png`` and ``eval_pareto_k.png`` to the run
folder or ``out_dir``, having checked first that it can write there. With
``progress=True`` each metric shows a progress bar on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
    run_clustering,
    run_coherence,
    run_likelihood,
    run_probe,
    run_quality,
    seeded,
)
from pyro_mmvae.models.base import check_posterior_point

#: The metric groups of :func:`evaluate_model`, in the order they run.
METRICS: tuple[str, ...] = ("coherence", "quality", "likelihood", "probe")
#: Metrics run only when named (not in the default selection): ``"clustering"``, NMI, ARI and
#: matched accuracy of a clustering model's clusters (e.g. CMVAE's) and of k-means on its
#: posterior means (:mod:`pyro_mmvae.metrics.clustering`).
OPTIONAL_METRICS: tuple[str, ...] = ("clustering",)
#: File name of the evaluation results written into the run folder (complete results only).
EVAL_NAME = "eval.json"
#: File name of the results so far while an evaluation runs (removed when it completes).
PARTIAL_NAME = "eval.partial.json"
#: Upper bounds of the sizes that set the work or memory per data point, checked by
#: :meth:`EvalSettings.check` before anything runs (the CLI's help states them). The point
#: counts (``max_points``, ``coherence_points``, ``quality_points``, probe points) need
#: none: a count above the dataset's size means all of it.
LIMITS: dict[str, int] = {
    # the log-weights of a likelihood batch of 64 points: 64 x K x 4 bytes (256 MB here),
    # and every proposal decodes K latents per point: K = 1000 is the usual figure
    "num_samples": 10**6,
    # chunk_size x likelihood_batch_size latents are decoded at once: at most 65536, 16x
    # the default of 4096 (about 3 GB of decoder outputs for five PolyMNIST modalities)
    "chunk_latents": 2**16,
    # AIS: chains x temperatures x leapfrog steps model gradients per point
    "annealed_temperatures": 10**4,
    "annealed_leapfrog": 100,
    "refine_steps": 10**4,
    "unconditional_samples": 10**6,
    "likelihood_batch_size": 2**12,
    "batch_size": 2**14,
}


__all__ = ["EVAL_NAME", "FIGURES", "LIMITS", "METRICS", "PARTIAL_NAME", "EvalSettings",
           "check_finite_parameters", "evaluate_model", "evaluate_run", "parse_metrics"]


@dataclass
class EvalSettings:
    """How much work each metric does; ``None`` means "all of it".

    Every bound is checked by :meth:`check` (>= 1 where it is a count, at most
    :data:`LIMITS` where one is set).

    Attributes:
        num_samples: K, importance samples per data point for the likelihoods (default 1000).
        max_points: test points for the likelihoods (the first ones; each is estimated
            with every chosen proposal; default 100).
        chunk_size: particles decoded at once (default ``None``: 4096 latents per chunk).
        likelihood_batch_size: data points per likelihood batch (default 64).
        likelihood_subsets: source subsets S per size 1..M−1 for which log p(X_S) and
            log p(X_rest | X_S) are estimated (default 0: the joint only).
        coherence_points: test points for conditional coherence (default ``None``: all).
        coherence_subsets: source subsets per size for conditional coherence (default
            ``None``: all).
        quality_points: test images (and as many generated ones) per Fréchet distance
            (default 10000).
        unconditional_samples: prior samples for unconditional coherence (default ``None``:
            as many as ``quality_points``, at most the test set's size).
        probe_subsets: source subsets per size for the latent probe (default 3).
        probe_train_points: training points the probe is fitted on (default 3000).
        probe_test_points: test points the probe is scored on (default 2000).
        fid_weights: path of the FID Inception weights file (enables Inception FID; default
            ``None``: no Inception FID).
        batch_size: batch size of coherence, generation and feature extraction (default 256).
        seed: seed of every random choice (restored afterwards; default 0).
        proposal: importance proposals for the likelihoods: ``"model"``, ``"mixture"``,
            ``"refined"``, ``"annealed"`` or ``"all"`` (the first three; the default), or
            several comma-separated (``"all,annealed"``); the best by k-hat is reported on
            top (see :mod:`pyro_mmvae.metrics.likelihood`).
        refine_steps: gradient steps of the ``"refined"`` proposal per batch (default 50).
        annealed_temperatures: T of the ``"annealed"`` proposal (AIS; opt-in, not in
            ``"all"``: name it, e.g. ``"all,annealed"``; default 100).
        annealed_samples: AIS chains per data point (at most ``num_samples``; default 50).
        annealed_leapfrog: leapfrog steps per HMC transition of AIS (default 1: MALA).
        annealed_start: the proposal AIS starts from (``"refined"``, the default,
            ``"model"`` or ``"mixture"``).
        engine: cross-generation engine of coherence and quality (``"auto"``, the default:
            each batch encoded once, subset posteriors from cached experts, and for mixture
            posteriors coherence as the expectation over the drawn expert, see
            :func:`~pyro_mmvae.metrics.coherence.conditional_coherence`; ``"cached"``: one
            expert drawn per row as generation does; ``"generate"``: one ``vae.generate``
            call per subset; ``"mixture"``: the expectation, an error for other models).
        posterior: the point of :math:`q(z|X_S)` that conditional generation decodes in
            coherence and quality: ``"mean"`` (default) or ``"sample"``, one draw per data
            point (MultiVae's coherence).
        progress: progress bars on stderr (default False).
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
        for name in ("num_samples", "annealed_temperatures", "annealed_leapfrog",
                     "refine_steps", "unconditional_samples", "likelihood_batch_size",
                     "batch_size"):
            value = getattr(self, name)
            if value is not None and value > LIMITS[name]:
                raise ValueError(f"{name} must be at most {LIMITS[name]:,} (a bound on memory "
                                 f"and time, see pyro_mmvae.metrics.evaluate.LIMITS), got "
                                 f"{value:,}")
        most_chunk = LIMITS["chunk_latents"] // self.likelihood_batch_size
        if self.chunk_size is not None and self.chunk_size > most_chunk:
            raise ValueError(
                f"chunk_size must be at most {most_chunk:,} with likelihood_batch_size "
                f"{self.likelihood_batch_size} (at most {LIMITS['chunk_latents']:,} latents "
                f"decoded at once), got {self.chunk_size:,}")
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
    """``"coherence,likelihood"`` or a list -> validated tuple (None: every metric).

    Args:
        metrics: names of :data:`METRICS`, comma-separated or as a sequence (blanks
            ignored, duplicates dropped); ``None``: all of them.

    Raises:
        ValueError: for an unknown name or an empty selection.
    """
    if metrics is None:
        return METRICS
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else \
        [str(m).strip() for m in metrics]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS + OPTIONAL_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from "
                         f"{', '.join(METRICS + OPTIONAL_METRICS)} (comma-separated)")
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

    Args:
        vae: the trained model (a :mod:`pyro_mmvae.models` VAE or an object with the same
            methods).
        train_ds: the training dataset (classifiers, probes, the real-image floor of quality).
        test_ds: the test dataset every metric is measured on; not empty.
        metrics: the metric groups, as in :func:`parse_metrics` (``None``: all).
        settings: the bounds of each metric (``None``: :class:`EvalSettings` defaults).
        device: where to run the model and classifiers (default ``"cpu"``).
        classifiers: per-modality classifiers (``None``: the cached ones of
            :func:`~pyro_mmvae.metrics.classifiers.get_classifiers`, trained on first use).
        out_dir: folder for the figures (``None``, the default: no figures).
        on_result: called with the JSON-ready results so far after each metric (``None``:
            not called).
        **overrides: fields of :class:`EvalSettings` replacing those of ``settings``.
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
        supported = getattr(vae, "evaluation_metrics", None)  # None: every metric applies
        for name in chosen:
            start = time.perf_counter()
            if supported is not None and name not in supported:
                results[name] = {"skipped": f"not applicable to {type(vae).__name__}, which "
                                            f"supports {', '.join(supported)}"}
            elif unlabelled and name in ("coherence", "quality", "probe", "clustering"):
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
            elif name == "clustering":
                results[name] = run_clustering(vae, test_ds, settings, device)
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
    """Rebuild the trained model of a run folder and load its datasets, having refused a
    checkpoint with non-finite parameters (:func:`check_finite_parameters`) first."""
    from pyro_mmvae.runs import RunFolder, load_run

    folder = RunFolder(run_dir)
    check_finite_parameters(folder.load_checkpoint(), folder.checkpoint_path)
    run = load_run(run_dir, device, data_root)
    return run.vae, run.train_ds, run.test_ds, run.state


def check_finite_parameters(state: dict[str, Any], path: str | Path = "checkpoint.pt") -> None:
    """Raise :class:`~pyro_mmvae.checkpoint.CheckpointError` naming the first parameter (or
    buffer, or extra ``pyro.param``) of a checkpoint that holds NaN or infinite values: a
    diverged model has nothing to evaluate, and evaluating it would only spread NaN.

    Args:
        state: the checkpoint dict (its ``vae_state`` and ``extra_params`` are checked).
        path: the checkpoint's path, for the message (default ``"checkpoint.pt"``).
    """
    from pyro_mmvae.checkpoint import CheckpointError

    tensors = {**dict(state.get("vae_state") or {}), **dict(state.get("extra_params") or {})}
    bad = [(name, value) for name, value in tensors.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point()
           and not bool(torch.isfinite(value).all())]
    if not bad:
        return
    name, value = bad[0]
    nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
    counts = ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
    others = f" (and {len(bad) - 1} other tensors)" if len(bad) > 1 else ""
    raise CheckpointError(
        f"checkpoint {path} (epoch {state.get('epoch')}) holds non-finite values in parameter "
        f"{name!r}: {counts} of {value.numel()}{others}; the model diverged and cannot be "
        "evaluated: train again (e.g. with a lower --lr or --clip-grad)")


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


@contextlib.contextmanager
def _locked(run_dir: Path, folder: Path, break_stale: bool) -> Iterator[None]:
    """Hold the run lock (:class:`~pyro_mmvae.lock.RunLock`, the one training takes) of
    ``run_dir`` and, when the results go elsewhere, of the output folder: a second
    evaluation, or a training, of the same run is refused at once instead of overwriting
    ``eval.json`` or changing the checkpoint under the evaluation. A run folder that is not
    writable (results written elsewhere) cannot be trained into by us either: it is read
    without its lock."""
    from pyro_mmvae.lock import RunLock, RunLockedError, StaleRunLockError

    folders = [run_dir] if folder.resolve() == run_dir.resolve() else [run_dir, folder]
    with contextlib.ExitStack() as stack:
        for path in folders:
            lock = RunLock(path, break_stale=break_stale)
            try:
                stack.enter_context(lock)
            except StaleRunLockError:
                raise
            except RunLockedError as error:
                owner = error.owner
                if not owner.get("pid"):  # no readable owner: the lock's own message
                    raise
                what = "run folder" if path == run_dir else "output folder"
                raise RunLockedError(
                    f"cannot evaluate: the {what} {path} is locked by PID "
                    f"{owner.get('pid', '?')} on host {owner.get('host', '?')!r}"
                    + (f" running {owner['command']!r}" if owner.get("command") else "")
                    + "; wait for it to finish", owner) from None
            except PermissionError:
                if path != run_dir or len(folders) == 1:
                    raise
        yield


def evaluate_run(
    run_dir: str | Path,
    metrics: str | Sequence[str] | None = None,
    num_samples: int = 1000,
    device: str = "auto",
    data_root: str | None = None,
    settings: EvalSettings | None = None,
    write: bool = True,
    out_dir: str | Path | None = None,
    break_lock: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate the model trained in ``run_dir`` and write ``eval.json`` + figures.

    The model is rebuilt as the trainer built it (model name, preset and overrides stored
    in ``checkpoint.pt``) and its parameters loaded; the datasets come from the checkpoint's
    dataset name and data root (``data_root`` or ``$PYRO_MMVAE_DATA_ROOT`` override it).
    A checkpoint with non-finite parameters is refused (:func:`check_finite_parameters`).
    ``num_samples`` is K for the likelihoods; other bounds are fields of
    :class:`EvalSettings`, given as ``settings`` or keyword ``overrides``, checked against
    :data:`LIMITS` before anything runs.

    Files go to ``out_dir`` (default: ``run_dir``), which must be writable: that is checked
    before anything is computed. While it runs, the evaluation holds the run folder's lock
    (and the output folder's), as training does: a second evaluation or a training of the
    same run fails at once with :class:`~pyro_mmvae.lock.RunLockedError` naming the owner
    (``break_lock`` replaces a lock left by a killed process). The results so far are
    rewritten atomically to ``eval.partial.json`` as each metric is done (``"complete":
    false``), so an interrupted evaluation keeps what it finished; ``eval.json`` is replaced
    (atomically) only by a complete result, so a killed evaluation never destroys the
    previous one. ``write=False`` writes nothing and takes no lock.

    Args:
        run_dir: the run folder (the ``--out`` of ``pyro-mmvae train``).
        metrics: the metric groups, as in :func:`parse_metrics` (``None``: all).
        num_samples: K, importance samples per data point for the likelihoods (default 1000;
            overrides ``settings.num_samples``).
        device: ``"auto"`` (default: CUDA when available, else CPU), ``"cpu"``, ``"cuda"``
            or ``"cuda:N"``.
        data_root: folder of the datasets, overriding the one the run was trained with
            (``None``: the run's, else ``$PYRO_MMVAE_DATA_ROOT``, else the dataset's default).
        settings: the bounds of each metric (``None``: :class:`EvalSettings` defaults).
        write: write ``eval.json``, the partial results and the figures, under the run lock
            (default True).
        out_dir: where the files go (``None``, the default: ``run_dir``).
        break_lock: replace a stale lock left by a killed process (default False).
        **overrides: fields of :class:`EvalSettings` replacing those of ``settings``.
    """
    from pyro_mmvae.checkpoint import save_json
    from pyro_mmvae.engine.device import resolve_device

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
    if not write:
        return _evaluate_run(run_dir, folder, chosen, settings, torch_device, data_root, None)
    _check_writable(folder)
    with _locked(run_dir, folder, break_lock):
        partial_path = folder / PARTIAL_NAME

        def save_partial(partial: dict[str, Any]) -> None:
            save_json(partial_path, partial)

        results = _evaluate_run(run_dir, folder, chosen, settings, torch_device, data_root,
                                save_partial)
        save_json(folder / EVAL_NAME, results)
        try:
            partial_path.unlink()
        except FileNotFoundError:
            pass
    return results


def _evaluate_run(run_dir: Path, folder: Path, chosen: tuple[str, ...], settings: EvalSettings,
                  torch_device: torch.device, data_root: str | None,
                  save_partial: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """:func:`evaluate_run` once the folders are checked (and locked): the results, with
    ``save_partial`` called with the results so far (``"complete": false``)."""
    from pyro_mmvae import __version__
    from pyro_mmvae.engine.device import describe_device

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

    def report(partial: dict[str, Any]) -> None:
        if save_partial is not None:
            save_partial({**header, "complete": False, **partial})

    results = evaluate_model(vae, train_ds, test_ds, chosen, settings, torch_device,
                             out_dir=folder if save_partial is not None else None,
                             on_result=report if save_partial is not None else None)
    header["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    header["total_seconds"] = round(time.perf_counter() - start, 2)
    return {**header, "complete": True, **results}
