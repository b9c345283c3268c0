"""Training stages: epochs during which groups of parameters are frozen.

A schedule is a sequence of :class:`Stage` ``(epochs, frozen)``: ``epochs`` consecutive epochs
during which every parameter whose name matches one of the ``frozen`` patterns gets no update
at all (no gradient, no Adam step: its moments are not touched either). Stages follow each
other from epoch 1; the last stage lasts until the end of training, whatever its length.

``epochs`` is a number of epochs (int >= 1), a fraction of the run's epochs (float in
(0, 1), rounded to the nearest epoch, at least 1) or ``None`` ("rest", last stage only).
A pattern is matched against the names of ``vae.named_parameters()`` (e.g.
``mods.m0.encoder.trunk.0.weight``, ``joint_encoder.head.0.bias``) with :mod:`fnmatch`
rules; ``P`` matches a name equal to ``P`` or starting with ``P.``, so ``mods.*.decoder``
freezes every decoder and ``joint_encoder`` the whole joint encoder.

TELBO (Vedantam et al. 2018) trains in two stages, which is the zoo's default for it::

    (Stage(0.5, ("mods.*.encoder",)),                       # joint encoder + decoders
     Stage(None, ("joint_encoder", "mods.*.decoder")))      # then the unimodal encoders

Users set a schedule with the CLI (``pyro-mmvae train --stage 0.5:mods.*.encoder --stage
rest:joint_encoder,mods.*.decoder``), with ``TrainConfig(stages=[...])`` (strings in the CLI
format, :class:`Stage` objects or ``(epochs, patterns)`` pairs), or with the model setting
``stages`` (``build_model(..., stages=...)``, the default of the run). Checkpoints store the
schedule in epochs, and ``--resume`` continues it (also across a stage boundary); a resumed
run that asks for another schedule is refused (:func:`pyro_mmvae.run_config.check_resume`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

REST = "rest"


@dataclass(frozen=True)
class Stage:
    """``epochs`` epochs (int, fraction of the run, or None = the rest) with ``frozen``
    parameter-name patterns held fixed.

    Args:
        epochs: the stage's length: an int >= 1 (epochs), a float in (0, 1) (that fraction
            of the run, rounded, at least 1 epoch) or None (the rest of training; last stage
            only).
        frozen: parameter-name patterns (fnmatch; ``P`` also matches ``P.*``) whose
            parameters get no update during the stage; default none.

    Raises:
        ValueError: for a length out of range or an empty pattern.
    """

    epochs: int | float | None
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        epochs = self.epochs
        if epochs is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, int | float):
                raise ValueError(f"stage length must be an int, a fraction or None, got "
                                 f"{epochs!r}")
            if isinstance(epochs, float) and not 0 < epochs < 1:
                raise ValueError(f"a fractional stage length must lie in (0, 1), got {epochs}")
            if isinstance(epochs, int) and epochs < 1:
                raise ValueError(f"a stage lasts at least one epoch, got {epochs}")
        object.__setattr__(self, "frozen", tuple(str(p) for p in self.frozen))
        if any(not p for p in self.frozen):
            raise ValueError("empty parameter-name pattern in a stage")

    def length(self, total_epochs: int) -> int | None:
        """Epochs of this stage in a run of ``total_epochs`` (None: until the end).

        Args:
            total_epochs: the run's number of epochs, which a fractional length scales.
        """
        if self.epochs is None:
            return None
        if isinstance(self.epochs, float):
            return max(1, round(self.epochs * total_epochs))
        return int(self.epochs)


def parse_stage(text: str) -> Stage:
    """``"EPOCHS:PATTERN[,PATTERN...]"`` -> :class:`Stage`; EPOCHS is an int, a fraction in
    (0, 1) or ``rest``; no patterns (``"3:"``) freezes nothing.

    Args:
        text: one ``--stage`` value, e.g. ``"0.5:mods.*.encoder"`` or
            ``"rest:joint_encoder,mods.*.decoder"``.

    Raises:
        ValueError: when there is no ``:`` or EPOCHS is not a valid length.
    """
    head, sep, tail = text.partition(":")
    if not sep:
        raise ValueError(f"a stage is written EPOCHS:PATTERNS (e.g. 0.5:mods.*.encoder), got "
                         f"{text!r}")
    head = head.strip()
    try:
        epochs: int | float | None = (None if head == REST else
                                      int(head) if head.isdigit() else float(head))
    except ValueError:
        raise ValueError(f"stage length {head!r} is not an int, a fraction or 'rest'") from None
    patterns = tuple(p.strip() for p in tail.split(",") if p.strip())
    return Stage(epochs, patterns)


def as_stages(value: Any) -> tuple[Stage, ...]:
    """A schedule from ``None``/``()`` (no stages), strings in the CLI format, :class:`Stage`
    objects, or ``(epochs, patterns)`` pairs (also as JSON lists).

    Args:
        value: None, one stage (a string or :class:`Stage`), or a sequence of strings,
            :class:`Stage` objects and ``(epochs, patterns)`` pairs, where ``patterns`` is a
            string or a sequence of strings.

    Raises:
        ValueError: for an item that is none of these, or a ``rest`` stage before the last.
    """
    if value is None:
        return ()
    if isinstance(value, str | Stage):
        value = [value]
    stages = []
    for item in value:
        if isinstance(item, Stage):
            stages.append(item)
        elif isinstance(item, str):
            stages.append(parse_stage(item))
        elif isinstance(item, Sequence) and len(item) == 2:
            epochs, patterns = item
            patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns or ())
            stages.append(Stage(epochs, patterns))
        else:
            raise ValueError(f"cannot read a training stage from {item!r}; use "
                             "'EPOCHS:PATTERNS' or (epochs, patterns)")
    if any(s.epochs is None for s in stages[:-1]):
        raise ValueError("only the last stage may last for the 'rest' of training")
    return tuple(stages)


def stages_to_json(stages: Iterable[Stage]) -> list[list[Any]]:
    """Plain lists ``[[epochs, [patterns...]], ...]`` (for checkpoints and summaries).

    Args:
        stages: the schedule; :func:`as_stages` reads the result back.
    """
    return [[s.epochs, list(s.frozen)] for s in stages]


def resolve_stages(stages: Sequence[Stage], total_epochs: int) -> tuple[Stage, ...]:
    """Fractional lengths turned into epochs of a run of ``total_epochs`` (the trainer stores
    this form in checkpoints, so a resumed run keeps the boundaries it started with).

    Args:
        stages: the schedule.
        total_epochs: the run's number of epochs.
    """
    return tuple(Stage(s.length(total_epochs), s.frozen) for s in stages)


def frozen_patterns(stages: Sequence[Stage], epoch: int, total_epochs: int) -> tuple[str, ...]:
    """The patterns frozen in ``epoch`` (1-based) of a run of ``total_epochs``.

    Args:
        stages: the schedule (the last stage lasts until the end, whatever its length).
        epoch: the epoch, counted from 1.
        total_epochs: the run's number of epochs, for fractional lengths.

    Returns:
        The ``frozen`` patterns of the stage holding ``epoch``; ``()`` without stages.
    """
    end = 0
    for index, stage in enumerate(stages):
        length = stage.length(total_epochs)
        end = math.inf if length is None or index == len(stages) - 1 else end + length
        if epoch <= end:
            return stage.frozen
    return ()


def matches(name: str, pattern: str) -> bool:
    """``name`` equals ``pattern`` or lies under it (``pattern.*``), fnmatch rules.

    Args:
        name: a parameter name of ``named_parameters()``, e.g. ``mods.m0.encoder.fc.weight``.
        pattern: an fnmatch pattern (case-sensitive), e.g. ``mods.*.encoder``.
    """
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def check_patterns(module: nn.Module, stages: Sequence[Stage]) -> None:
    """Raise ValueError for a pattern that matches no parameter of ``module``.

    Args:
        module: the model whose ``named_parameters()`` the patterns must match.
        stages: the schedule whose ``frozen`` patterns are checked.
    """
    names = [name for name, _ in module.named_parameters()]
    for stage in stages:
        for pattern in stage.frozen:
            if not any(matches(name, pattern) for name in names):
                examples = ", ".join(names[:4])
                raise ValueError(f"stage pattern {pattern!r} matches no parameter of the model "
                                 f"(parameter names look like: {examples}, ...)")


def freeze(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad`` off for the parameters matching ``patterns`` (and drop their
    gradients), on for all others; return the frozen names.

    Pyro's ``pyro.module`` does not register parameters without ``requires_grad``, so an SVI
    step neither differentiates nor updates them.

    Args:
        module: the model, changed in place.
        patterns: the frozen patterns (see :func:`matches`); empty unfreezes everything.
    """
    frozen = []
    for name, param in module.named_parameters():
        hold = any(matches(name, p) for p in patterns)
        param.requires_grad_(not hold)
        if hold:
            param.grad = None
            frozen.append(name)
    return frozen


def unfreeze(module: nn.Module) -> None:
    """Every parameter trainable again.

    Args:
        module: the model whose parameters all get ``requires_grad`` back, in place.
    """
    for param in module.parameters():
        param.requires_grad_(True)
