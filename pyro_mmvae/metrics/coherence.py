r"""Coherence of generated modalities, judged by per-modality digit classifiers.

Conditional (cross) coherence (Shi et al. 2019; Sutter et al. 2021; Palumbo et al. 2023):
for a non-empty source subset S and a target t not in S,

.. math:: C(S \to t) = \frac{1}{N} \sum_{i=1}^N
          \mathbb{1}\big[f_t(\hat x_t^{(i)}) = y^{(i)}\big],
          \qquad \hat x_t^{(i)} = \mathbb{E}\, p_\theta(x_t \mid z = \mathbb{E}_{q(z|X_S^{(i)})} z),

i.e. the decoder mean at the posterior mean (``vae.generate``), classified by the target's
classifier :math:`f_t` and compared with the label. Reported per (S, t), averaged by :math:`|S|`,
as the single-source matrix and as leave-one-out (:math:`|S| = M - 1`) figures.

Unconditional coherence: draw :math:`z \sim p(z)` (``vae.sample``), generate every modality
and count the samples whose M predicted classes agree. A collapsed generator (one blob for
every z) scores ~1.0, so the predicted-class histogram, its entropy and the mean pairwise
distance between generated images are reported beside it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from pyro_mmvae.metrics.classifiers import ModalityClassifiers

DIVERSITY_IMAGES = 256  # images per modality used for the pairwise-distance figure
SUBSET_SEPARATOR = "+"


@contextlib.contextmanager
def evaluation_mode(vae: Any) -> Iterator[None]:
    """``torch.no_grad()`` with ``vae`` in eval mode; restores its previous train/eval mode."""
    was_training = getattr(vae, "training", None)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training is not None and hasattr(vae, "train"):
            vae.train(was_training)


def _model_names(vae: Any, fallback: Sequence[str]) -> tuple[str, ...]:
    return tuple(getattr(vae, "names", None) or fallback)


def _check_classifiers(names: Sequence[str], classifiers: ModalityClassifiers) -> None:
    missing = [n for n in names if n not in classifiers.names]
    if missing:
        raise ValueError(
            f"no classifier for modalities {missing} (classifiers exist for "
            f"{list(classifiers.names)}); train them with get_classifiers on this dataset."
        )


def source_subsets(
    names: Sequence[str],
    subset_sizes: Sequence[int] | None,
    max_subsets_per_size: int | None = None,
    seed: int = 0,
) -> list[tuple[str, ...]]:
    """Source subsets S with :math:`|S|` in ``subset_sizes`` (default 1..M-1), in combination order.

    With ``max_subsets_per_size`` at most that many subsets of each size are kept, picked
    uniformly at random with ``seed`` (deterministic), keeping their combination order.
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
    """String key of a source subset, e.g. ``("m0", "m2") -> "m0+m2"``."""
    return SUBSET_SEPARATOR.join(subset)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def conditional_coherence(
    vae: Any,
    dataset: Any,
    classifiers: ModalityClassifiers,
    subset_sizes: Sequence[int] | None = (1,),
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    max_subsets_per_size: int | None = None,
) -> dict[str, Any]:
    """Conditional coherence C(S -> t) for every chosen source subset S and target t not in S.

    Each batch is passed once per subset S: ``vae.generate({s: x_s for s in S}, sources=S,
    targets=[all t not in S])`` (only the sources are handed to the model). Generation uses
    the posterior mean (``"posterior": "mean"`` in the result).

    Returns a dict with
      - ``by_subset``: ``{"m0+m2": {target: accuracy}}`` for every evaluated subset;
      - ``by_subset_size``: ``{k: mean over (S, t) with |S| = k}``;
      - ``single_source_matrix`` ``{src: {tgt: acc}}`` and ``mean_single_source`` (if 1 is
        among the sizes, else absent / None);
      - ``leave_one_out`` ``{tgt: acc from all other modalities}`` and ``mean_leave_one_out``
        (if M - 1 is among the sizes, else absent / None);
      - ``classifier_accuracy`` (the classifiers' accuracy on real test images — the ceiling
        a perfect generator would reach), ``posterior``, ``num_datapoints``, ``subset_sizes``.
    """
    names = _model_names(vae, dataset.modalities)
    missing = [n for n in names if n not in dataset.modalities]
    if missing:
        raise ValueError(f"the dataset lacks the model's modalities {missing}.")
    _check_classifiers(names, classifiers)
    subsets = source_subsets(names, subset_sizes, max_subsets_per_size)
    targets = {s: [t for t in names if t not in s] for s in subsets}
    correct = {(s, t): 0 for s in subsets for t in targets[s]}
    total = 0
    with evaluation_mode(vae):
        for batch, labels in dataset.batches(batch_size, device=device):
            labels = labels.to(classifiers.device)
            for s in subsets:
                generated = vae.generate({m: batch[m] for m in s}, sources=list(s),
                                         targets=targets[s])
                for t in targets[s]:
                    hits = classifiers.predict(t, generated[t]) == labels
                    correct[s, t] += int(hits.sum())
            total += len(labels)
    if total == 0:
        raise ValueError("cannot compute coherence on an empty dataset.")
    accuracy = {key: hits / total for key, hits in correct.items()}
    return _summarise_conditional(names, subsets, targets, accuracy, classifiers, total)


def _summarise_conditional(
    names: Sequence[str],
    subsets: list[tuple[str, ...]],
    targets: dict[tuple[str, ...], list[str]],
    accuracy: dict[tuple[tuple[str, ...], str], float],
    classifiers: ModalityClassifiers,
    total: int,
) -> dict[str, Any]:
    sizes = sorted({len(s) for s in subsets})
    by_size = {k: _mean([a for (s, _), a in accuracy.items() if len(s) == k]) for k in sizes}
    result: dict[str, Any] = {
        "by_subset": {subset_key(s): {t: accuracy[s, t] for t in targets[s]} for s in subsets},
        "by_subset_size": by_size,
        "mean_single_source": None,
        "mean_leave_one_out": None,
        "classifier_accuracy": dict(classifiers.test_accuracy),
        "posterior": "mean",
        "num_datapoints": total,
        "subset_sizes": sizes,
    }
    singles = [s for s in subsets if len(s) == 1]
    if singles:
        matrix = {s[0]: {t: accuracy[s, t] for t in targets[s]} for s in singles}
        result["single_source_matrix"] = matrix
        result["mean_single_source"] = _mean([a for row in matrix.values() for a in row.values()])
    leave_one_out = [s for s in subsets if len(s) == len(names) - 1]
    if leave_one_out:
        by_target = {targets[s][0]: accuracy[s, targets[s][0]] for s in leave_one_out}
        loo = {t: by_target[t] for t in names if t in by_target}
        result["leave_one_out"] = loo
        result["mean_leave_one_out"] = _mean(list(loo.values()))
    return result


# ---------------------------------------------------------------------- unconditional
def _entropy(probabilities: Tensor) -> float:
    p = probabilities[probabilities > 0]
    return float(-(p * p.log()).sum())


def mean_pairwise_l2(images: Tensor) -> float:
    """Mean Euclidean distance between all pairs i < j of ``images`` (flattened); 0 if < 2."""
    flat = images.reshape(images.shape[0], -1).double()
    n = flat.shape[0]
    if n < 2:
        return 0.0
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    return float(distances.sum() / (n * (n - 1)))


def unconditional_coherence(
    vae: Any,
    classifiers: ModalityClassifiers,
    num_samples: int = 1000,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Fraction of prior samples whose M generated modalities get the same predicted class.

    ``vae.sample(n)`` gives the decoder means for z ~ p(z) (and w ~ p(w) where the model has
    private latents). Beside the coherence the result reports

      - ``class_histogram``: frequency of each predicted class, pooled over all modalities
        (sums to 1), and ``class_histogram_by_modality``;
      - ``class_entropy`` (nats) of the pooled histogram and ``class_entropy_normalised``
        (divided by log K: 1 = uniform over the K classes, 0 = a single class);
      - ``mean_pairwise_l2``: per modality, the mean L2 distance between pairs of generated
        images (clamped to [0, 1]; first 256 samples); ``diversity`` is that figure for the
        first modality. A collapsed generator has coherence ~1 with diversity ~0.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}."
        )
    predictions: dict[str, list[Tensor]] = {}
    kept: dict[str, list[Tensor]] = {}
    with evaluation_mode(vae):
        for start in range(0, num_samples, batch_size):
            samples = vae.sample(min(batch_size, num_samples - start))
            for name, x in samples.items():
                _check_classifiers([name], classifiers)
                predictions.setdefault(name, []).append(classifiers.predict(name, x))
                have = sum(len(t) for t in kept.get(name, []))
                if have < DIVERSITY_IMAGES:
                    part = x[: DIVERSITY_IMAGES - have].detach().float().clamp(0, 1).cpu()
                    kept.setdefault(name, []).append(part)
    names = _model_names(vae, list(predictions))
    if len(names) < 2:
        raise ValueError("unconditional coherence needs a model with at least two modalities.")
    preds = torch.stack([torch.cat(predictions[n]) for n in names])  # (M, num_samples)
    coherent = (preds == preds[0]).all(dim=0)
    k = classifiers.num_classes
    by_modality = {n: torch.bincount(preds[i], minlength=k).double() / preds.shape[1]
                   for i, n in enumerate(names)}
    pooled = torch.bincount(preds.reshape(-1), minlength=k).double() / preds.numel()
    spread = {n: mean_pairwise_l2(torch.cat(kept[n])) for n in names}
    return {
        "coherence": float(coherent.double().mean()),
        "num_samples": int(preds.shape[1]),
        "class_histogram": pooled.tolist(),
        "class_histogram_by_modality": {n: h.tolist() for n, h in by_modality.items()},
        "class_entropy": _entropy(pooled),
        "class_entropy_normalised": _entropy(pooled) / math.log(k),
        "mean_pairwise_l2": spread,
        "diversity": spread[names[0]],
        "diversity_modality": names[0],
    }
