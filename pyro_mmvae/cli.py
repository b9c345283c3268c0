"""Command line: ``pyro-mmvae train``, ``evaluate``, ``make-polymnist`` and ``make-captions``.

``pyro-mmvae`` with no arguments trains the default model (MMVAE) on the offline
``polymnist-mini`` dataset into ``./runs/``. Heavy modules (torch, pyro, the model zoo) are
imported inside the commands, so ``pyro-mmvae --help`` and ``pyro-mmvae train --help`` answer
at once: the model and dataset names they list are static lists checked against the zoo and
the dataset registry by ``tests/test_cli_help.py``.

Mistakes a user can fix (bad settings, missing files, a checkpoint that does not fit) print
``error: <message>`` and exit with status 2; a training run that diverges (NaN loss) exits
with status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import textwrap
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
    """Choices for argparse whose full list is loaded on first use (keeps ``--help`` fast).

    ``known`` are the built-in names, shown in ``--help`` without importing anything; once
    ``module`` (the module ``load`` reads, e.g. the model zoo) is imported, or a value has
    been checked, the full list (names registered from Python included) is shown instead.
    Checking a value (``value in choices``) always loads the full list.

    Args:
        load: called once, without arguments, to get the full list of names (e.g.
            :func:`pyro_mmvae.zoo.model_names`).
        prefix: any value starting with it is accepted too (``"files:"`` for
            ``files:DIR``); None: none.
        known: the built-in names, listed in help texts until the full list is loaded.
        module: the module ``load`` imports (e.g. ``"pyro_mmvae.zoo"``); once it is in
            ``sys.modules`` the full list is shown. None: show ``known`` until loaded.
    """

    def __init__(self, load: Callable[[], Sequence[str]], prefix: str | None = None,
                 known: Sequence[str] = (), module: str | None = None) -> None:
        self._load = load
        #: Any value starting with ``prefix`` is accepted too (``files:DIR``).
        self.prefix = prefix
        self.known = tuple(known)
        self.module = module
        self._names: tuple[str, ...] | None = None

    def _with_prefix(self, names: Sequence[str]) -> tuple[str, ...]:
        return tuple(names) + ((f"{self.prefix}DIR",) if self.prefix else ())

    def names(self) -> tuple[str, ...]:
        """The choices, loaded on the first call (``PREFIX...`` last, when accepted)."""
        if self._names is None:
            self._names = self._with_prefix(self._load())
        return self._names

    def shown(self) -> tuple[str, ...]:
        """The names to list in help texts: the full list if it is loaded or cheap to load
        (its module is imported already), else the built-in ``known`` names."""
        if self._names is not None or not self.known or (self.module in sys.modules):
            return self.names()
        return self._with_prefix(self.known)

    def __contains__(self, value: object) -> bool:
        if self.prefix and isinstance(value, str) and value.startswith(self.prefix):
            return True
        return value in self.names()

    def __iter__(self) -> Iterator[str]:  # argparse lists the choices in help and errors
        return iter(self.shown())

    def __len__(self) -> int:
        return len(self.shown())


#: The zoo's built-in models (:data:`pyro_mmvae.zoo.MODELS`, checked by a test), listed by
#: ``--help`` without importing the zoo (which imports torch and Pyro).
MODEL_NAMES: tuple[str, ...] = ("mmvae", "mvae", "mopoe", "mmvae_plus", "mmvae_private",
                                "cmvae", "jmvae", "telbo", "mvtcae", "crmvae", "dmvae",
                                "cvae", "jnf", "jnf_dcca", "mhvae", "nexus")
#: The built-in datasets (:data:`pyro_mmvae.data.registry.DATASETS`, checked by a test).
DATASET_NAMES: tuple[str, ...] = ("polymnist-mini", "polymnist", "captions-mini")
#: The library defaults of the settings that have their own ``train`` flag
#: (:data:`pyro_mmvae.settings.DEFAULTS`, checked by a test), shown by ``--help``.
SETTING_DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 128, "lr": 1e-3,
                                    "num_particles": 1, "estimator": "elbo", "beta": 1.0}
#: Where every ``--set`` key is explained.
SETTINGS_PAGE = "the settings page of the documentation (docs/settings.md)"


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


def _seed(text: str) -> int:
    """``--seed``: an integer in [0, 2**32) (Python's, NumPy's and torch's common range)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def _integral(value: Any) -> Any:
    """Floats with an integer value (``1e9``) as ints, in lists too; the rest unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
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
            try:  # 1e9 for an integer setting: its value, bounded by the memory check
                value = _integral(float(text)) if kind is int else text
            except ValueError:
                value = text
        try:
            return check_value(name, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


def _settings_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The ``--set`` pairs as a dict; a key given twice with different values is refused
    (argparse would silently keep the last), the same value twice is accepted."""
    settings: dict[str, Any] = {}
    for key, value in pairs:
        if key in settings and settings[key] != value:
            raise ValueError(f"{key} is given twice with different values: --set "
                             f"{key}={settings[key]!r} and --set {key}={value!r}; give it once")
        settings[key] = value
    return settings


def parse_setting(text: str) -> tuple[str, Any]:
    """``"beta=2.5"`` -> ``("beta", 2.5)``; values parse as JSON (numbers, booleans, lists
    become tuples; ``1e9`` is the integer 1000000000), anything else stays text.

    Args:
        text: one ``--set`` value, ``KEY=VALUE`` (the key is stripped of spaces).

    Raises:
        argparse.ArgumentTypeError: when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = _integral(json.loads(raw))
    except json.JSONDecodeError:
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- parser

#: argparse's formatter for every command: the description and the examples of the epilogue
#: keep their line breaks (the description is wrapped by :func:`_wrap` instead).
FORMATTER = argparse.RawDescriptionHelpFormatter


def _wrap(text: str) -> str:
    """``text`` wrapped to the width argparse gives help texts (the terminal's, less 2)."""
    width = max(shutil.get_terminal_size().columns - 2, 40)
    return textwrap.fill(text, width)


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-mmvae`` parser: ``train``, ``evaluate``, ``make-polymnist`` and
    ``make-captions``. Building it and printing its help import neither torch nor Pyro."""
    parser = argparse.ArgumentParser(
        prog="pyro-mmvae",
        description=_wrap("Multimodal VAEs as Pyro programs: train and evaluate models, "
                          "generate PolyMNIST and an image-caption dataset."),
        epilog=EXAMPLES[None],
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"pyro_mmvae {__version__}",
                        help="print the library's version and exit")
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
        "Train a multimodal VAE: each step is one Adam step on the loss of the model's "
        "objective (an ELBO, IWAE or DReG bound, as a Pyro ELBO's differentiable_loss) for a "
        "batch. After training, coherence and a cross-generation grid are measured (unless "
        "--no-evaluate). Settings left out come from the preset, the model and the dataset "
        "(or, with --resume, from the checkpoint); every one is recorded in "
        "RUN_DIR/summary.json.",
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

#: The examples at the end of each command's ``--help`` (``None``: the program's). Each
#: line after ``examples:`` that starts with ``pyro-mmvae`` parses (checked by a test).
EXAMPLES: dict[str | None, str] = {
    None: """\
examples:
  pyro-mmvae                     # = pyro-mmvae train: MMVAE on polymnist-mini into ./runs/
  pyro-mmvae train --help        # the options of one command
  pyro-mmvae evaluate runs/mmvae-polymnist-mini-TIME

The command-line reference (docs/cli.md) and the settings page (docs/settings.md) of the
documentation explain every option and every --set key.""",
    "train": """\
examples:
  # MMVAE on the bundled polymnist-mini (offline; minutes on a laptop CPU), then coherence
  pyro-mmvae train
  # another model, a few settings changed
  pyro-mmvae train --model mopoe --epochs 20 --set beta=2.5 --set latent_dim=32
  # a paper's recipe on full PolyMNIST (made with pyro-mmvae make-polymnist)
  pyro-mmvae train --model mmvae_plus --preset mmvae_plus_polymnist_cpu \\
      --dataset polymnist --data-root data
  # your own .npy arrays (DIR/train and DIR/test), into a named run folder
  pyro-mmvae train --dataset files:my_data --out runs/mine
  # continue that run up to 40 epochs (settings left out: the checkpoint's)
  pyro-mmvae train --out runs/mine --resume --epochs 40""",
    "evaluate": """\
examples:
  # every metric at its default size
  pyro-mmvae evaluate runs/mine
  # coherence and generation quality only, on 1000 test points
  pyro-mmvae evaluate runs/mine --metrics coherence,quality --coherence-points 1000
  # likelihoods of the whole test set, K = 5000, with annealed importance sampling too
  pyro-mmvae evaluate runs/mine --metrics likelihood --max-points all \\
      --num-samples 5000 --proposal all,annealed""",
    "make-polymnist": """\
examples:
  # PolyMNIST with generated backgrounds, then train on it
  pyro-mmvae make-polymnist --mnist-root data/MNIST/raw --backgrounds procedural --out data
  pyro-mmvae train --dataset polymnist --data-root data
  # Translated PolyMNIST (digits scaled to 0.75 at random positions)
  pyro-mmvae make-polymnist --mnist-root data/MNIST/raw --backgrounds procedural \\
      --translated --out data/translated""",
    "make-captions": """\
examples:
  pyro-mmvae make-captions --mnist-root data/MNIST/raw --out data/captions
  pyro-mmvae train --dataset files:data/captions""",
}


def _command(commands: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The sub-command ``name`` of ``pyro-mmvae`` (texts from :data:`COMMANDS` and
    :data:`EXAMPLES`)."""
    help_line, description = COMMANDS[name]
    return commands.add_parser(name, help=help_line, description=_wrap(description),
                               epilog=EXAMPLES[name], formatter_class=FORMATTER)


def _resolved(name: str) -> str:
    """The default of a ``train`` flag that sets a setting: where it comes from."""
    return (f"default: the preset's, model's or dataset's, else {SETTING_DEFAULTS[name]}; "
            "with --resume, the checkpoint's")


def _preset_help() -> str:
    """``--preset``'s help: every preset's name, by the model it is for."""
    from pyro_mmvae.presets import PRESETS  # plain dictionaries: no torch

    by_model: dict[str, list[str]] = {}
    for preset, recipe in PRESETS.items():
        by_model.setdefault(str(recipe.get("model")), []).append(preset)
    names = "; ".join(f"{model}: {', '.join(presets)}" for model, presets in by_model.items())
    return ("a named recipe from a paper, for one --model (its settings under your flags and "
            f"--set; default: none, the model's defaults for the dataset). {names}")


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = _command(commands, "train")
    what = train.add_argument_group("what to train")
    # An explicit metavar keeps argparse from listing the choices in the usage line.
    what.add_argument("--model", default="mmvae", metavar="NAME",
                      choices=LazyChoices(_model_names, known=MODEL_NAMES,
                                          module="pyro_mmvae.zoo"),
                      help="the model: one of %(choices)s (default: %(default)s)")
    what.add_argument("--preset", metavar="NAME", help=_preset_help())
    what.add_argument("--set", dest="settings", action="append", default=[],
                      type=parse_setting, metavar="KEY=VALUE",
                      help="a model or training setting over the preset (repeatable; values "
                      "read as JSON), e.g. --set beta=2.5 --set hidden=[256,256]; every key "
                      f"with its meaning, type and default is on {SETTINGS_PAGE} "
                      "(default: none)")
    what.add_argument("--beta", type=_setting("beta", float), metavar="BETA",
                      help="weight of the KL (prior-ratio) terms; same as --set beta=BETA "
                      f"({_resolved('beta')})")
    what.add_argument("--estimator", choices=("elbo", "iwae", "dreg"),
                      help="objective: the ELBO, the importance-weighted bound (IWAE, needs "
                      "K > 1), or IWAE with doubly reparameterised gradients (DReG) "
                      f"({_resolved('estimator')})")
    what.add_argument("--num-particles", type=_setting("num_particles", int), metavar="K",
                      help=f"latent samples z per data point ({_resolved('num_particles')})")
    what.add_argument("--stage", dest="stages", action="append", metavar="EPOCHS:PATTERNS",
                      help="a training stage (repeatable, in order): EPOCHS (an int, a "
                      "fraction of the run, or 'rest') with the parameters matching the "
                      "comma-separated name PATTERNS frozen, e.g. --stage 0.5:mods.*.encoder "
                      "--stage rest:joint_encoder,mods.*.decoder (default: the model's "
                      "stages: TELBO's are these two, the other models have one stage)")

    data = train.add_argument_group("data")
    data.add_argument("--dataset", default="polymnist-mini", metavar="NAME",
                      choices=LazyChoices(_dataset_names, prefix="files:",
                                          known=DATASET_NAMES, module="pyro_mmvae.data"),
                      help="one of %(choices)s (default: %(default)s, bundled and offline); "
                      "files:DIR reads your own .npy arrays from DIR/train and DIR/test "
                      "(format: pyro_mmvae.data.files)")
    data.add_argument("--data-root", metavar="DIR",
                      help="folder of a dataset read from disk (polymnist: the folder that "
                      "holds PolyMNIST/) (default: $PYRO_MMVAE_DATA_ROOT)")
    data.add_argument("--missing-ratio", type=_ratio, metavar="R",
                      help="drop each modality of each row with probability R (seeded by "
                      "--seed, in train and test; a row keeps at least one modality) "
                      "(default: 0, every modality observed)")

    optim = train.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=_setting("epochs", int), metavar="N",
                       help=f"passes over the training set ({_resolved('epochs')})")
    optim.add_argument("--batch-size", type=_setting("batch_size", int), metavar="B",
                       help=f"data points per optimiser step ({_resolved('batch_size')})")
    optim.add_argument("--lr", type=_setting("lr", float), metavar="LR",
                       help=f"Adam's learning rate ({_resolved('lr')})")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"),
                       help="learning-rate schedule over the run, stepped every step; cosine "
                       "and linear decay to 0 (default: constant; with --resume, the "
                       "checkpoint's)")
    optim.add_argument("--clip-grad", type=_positive_float, metavar="NORM",
                       help="clip the gradients' global 2-norm to NORM (default: no "
                       "clipping)")
    optim.add_argument("--seed", type=_seed,
                       help="random seed, in [0, 2**32) (default: 0; with --resume, the "
                       "checkpoint's)")

    speed = train.add_argument_group("precision and speed")
    speed.add_argument("--device", default="auto",
                       help="auto | cpu | cuda | cuda:N; auto: a GPU when PyTorch sees one, "
                       "else the CPU (default: %(default)s)")
    speed.add_argument("--precision", choices=("auto", *PRECISION_NAMES),
                       help="precision of the networks (autocast; distributions and the "
                       "objective stay fp32); auto: bf16 where the device has bfloat16 "
                       "matrix units (GPU compute capability >= 8, CPU AMX-BF16 or "
                       "AVX512-BF16), else 32; the choice is printed when the run starts "
                       "(default: auto; with --resume, the checkpoint's)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the encoders and decoders")
    speed.add_argument("--decoder-batching", choices=("auto", "stacked", "split"),
                       default="auto", help="decode all particles/strata in one call "
                       "(stacked) or one call per batch (split); auto picks by device "
                       "(default: %(default)s)")
    speed.add_argument("--memory-format", choices=("auto", "contiguous", "channels_last"),
                       default="auto", help="layout of convolution weights and activations; "
                       "auto: channels_last for convolutional networks on the CPU (measured) "
                       "(default: %(default)s)")
    speed.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels on a GPU: the same seed gives the same "
                       "parameters run after run, somewhat slower (the CPU is deterministic "
                       "already)")

    folder = train.add_argument_group("run folder and resume")
    folder.add_argument("--out", metavar="RUN_DIR",
                        help="run folder (default: ./runs/{model}-{dataset}-{time})")
    folder.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (to --epochs)")
    folder.add_argument("--break-lock", action="store_true",
                        help="replace the run folder's lock if a killed run left it behind")

    output = train.add_argument_group("output")
    output.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip coherence and the generation grid at the end")
    output.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (the line printed after each epoch stays)")
    output.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs into RUN_DIR/tensorboard")
    train.set_defaults(handler=_run_train)


PRECISION_NAMES = ("32", "bf16", "16")  # pyro_mmvae.engine.PRECISIONS
POSTERIOR_NAMES = ("mean", "sample")  # pyro_mmvae.models.base.POSTERIOR_POINTS
METRIC_NAMES = ("coherence", "quality", "likelihood", "probe")  # pyro_mmvae.metrics.METRICS
OPTIONAL_METRIC_NAMES = ("clustering",)  # metrics.evaluate.OPTIONAL_METRICS: only when named
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
    unknown = [m for m in names if m not in METRIC_NAMES + OPTIONAL_METRIC_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{','.join(METRIC_NAMES + OPTIONAL_METRIC_NAMES)}"
        )
    return names


def _count_or_all(text: str) -> int | None:
    return None if text.strip().lower() == "all" else _positive_int(text)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


#: The bounds of ``evaluate``'s sizes (pyro_mmvae.metrics.evaluate.LIMITS, which explains
#: them; the CLI's likelihood batch is 64 points, so --chunk-size is at most 65536 / 64).
EVAL_LIMITS = {"num_samples": 10**6, "chunk_size": 2**16 // 64,
               "annealed_temperatures": 10**4, "annealed_leapfrog": 100}


def _bounded_count(most: int) -> Callable[[str], int]:
    """An argparse type: a positive integer (``1e6`` accepted) of at most ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if not number.is_integer():
                raise argparse.ArgumentTypeError(
                    f"must be a positive integer, got {text}") from None
            value = int(number)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        if value > most:
            raise argparse.ArgumentTypeError(
                f"must be at most {most:,} (a bound on memory and time), got {text}")
        return value

    parse.__name__ = "count"
    return parse


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = _command(commands, "evaluate")
    what = evaluate.add_argument_group("what to evaluate")
    what.add_argument("run_dir", metavar="RUN_DIR",
                      help="run folder of `pyro-mmvae train` (with checkpoint.pt)")
    what.add_argument("--metrics", type=_metric_list, default=METRIC_NAMES, metavar="LIST",
                      help="comma-separated subset of "
                      f"{','.join(METRIC_NAMES)} (default: all), and "
                      f"{','.join(OPTIONAL_METRIC_NAMES)} (cluster NMI/ARI of clustering "
                      "models such as cmvae, vs k-means on z; only when named)")

    generation = evaluate.add_argument_group("coherence and generation quality")
    generation.add_argument("--coherence-points", type=_count_or_all, default=None,
                            metavar="N|all", help="test points for conditional coherence "
                            "(default: all; more than the test set: all of it)")
    generation.add_argument("--quality-points", type=_count_or_all, default=10000,
                            metavar="N|all", help="test images per Fréchet distance "
                            "(default: %(default)s; more than the test set: all of it)")
    generation.add_argument("--posterior", choices=POSTERIOR_NAMES, default="mean",
                            help="conditional generation in coherence and quality decodes the "
                            "posterior mean of z or one draw z ~ q(z|X_S) per point "
                            "(MultiVae's coherence) (default: %(default)s)")
    generation.add_argument("--precision", choices=PRECISION_NAMES, default="32",
                            help="precision of the model's networks in coherence and quality "
                            "(autocast; bf16 is fast on GPUs and AMX CPUs only) "
                            "(default: %(default)s)")
    generation.add_argument("--fid-weights", metavar="FILE",
                            help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth) "
                            "to add Inception FID; needs pip install 'pyro_mmvae[fid]' "
                            "(default: none, the classifier Fréchet distance only)")

    likelihood = evaluate.add_argument_group("likelihoods")
    likelihood.add_argument("--num-samples", type=_bounded_count(EVAL_LIMITS["num_samples"]),
                            default=1000, metavar="K",
                            help="importance samples per data point (default: %(default)s; "
                            "at most 1,000,000: a batch of 64 points keeps 64 x K "
                            "log-weights, and each proposal decodes K latents per point)")
    likelihood.add_argument("--max-points", type=_count_or_all, default=100, metavar="N|all",
                            help="test points for the likelihoods, each estimated with every "
                            "chosen proposal (default: %(default)s; more than the test set: "
                            "all of it)")
    likelihood.add_argument("--chunk-size", type=_bounded_count(EVAL_LIMITS["chunk_size"]),
                            metavar="C",
                            help="importance samples per chunk (default: 4096 latents a "
                            "chunk, 64 samples for a batch of 64 points; at most 1024, 65536 "
                            "latents decoded at once)")
    likelihood.add_argument("--proposal", type=_proposal_list, default="all", metavar="LIST",
                            help="importance proposals for the likelihoods, comma-separated: "
                            "the model's q(z|X) ('model'), a defensive mixture of q, the "
                            "product of the present experts and the prior ('mixture'), a "
                            "per-point Normal refined by gradient steps ('refined'), annealed "
                            "importance sampling from the refined proposal ('annealed', "
                            "slow: opt-in), or 'all' (the first three); the best by PSIS "
                            "k-hat is on top (default: %(default)s)")
    likelihood.add_argument("--likelihood-subsets", type=_non_negative_int, default=0,
                            metavar="N", help="also estimate log p(X_S) and the conditional "
                            "log p(X_rest | X_S) for N source subsets S of each size 1..M-1 "
                            "(default: %(default)s, the joint log p(X) only)")
    likelihood.add_argument("--annealed-temperatures",
                            type=_bounded_count(EVAL_LIMITS["annealed_temperatures"]),
                            default=100, metavar="T", help="temperatures of 'annealed', each "
                            "costing L model gradients per chain (default: %(default)s; at "
                            "most 10,000)")
    likelihood.add_argument("--annealed-samples",
                            type=_bounded_count(EVAL_LIMITS["num_samples"]), default=50,
                            metavar="K", help="AIS chains per point of 'annealed', at most "
                            "--num-samples (default: %(default)s)")
    likelihood.add_argument("--annealed-leapfrog",
                            type=_bounded_count(EVAL_LIMITS["annealed_leapfrog"]), default=1,
                            metavar="L", help="leapfrog steps per HMC transition of "
                            "'annealed', 1 = MALA (default: %(default)s; at most 100)")
    likelihood.add_argument("--annealed-start", choices=ANNEALED_STARTS, default="refined",
                            help="the proposal 'annealed' starts from (default: %(default)s)")

    run = evaluate.add_argument_group("data, device and output")
    run.add_argument("--data-root", metavar="DIR",
                     help="dataset folder (default: the run's, or $PYRO_MMVAE_DATA_ROOT)")
    run.add_argument("--device", default="auto",
                     help="auto | cpu | cuda | cuda:N (default: %(default)s: a GPU when "
                     "PyTorch sees one)")
    run.add_argument("--seed", type=_seed, default=0,
                     help="random seed, in [0, 2**32) (default: %(default)s)")
    run.add_argument("--out", metavar="DIR", help="write eval.json and the figures to DIR "
                     "(default: RUN_DIR)")
    run.add_argument("--break-lock", action="store_true",
                     help="replace the run folder's lock if a killed process left it "
                     "behind (evaluate holds the lock train takes)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars or status lines")
    evaluate.set_defaults(handler=_run_evaluate)


def _add_mnist_source(make: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options of a dataset generated from MNIST (source, output, seed, size), in a
    group that the command may add to."""
    group = make.add_argument_group("source and output")
    group.add_argument("--mnist-root", required=True, metavar="DIR",
                       help="folder with the MNIST IDX files (.gz or raw) (required)")
    group.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    group.add_argument("--seed", type=_seed, default=0,
                       help="random seed, in [0, 2**32) (default: %(default)s)")
    group.add_argument("--limit", type=_positive_int, metavar="N",
                       help="use only the first N MNIST images of each split (default: all)")
    return group


def _add_make_polymnist(commands: argparse._SubParsersAction) -> None:
    make = _command(commands, "make-polymnist")
    source = _add_mnist_source(make)
    source.add_argument("--splits", nargs="+", default=("train", "test"),
                        choices=("train", "test"),
                        help="splits to write (default: both)")
    source.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                        help="worker processes (default: %(default)s)")
    source.add_argument("--overwrite", action="store_true",
                        help="replace PNGs already in the output folder")
    images = make.add_argument_group("images")
    images.add_argument("--backgrounds", required=True, metavar="DIR|procedural",
                        help="folder of background images (one per modality) or "
                        "'procedural' (generated, no download) (required)")
    images.add_argument("--modalities", type=_positive_int, default=5, metavar="M",
                        help="number of modalities (default: %(default)s)")
    images.add_argument("--translated", action="store_true",
                        help="Translated PolyMNIST: digits scaled by --digit-scale and placed "
                        "at random positions before compositing")
    images.add_argument("--digit-scale", type=_positive_float, default=0.75, metavar="S",
                        help="digit scale of --translated (default: %(default)s)")
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
    settings = _settings_once(args.settings)
    if args.beta is not None:
        if "beta" in settings and settings["beta"] != args.beta:
            raise ValueError(f"beta is given twice with different values: --beta {args.beta} "
                             f"and --set beta={settings['beta']}; give it once")
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
        deterministic=args.deterministic,
        break_lock=args.break_lock,
        missing_ratio=args.missing_ratio,
    )
    main_process = not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0

    def announce(spec) -> None:  # once everything is checked, before the folder exists
        print(f"run folder: {out} ({spec.model}, precision {spec.precision}, "
              f"device {spec.device})", flush=True)
        settings = spec.settings
        print(f"  {spec.epochs} epochs, batch {spec.batch_size}, lr {spec.lr:g}, latent "
              f"{settings['latent_dim']}, beta {settings['beta']:g}, nets {settings['nets']} "
              f"(every setting: summary.json 'spec')", flush=True)

    summary = train(config, progress=args.progress, on_start=announce)
    if not main_process:
        return 0
    if args.evaluate:
        summary = _evaluate_training(summary, out, args.device)
    _print_summary(summary, out)
    return 0


def _evaluate_training(summary: dict, out: str, device: str) -> dict:
    """Coherence and the generation grid of a finished run, added to its summary.json (with
    ``num_classes``, the classifiers' classes: chance coherence is ``1 / num_classes``)."""
    from pyro_mmvae.engine.device import resolve_device
    from pyro_mmvae.metrics.quick import training_report
    from pyro_mmvae.runs import RunFolder, load_run

    torch_device = resolve_device(device)
    with RunFolder(out).locked():
        run = load_run(out, torch_device)
        summary = {**summary, **training_report(run, torch_device)}
        if summary.get("coherence_matrix") is not None:
            summary["num_classes"] = _num_classes(run)
        run.folder.write_summary(summary)
    if summary.get("conditional_coherence_note"):
        # exit 0 all the same: the training succeeded and its checkpoint is sound; the data
        # (a modality absent in every test row) leaves this figure undefined, not wrong
        print(f"warning: coherence (1 -> rest) {summary['conditional_coherence_note']} "
              "(null in summary.json)", file=sys.stderr)
    return summary


def _num_classes(run: Any) -> int | None:
    """The number of classes the coherence classifiers of ``run`` tell apart (as
    :func:`pyro_mmvae.metrics.get_classifiers` counts them), None if unknown."""
    from pyro_mmvae.metrics.classifiers import _infer_num_classes

    try:
        return _infer_num_classes(run.train_ds, run.test_ds)
    except (AttributeError, ValueError):
        return None


def _chance(value: float | None, num_classes: int | None) -> str | None:
    """``"0.812 (chance 0.100)"``: a coherence with the level of guessing one of
    ``num_classes`` classes at random."""
    text = _fmt(value)
    if text is None or not num_classes:
        return text
    return f"{text} (chance {1 / num_classes:.3f})"


def _warmup_note(epoch: Any, settings: dict | None) -> str | None:
    """A note when a model stopped at ``epoch`` inside its KL warm-up
    (``kl_warmup_epochs`` of ``settings``): its figures are not those of its objective."""
    warmup = (settings or {}).get("kl_warmup_epochs") or 0
    if not isinstance(epoch, int) or not isinstance(warmup, int) or epoch >= warmup:
        return None
    return (f"the model stopped inside its KL warm-up: epoch {epoch} of "
            f"kl_warmup_epochs={warmup} weighted the KL terms by {epoch}/{warmup} of beta; "
            f"its figures are not yet those of its objective (train at least {warmup} "
            "epochs)")


def _spec_settings(summary: dict) -> dict:
    """The resolved settings of a run summary (``spec.settings``), over its ``overrides``."""
    spec = summary.get("spec") if isinstance(summary.get("spec"), dict) else {}
    return {**(summary.get("overrides") or {}), **(spec.get("settings") or {})}


def _print_summary(summary: dict, out: str) -> None:
    chance = summary.get("num_classes")
    rows = [
        ("model", summary.get("model")),
        ("dataset", summary.get("dataset")),
        ("epochs", summary.get("epochs")),
        ("precision", summary.get("precision")),
        ("train loss / point", _fmt(summary.get("final_loss"))),
        ("test loss / point", _fmt(summary.get("final_test_loss"))),
        ("coherence (1 -> rest)", _chance(summary.get("conditional_coherence"), chance)),
        ("training seconds", _fmt(summary.get("seconds"), 1)),
        ("device", summary.get("device")),
        ("parameters", summary.get("parameters")),
    ]
    if summary.get("conditional_coherence") is None and summary.get("conditional_coherence_note"):
        rows[6] = ("coherence (1 -> rest)", "n/a (not measurable, see the warning)")
    for label, value in rows:
        if value is not None:
            print(f"  {label:<22} {value}")
    note = _warmup_note(summary.get("epochs"), _spec_settings(summary))
    if note:
        print(f"note: {note}")
    print(f"summary: {out}/summary.json (every resolved setting under \"spec\")")


def _fmt(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _run_summary(run_dir: str) -> dict:
    """``RUN_DIR/summary.json`` of a run ({} when it is absent or unreadable)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as file:
            summary = json.load(file)
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


#: The share of the generated samples in one class from which unconditional coherence is
#: flagged as a collapsed generator rather than agreement.
COLLAPSE_SHARE = 0.9


def _collapse_warning(unconditional: dict) -> str | None:
    """A warning when the prior samples of the unconditional coherence fall (almost) all in
    one class: a collapsed generator agrees with itself and scores ~1."""
    histogram = unconditional.get("class_histogram") or []
    if not histogram or unconditional.get("coherence") is None:
        return None
    share = max(histogram)
    if share < COLLAPSE_SHARE:
        return None
    which = histogram.index(share)
    entropy = unconditional.get("class_entropy")
    spread = "" if entropy is None else (f", class entropy {abs(entropy):.2f} nats of at most "
                                         f"{math.log(len(histogram)):.2f}")
    return (f"unconditional coherence {unconditional['coherence']:.3f} reflects collapsed "
            f"samples, not agreement: {share:.0%} of the generated images are classified as "
            f"class {which}{spread}")


def _print_evaluation(results: dict, run_summary: dict | None = None) -> None:
    """The headline figures of ``eval.json``, each beside what makes it readable (chance
    level, the Fréchet distance of train to test images), then the warnings."""
    coherence = results.get("coherence") or {}
    unconditional = coherence.get("unconditional") or {}
    quality = (results.get("quality") or {}).get("classifier_frechet_distance") or {}
    likelihood = results.get("likelihood") or {}
    joint = likelihood.get("joint") or {}
    by_size = coherence.get("by_subset_size") or {}
    class_avg = coherence.get("by_subset_size_class_average") or {}
    probe = (results.get("probe") or {}).get("by_subset_size") or {}
    point = "sampled" if (results.get("settings") or {}).get("posterior") == "sample" else "mean"
    num_classes = len(unconditional.get("class_histogram") or []) or None
    chance = f" (chance {1 / num_classes:.3f})" if num_classes else ""
    entropy = unconditional.get("class_entropy")
    frechet = _fmt(quality.get("mean_unconditional"), 2)
    if frechet is not None and quality.get("mean_train_vs_test") is not None:
        frechet += (f" (prior samples; train vs test images: "
                    f"{quality['mean_train_vs_test']:.2f})")
    uncond = _fmt(coherence.get("unconditional_coherence"))
    if uncond is not None and entropy is not None and num_classes:
        uncond += f" (class entropy {abs(entropy):.2f} of {math.log(num_classes):.2f} nats)"
    rows = [
        ("model", results.get("model")),
        (f"coherence by |S| ({point} z)", by_size and f"{_by_size(by_size)}{chance}"),
        ("  per-class average", class_avg and _by_size(class_avg)),
        ("unconditional coherence", uncond),
        ("classifier accuracy", _fmt(coherence.get("mean_classifier_accuracy"))),
        ("classifier Fréchet dist.", frechet),
        ("log p(X) / point", _fmt(joint.get("mean"), 2)),
        ("proposal", likelihood.get("best_proposal")),
        ("k-hat > 0.7 (fraction)",
         _fmt((joint.get("pareto_k") or {}).get("fraction_above_0.7"))),
        ("ESS / K", _fmt((joint.get("ess") or {}).get("mean_fraction"))),
        ("likelihood", likelihood.get("skipped") and f"skipped: {likelihood['skipped']}"),
        ("probe by |S|", probe and f"{_by_size(probe)}{chance}"),
        ("seconds", _fmt(results.get("total_seconds"), 1)),
    ]
    for label, value in rows:
        if value:
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
    collapse = _collapse_warning(unconditional)
    if collapse:
        print(f"warning: {collapse}")
    # Figures that the data leaves undefined (a modality absent in every test row) are null
    # in eval.json and "n/a" above; the rest of the evaluation stands, so the exit status
    # stays 0 and each reason is printed once.
    for name in ("coherence", "quality", "probe"):
        note = (results.get(name) or {}).get("note")
        if note:
            print(f"warning: {name} {note}")
    note = _warmup_note(results.get("epoch"), _spec_settings(run_summary or {}))
    if note:
        print(f"note: {note}")


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
        break_lock=args.break_lock,
    )
    _print_evaluation(results, _run_summary(args.run_dir))
    print(f"evaluation: {args.out or args.run_dir}/{EVAL_NAME}")
    return 0


def _by_size(values: dict) -> str | None:
    """``"1:0.812 2:n/a"``: figures by subset size (n/a where not measurable)."""
    return " ".join(f"{k}:{'n/a' if v is None else f'{v:.3f}'}"
                    for k, v in values.items()) or None


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
    """Run ``pyro-mmvae`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Args:
        argv: the command-line arguments without the program name, e.g.
            ``["train", "--model", "mmvae"]``; None: ``sys.argv[1:]``; empty: ``train``.

    Returns:
        0 on success, 2 for a usage error or a problem the user can fix (printed as one
        ``error:`` line), 1 for a diverged run, 130 when interrupted.
    """
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
        print(f"error: {error_message(error)}", file=sys.stderr)
        return code


def error_message(error: BaseException) -> str:
    """``error`` as one line: Pyro's trace-shape table (which Pyro appends, right-justified,
    to errors raised inside a traced model) cut off, the lines before it joined.

    Args:
        error: the exception to report.
    """
    text = re.split(r"\n[ \t]*Trace Shapes:", str(error), maxsplit=1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
