"""Command line: ``pyro-mmvae train``, ``evaluate``, ``make-polymnist`` and ``make-captions``.

``pyro-mmvae`` with no arguments trains the default model (MMVAE) on the offline
``polymnist-mini`` dataset into ``./runs/``. Heavy modules (torch, pyro, the model zoo) are
imported inside the commands, so ``pyro-mmvae --help`` answers at once.

Mistakes a user can fix (bad settings, missing files, a checkpoint that does not fit) print
``error: <message>`` and exit with status 2; a training run that diverges (NaN loss) exits
with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pyro_mmvae import __version__

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
)


class LazyChoices:
    """Choices for argparse whose names are loaded on first use (keeps ``--help`` fast)."""

    def __init__(self, load: Callable[[], Sequence[str]], prefix: str | None = None) -> None:
        self._load = load
        #: Any value starting with ``prefix`` is accepted too (``files:DIR``).
        self.prefix = prefix
        self._names: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...]:
        """The choices, loaded on the first call (``PREFIX...`` last, when accepted)."""
        if self._names is None:
            self._names = tuple(self._load()) + ((f"{self.prefix}DIR",) if self.prefix else ())
        return self._names

    def __contains__(self, value: object) -> bool:
        if self.prefix and isinstance(value, str) and value.startswith(self.prefix):
            return True
        return value in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _model_names() -> tuple[str, ...]:
    from pyro_mmvae.zoo import model_names

    return model_names()


def _dataset_names() -> tuple[str, ...]:
    from pyro_mmvae.data import dataset_names

    return dataset_names()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _setting(name: str, kind: type) -> Callable[[str], Any]:
    """An argparse type for the flag of setting ``name``: the value parsed as ``kind``, then
    checked by :func:`pyro_mmvae.settings.check_value` (the checks and messages of
    ``--set``, presets and ``TrainConfig``)."""

    def parse(text: str) -> Any:
        from pyro_mmvae.settings import check_value

        try:
            value = kind(text)
        except ValueError:
            value = text
        try:
            return check_value(name, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


def parse_setting(text: str) -> tuple[str, Any]:
    """``"beta=2.5"`` -> ``("beta", 2.5)``; values parse as JSON (numbers, booleans, lists
    become tuples), anything else stays text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-mmvae`` parser: ``train``, ``evaluate`` and ``make-polymnist`` commands."""
    parser = argparse.ArgumentParser(
        prog="pyro-mmvae",
        description="Multimodal VAEs as Pyro programs: train and evaluate models, generate "
        "PolyMNIST.",
        epilog="Without arguments: `pyro-mmvae train` (MMVAE on polymnist-mini into ./runs/).",
    )
    parser.add_argument("--version", action="version", version=f"pyro_mmvae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(commands)
    _add_evaluate(commands)
    _add_make_polymnist(commands)
    _add_make_captions(commands)
    return parser


#: Help line and description of each sub-command.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "train a model; writes metrics, checkpoint and summary into a run folder",
        "Train a multimodal VAE with SVI. Settings left out come from the model's "
        "preset (or, with --resume, from the checkpoint).",
    ),
    "evaluate": (
        "evaluate a trained run: coherence, quality, likelihoods, probes; writes eval.json",
        "Evaluate the model of a `pyro-mmvae train` run folder and write "
        "RUN_DIR/eval.json and PNG figures (generation grids, coherence by number of "
        "inputs, Pareto k-hat histogram).",
    ),
    "make-polymnist": (
        "generate PolyMNIST PNGs from MNIST IDX files",
        "Write PolyMNIST (Sutter et al., ICLR 2021) as "
        "OUT/PolyMNIST/{train,test}/m{i}/{idx}.{label}.png.",
    ),
    "make-captions": (
        "write the MNIST image-caption benchmark as a files dataset",
        "Write MNIST digits with captions (the digit's English word among random filler "
        "words, as token ids) as OUT/{train,test}/{image,caption,labels}.npy; train with "
        "--dataset files:OUT.",
    ),
}


def _command(commands: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The sub-command ``name`` of ``pyro-mmvae`` (texts from :data:`COMMANDS`)."""
    help_line, description = COMMANDS[name]
    return commands.add_parser(name, help=help_line, description=description)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = _command(commands, "train")
    # An explicit metavar keeps argparse from listing the choices (importing the zoo) up front.
    train.add_argument("--model", default="mmvae", choices=LazyChoices(_model_names),
                       metavar="NAME", help="one of %(choices)s (default: %(default)s)")
    train.add_argument("--dataset", default="polymnist-mini",
                       choices=LazyChoices(_dataset_names, prefix="files:"), metavar="NAME",
                       help="one of %(choices)s (default: %(default)s; bundled and offline); "
                       "files:DIR reads your own .npy arrays from DIR/train and DIR/test "
                       "(format: pyro_mmvae.data.files)")
    train.add_argument("--preset", help="named recipe of the model zoo (e.g. mmvae_polymnist)")
    train.add_argument("--data-root", metavar="DIR",
                       help="dataset folder (default: $PYRO_MMVAE_DATA_ROOT)")
    train.add_argument("--epochs", type=_setting("epochs", int), metavar="N")
    train.add_argument("--batch-size", type=_setting("batch_size", int), metavar="B")
    train.add_argument("--lr", type=_setting("lr", float), metavar="LR",
                       help="Adam learning rate")
    train.add_argument("--num-particles", type=_setting("num_particles", int), metavar="K",
                       help="samples of z per data point")
    train.add_argument("--estimator", choices=("elbo", "iwae", "dreg"),
                       help="objective: ELBO, importance-weighted bound, or IWAE with DReG")
    train.add_argument("--beta", type=_setting("beta", float), metavar="BETA",
                       help="weight of the KL (prior-ratio) terms; same as --set beta=BETA")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    train.add_argument("--precision", choices=("auto", *PRECISION_NAMES),
                       help="precision of the networks (autocast; distributions and the "
                       "objective stay fp32); default auto: bf16 where the device has "
                       "bfloat16 matrix units (GPU compute capability >= 8, CPU AMX-BF16 or "
                       "AVX512-BF16), else 32")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the encoders and decoders")
    train.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"),
                       help="learning-rate schedule over the run (default: constant)")
    train.add_argument("--clip-grad", type=_positive_float, metavar="NORM",
                       help="clip the gradients' global 2-norm to NORM")
    train.add_argument("--decoder-batching", choices=("auto", "stacked", "split"),
                       default="auto", help="decode all particles/strata in one call "
                       "(stacked) or one call per batch (split); auto picks by device")
    train.add_argument("--memory-format", choices=("auto", "contiguous", "channels_last"),
                       default="auto", help="layout of convolution weights and activations; "
                       "auto: channels_last for convolutional networks on the CPU (measured)")
    train.add_argument("--tensorboard", action="store_true",
                       help="write TensorBoard logs into RUN_DIR/tensorboard")
    train.add_argument("--seed", type=int, help="random seed (default: 0)")
    train.add_argument("--missing-ratio", type=_ratio, metavar="R",
                       help="drop each modality of each row with probability R (seeded by "
                       "--seed, in train and test; a row keeps at least one modality)")
    train.add_argument("--out", metavar="RUN_DIR",
                       help="run folder (default: ./runs/{model}-{dataset}-{time})")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint")
    train.add_argument("--break-lock", action="store_true",
                       help="replace the run folder's lock if a killed run left it behind")
    train.add_argument("--stage", dest="stages", action="append", metavar="EPOCHS:PATTERNS",
                       help="training stage (repeatable, in order): EPOCHS (an int, a fraction "
                       "of the run, or 'rest') with the parameters matching the comma-separated "
                       "name PATTERNS frozen, e.g. --stage 0.5:mods.*.encoder --stage "
                       "rest:joint_encoder,mods.*.decoder (TELBO's default)")
    train.add_argument("--set", dest="settings", action="append", default=[],
                       type=parse_setting, metavar="KEY=VALUE",
                       help="model setting over the preset (repeatable), e.g. --set beta=2.5 "
                       "--set alpha=1 --set hidden=[256,256]; see pyro_mmvae.zoo.DEFAULTS")
    train.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                       help="skip coherence and the generation grid at the end")
    train.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bars")
    train.set_defaults(handler=_run_train)


PRECISION_NAMES = ("32", "bf16", "16")  # pyro_mmvae.engine.PRECISIONS
POSTERIOR_NAMES = ("mean", "sample")  # pyro_mmvae.models.base.POSTERIOR_POINTS
METRIC_NAMES = ("coherence", "quality", "likelihood", "probe")  # pyro_mmvae.metrics.METRICS
PROPOSAL_NAMES = ("model", "mixture", "refined", "annealed", "all")  # PROPOSALS + all
ANNEALED_STARTS = ("model", "mixture", "refined")  # metrics.likelihood.CHEAP_PROPOSALS


def _proposal_list(text: str) -> str:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROPOSAL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown proposal(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{','.join(PROPOSAL_NAMES)} (comma-separated for several)")
    return ",".join(names)


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{','.join(METRIC_NAMES)}"
        )
    return names


def _count_or_all(text: str) -> int | None:
    return None if text.strip().lower() == "all" else _positive_int(text)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = _command(commands, "evaluate")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="run folder with checkpoint.pt")
    evaluate.add_argument("--metrics", type=_metric_list, default=METRIC_NAMES,
                          metavar="LIST", help="comma-separated subset of "
                          f"{','.join(METRIC_NAMES)} (default: all)")
    evaluate.add_argument("--num-samples", type=_positive_int, default=1000, metavar="K",
                          help="importance samples per data point (default: %(default)s)")
    evaluate.add_argument("--max-points", type=_count_or_all, default=100, metavar="N|all",
                          help="test points for the likelihoods, each estimated with every "
                          "chosen proposal (default: %(default)s)")
    evaluate.add_argument("--chunk-size", type=_positive_int, metavar="C",
                          help="importance samples per chunk (default: 4096 latents a chunk)")
    evaluate.add_argument("--proposal", type=_proposal_list, default="all",
                          metavar="LIST",
                          help="importance proposals for the likelihoods, comma-separated: "
                          "the model's q(z|X) ('model'), a defensive mixture of q, the "
                          "product of the present experts and the prior ('mixture'), a "
                          "per-point Normal refined by gradient steps ('refined'), annealed "
                          "importance sampling from the refined proposal ('annealed', slow: "
                          "opt-in), or 'all' (the first three); the best by PSIS k-hat is "
                          "on top (default: %(default)s)")
    evaluate.add_argument("--annealed-temperatures", type=_positive_int, default=100,
                          metavar="T", help="temperatures of 'annealed' (default: "
                          "%(default)s)")
    evaluate.add_argument("--annealed-samples", type=_positive_int, default=50,
                          metavar="K", help="AIS chains per point of 'annealed', at most "
                          "--num-samples (default: %(default)s)")
    evaluate.add_argument("--annealed-leapfrog", type=_positive_int, default=1, metavar="L",
                          help="leapfrog steps per HMC transition of 'annealed', 1 = MALA "
                          "(default: %(default)s)")
    evaluate.add_argument("--precision", choices=PRECISION_NAMES, default="32",
                          help="precision of the model's networks in coherence and quality "
                          "(autocast; bf16 is fast on GPUs and AMX CPUs only; default 32)")
    evaluate.add_argument("--posterior", choices=POSTERIOR_NAMES, default="mean",
                          help="conditional generation in coherence and quality decodes the "
                          "posterior mean of z or one draw z ~ q(z|X_S) per point "
                          "(MultiVae's coherence; default: %(default)s)")
    evaluate.add_argument("--annealed-start", choices=ANNEALED_STARTS, default="refined",
                          help="the proposal 'annealed' starts from (default: %(default)s)")
    evaluate.add_argument("--likelihood-subsets", type=_non_negative_int, default=0,
                          metavar="N", help="also estimate log p(X_S) and the conditional "
                          "log p(X_rest | X_S) for N source subsets S of each size 1..M-1 "
                          "(default: %(default)s, the joint log p(X) only)")
    evaluate.add_argument("--quality-points", type=_count_or_all, default=10000,
                          metavar="N|all", help="test images per Fréchet distance "
                          "(default: %(default)s)")
    evaluate.add_argument("--coherence-points", type=_count_or_all, default=None,
                          metavar="N|all", help="test points for conditional coherence "
                          "(default: all)")
    evaluate.add_argument("--fid-weights", metavar="FILE",
                          help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth) "
                          "to add Inception FID; needs pip install 'pyro_mmvae[fid]'")
    evaluate.add_argument("--data-root", metavar="DIR",
                          help="dataset folder (default: the run's, or $PYRO_MMVAE_DATA_ROOT)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    evaluate.add_argument("--out", metavar="DIR", help="write eval.json and the figures to DIR "
                          "(default: RUN_DIR)")
    evaluate.add_argument("--no-progress", dest="progress", action="store_false",
                          help="no progress bars or status lines")
    evaluate.set_defaults(handler=_run_evaluate)


def _add_mnist_source(make: argparse.ArgumentParser) -> None:
    """The options of a dataset generated from MNIST: source, output, seed, size."""
    make.add_argument("--mnist-root", required=True, metavar="DIR",
                      help="folder with the MNIST IDX files (.gz or raw)")
    make.add_argument("--out", required=True, metavar="DIR", help="output folder")
    make.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    make.add_argument("--limit", type=_positive_int, metavar="N",
                      help="use only the first N MNIST images of each split")


def _add_make_polymnist(commands: argparse._SubParsersAction) -> None:
    make = _command(commands, "make-polymnist")
    _add_mnist_source(make)
    make.add_argument("--backgrounds", required=True, metavar="DIR|procedural",
                      help="folder of background images (one per modality) or 'procedural'")
    make.add_argument("--modalities", type=_positive_int, default=5, metavar="M",
                      help="number of modalities (default: 5)")
    make.add_argument("--splits", nargs="+", default=("train", "test"),
                      choices=("train", "test"), help="splits to write (default: both)")
    make.add_argument("--workers", type=_positive_int, default=2,
                      help="worker processes (default: 2)")
    make.add_argument("--overwrite", action="store_true",
                      help="replace PNGs already in the output folder")
    make.add_argument("--translated", action="store_true",
                      help="Translated PolyMNIST: digits scaled by --digit-scale and placed at "
                      "random positions before compositing")
    make.add_argument("--digit-scale", type=_positive_float, default=0.75, metavar="S",
                      help="digit scale of --translated (default: 0.75)")
    make.set_defaults(handler=_run_make_polymnist)


def _add_make_captions(commands: argparse._SubParsersAction) -> None:
    make = _command(commands, "make-captions")
    _add_mnist_source(make)
    make.set_defaults(handler=_run_make_captions)


# --------------------------------------------------------------------------- commands


def _run_train(args: argparse.Namespace) -> int:
    from pyro_mmvae.engine.distributed import launched_by_torchrun
    from pyro_mmvae.train import TrainConfig, default_run_dir, train

    out = args.out or str(default_run_dir(args.model, args.dataset))
    settings = dict(args.settings)
    if args.beta is not None:
        settings["beta"] = args.beta
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_particles=args.num_particles,
        estimator=args.estimator,
        device=args.device,
        seed=args.seed,
        out=out,
        resume=args.resume,
        stages=args.stages,
        settings=settings,
        precision=args.precision,
        compile=args.compile,
        lr_schedule=args.lr_schedule,
        clip_grad=args.clip_grad,
        decoder_batching=args.decoder_batching,
        memory_format=args.memory_format,
        tensorboard=args.tensorboard,
        break_lock=args.break_lock,
        missing_ratio=args.missing_ratio,
    )
    main_process = not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0
    if main_process:
        print(f"run folder: {out}", flush=True)
    summary = train(config, progress=args.progress)
    if not main_process:
        return 0
    if args.evaluate:
        summary = _evaluate_training(summary, out, args.device)
    _print_summary(summary, out)
    return 0


def _evaluate_training(summary: dict, out: str, device: str) -> dict:
    """Coherence and the generation grid of a finished run, added to its summary.json."""
    from pyro_mmvae.engine.device import resolve_device
    from pyro_mmvae.metrics.quick import training_report
    from pyro_mmvae.runs import RunFolder, load_run

    torch_device = resolve_device(device)
    with RunFolder(out).locked():
        run = load_run(out, torch_device)
        summary = {**summary, **training_report(run, torch_device)}
        run.folder.write_summary(summary)
    return summary


def _print_summary(summary: dict, out: str) -> None:
    rows = [
        ("model", summary.get("model")),
        ("dataset", summary.get("dataset")),
        ("epochs", summary.get("epochs")),
        ("train loss / point", _fmt(summary.get("final_loss"))),
        ("test loss / point", _fmt(summary.get("final_test_loss"))),
        ("coherence (1 -> rest)", _fmt(summary.get("conditional_coherence"))),
        ("training seconds", _fmt(summary.get("seconds"), 1)),
        ("device", summary.get("device")),
        ("parameters", summary.get("parameters")),
    ]
    for label, value in rows:
        if value is not None:
            print(f"  {label:<22} {value}")
    print(f"summary: {out}/summary.json")


def _fmt(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _run_evaluate(args: argparse.Namespace) -> int:
    from pyro_mmvae.metrics.evaluate import EVAL_NAME, evaluate_run

    results = evaluate_run(
        args.run_dir,
        metrics=args.metrics,
        num_samples=args.num_samples,
        device=args.device,
        data_root=args.data_root,
        max_points=args.max_points,
        chunk_size=args.chunk_size,
        likelihood_subsets=args.likelihood_subsets,
        quality_points=args.quality_points,
        coherence_points=args.coherence_points,
        fid_weights=args.fid_weights,
        seed=args.seed,
        proposal=args.proposal,
        annealed_temperatures=args.annealed_temperatures,
        annealed_samples=args.annealed_samples,
        annealed_leapfrog=args.annealed_leapfrog,
        annealed_start=args.annealed_start,
        precision=args.precision,
        posterior=args.posterior,
        progress=args.progress,
        out_dir=args.out,
    )
    _print_evaluation(results)
    print(f"evaluation: {args.out or args.run_dir}/{EVAL_NAME}")
    return 0


def _print_evaluation(results: dict) -> None:
    coherence = results.get("coherence") or {}
    quality = (results.get("quality") or {}).get("classifier_frechet_distance") or {}
    likelihood = results.get("likelihood") or {}
    joint = likelihood.get("joint") or {}
    by_size = coherence.get("by_subset_size") or {}
    probe = (results.get("probe") or {}).get("by_subset_size") or {}
    point = "sampled" if (results.get("settings") or {}).get("posterior") == "sample" else "mean"
    rows = [
        ("model", results.get("model")),
        (f"coherence by |S| ({point} z)",
         " ".join(f"{k}:{v:.3f}" for k, v in by_size.items()) or None),
        ("unconditional coherence", _fmt(coherence.get("unconditional_coherence"))),
        ("classifier accuracy", _fmt(coherence.get("mean_classifier_accuracy"))),
        ("classifier Fréchet dist.", _fmt(quality.get("mean_unconditional"), 2)),
        ("log p(X) / point", _fmt(joint.get("mean"), 2)),
        ("proposal", likelihood.get("best_proposal")),
        ("k-hat > 0.7 (fraction)",
         _fmt((joint.get("pareto_k") or {}).get("fraction_above_0.7"))),
        ("ESS / K", _fmt((joint.get("ess") or {}).get("mean_fraction"))),
        ("likelihood", likelihood.get("skipped") and f"skipped: {likelihood['skipped']}"),
        ("probe by |S|", " ".join(f"{k}:{v:.3f}" for k, v in probe.items()) or None),
        ("seconds", _fmt(results.get("total_seconds"), 1)),
    ]
    for label, value in rows:
        if value is not None:
            print(f"  {label:<25} {value}")
    proposals = likelihood.get("proposals") or {}
    if len(proposals) > 1:
        print("  log p(X) by proposal      mean     k-hat median  k-hat>0.7  ESS/K"
              "      seconds")
        for name, entry in proposals.items():
            est = entry.get("joint") or {}
            khat = est.get("pareto_k") or {}
            cells = [_fmt(est.get("mean"), 2), _fmt(khat.get("median"), 2),
                     _fmt(khat.get("fraction_above_0.7"), 2),
                     _fmt((est.get("ess") or {}).get("mean_fraction"), 4),
                     _fmt(entry.get("seconds"), 1)]
            print(f"    {name:<10} " + " ".join(f"{c or '-':>12}" for c in cells))
    for message in likelihood.get("warnings") or []:
        print(f"warning: {message}")


def _run_make_polymnist(args: argparse.Namespace) -> int:
    from pyro_mmvae.data import make_polymnist

    folder = make_polymnist(
        args.mnist_root,
        args.backgrounds,
        args.modalities,
        args.seed,
        out=args.out,
        splits=tuple(args.splits),
        limit=args.limit,
        workers=args.workers,
        overwrite=args.overwrite,
        translate=args.translated,
        digit_scale=args.digit_scale,
    )
    print(f"PolyMNIST written to {folder}")
    print(f"train on it with: pyro-mmvae train --dataset polymnist --data-root {args.out}")
    return 0


def _run_make_captions(args: argparse.Namespace) -> int:
    from pyro_mmvae.data import make_captions

    folder = make_captions(args.mnist_root, args.out, seed=args.seed, limit=args.limit)
    print(f"image-caption dataset written to {folder}")
    print(f"train on it with: pyro-mmvae train --dataset files:{folder}")
    return 0


# --------------------------------------------------------------------------- entry point


def _exit_code(error: BaseException) -> int | None:
    """2 for mistakes the user can fix, 1 for a diverged run, None for bugs (re-raised)."""
    if "pyro_mmvae.train" in sys.modules:
        from pyro_mmvae.train import TrainingError

        if isinstance(error, TrainingError):
            return 1
    if "pyro_mmvae.checkpoint" in sys.modules:
        from pyro_mmvae.checkpoint import CheckpointError

        if isinstance(error, CheckpointError):
            return 2
    return 2 if isinstance(error, USER_ERRORS) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-mmvae`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv or ["train"])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is in the checkpoint", file=sys.stderr)
        return 130
    except Exception as error:
        code = _exit_code(error)
        if code is None:
            raise
        # Pyro appends its trace-shape table to errors raised inside a model: not for users.
        message = str(error).split("\nTrace Shapes:")[0].strip()
        print(f"error: {message}", file=sys.stderr)
        return code
