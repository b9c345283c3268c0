"""Subsets of modalities by name: which source sets S an evaluation visits, and their keys.

A source subset is a tuple of modality names in the model's order, e.g. ``("m0", "m2")``;
its key in results is ``"m0+m2"`` (:func:`subset_key`). The index-level helpers the
posteriors need (indicator matrices, availability) live in
:mod:`pyro_mmvae.distributions.experts`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

#: Joins the names of a subset into its key in results (``"m0+m2"``).
SUBSET_SEPARATOR = "+"

__all__ = ["SUBSET_SEPARATOR", "complement", "source_subsets", "subset_key", "subset_size"]


def source_subsets(
    names: Sequence[str],
    subset_sizes: Sequence[int] | None,
    max_subsets_per_size: int | None = None,
    seed: int = 0,
) -> list[tuple[str, ...]]:
    """Source subsets S with :math:`|S|` in ``subset_sizes`` (default 1..M-1), in combination
    order.

    With ``max_subsets_per_size`` at most that many subsets of each size are kept, picked
    uniformly at random with ``seed`` (deterministic), keeping their combination order.

    Args:
        names: the M modality names, in the model's order (at least two).
        subset_sizes: the sizes :math:`|S|` to visit, each in ``1..M-1``; ``None``: all of
            them.
        max_subsets_per_size: keep at most this many subsets of each size (at least 1);
            ``None`` keeps all :math:`\\binom{M}{k}`.
        seed: seed of the random pick (only used with ``max_subsets_per_size``).

    Returns:
        The subsets as tuples of names, by increasing size.
    """
    m = len(names)
    if m < 2:
        raise ValueError(f"coherence needs at least two modalities, got {list(names)}.")
    sizes = list(range(1, m)) if subset_sizes is None else sorted({int(k) for k in subset_sizes})
    bad = [k for k in sizes if not 1 <= k <= m - 1]
    if bad or not sizes:
        raise ValueError(f"subset_sizes must lie in 1..{m - 1} (M = {m} modalities), got {bad}.")
    if max_subsets_per_size is not None and max_subsets_per_size < 1:
        raise ValueError(f"max_subsets_per_size must be >= 1, got {max_subsets_per_size}.")
    rng = random.Random(seed)
    subsets: list[tuple[str, ...]] = []
    for k in sizes:
        combos = list(itertools.combinations(names, k))
        if max_subsets_per_size is not None and len(combos) > max_subsets_per_size:
            keep = sorted(rng.sample(range(len(combos)), max_subsets_per_size))
            combos = [combos[i] for i in keep]
        subsets.extend(combos)
    return subsets


def subset_key(subset: Sequence[str]) -> str:
    """String key of a source subset, e.g. ``("m0", "m2") -> "m0+m2"``.

    Args:
        subset: modality names, joined in the given order with :data:`SUBSET_SEPARATOR`.
    """
    return SUBSET_SEPARATOR.join(subset)


def subset_size(key: str) -> int:
    """:math:`|S|` of a key made by :func:`subset_key` (``"m0+m2" -> 2``).

    Args:
        key: a subset key such as ``"m0+m2"``.
    """
    return len(key.split(SUBSET_SEPARATOR))


def complement(names: Sequence[str], subset: Sequence[str]) -> tuple[str, ...]:
    """The modalities of ``names`` not in ``subset``, in the order of ``names``.

    Args:
        names: all modality names, in the model's order.
        subset: the names to leave out (e.g. the sources S, giving the targets).
    """
    return tuple(n for n in names if n not in subset)
