r"""Coherence of generated modalities, judged by per-modality digit classifiers.

Conditional (cross) coherence (Shi et al. 2019; Sutter et al. 2021; Palumbo et al. 2023):
for a non-empty source subset S and a target t not in S,

.. math:: C(S \to t) = \frac{1}{N} \sum_{i=1}^N
          \mathbb{1}\big[f_t(\hat x_t^{(i)}) = y^{(i)}\big],
          \qquad \hat x_t^{(i)} = \mathbb{E}\, p_\theta(x_t \mid z = \mathbb{E}_{q(z|X_S^{(i)})} z),

i.e. the decoder mean at the posterior mean (``vae.generate``), classified by the target's
classifier :math:`f_t` and compared with the label. With ``posterior="sample"`` the decoder
mean at one draw :math:`z \sim q(z|X_S)` per data point is classified instead (MultiVae's
default), which includes the posterior's spread in the figure. Reported per (S, t),
averaged by :math:`|S|`, as the single-source matrix and as leave-one-out
(:math:`|S| = M - 1`) figures.

Unconditional coherence: draw :math:`z \sim p(z)` (``vae.sample``), generate every modality
and count the samples whose M predicted classes agree. A collapsed generator (one blob for
every z) scores ~1.0, so the predicted-class histogram, its entropy and the mean pairwise
distance between generated images are reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pyro_mmvae.distributions.subsets import source_subsets, subset_key
from pyro_mmvae.metrics.classifiers import ModalityClassifiers
from pyro_mmvae.metrics.common import evaluation_mode, progress_bar
from pyro_mmvae.models.base import check_posterior_point

DIVERSITY_IMAGES = 256  # images per modality used for the pairwise-distance figure
#: Latents decoded by one decoder call of the cached engine on an accelerator (bounds its
#: memory) and on the CPU, where smaller calls run faster: the PolyMNIST ResNet decoder ran
#: at 45 GFLOP per CPU second in calls of 32 latents and at 30 in calls of 4096 (one thread,
#: AMD EPYC; ``benchmarks/results/evaluation_vs_multivae_cpu.md``).
DECODE_CHUNK = 4096
CPU_DECODE_CHUNK = 32
#: Engines of :func:`conditional_coherence` (``"mixture"`` there only; the others are
#: :func:`cross_generate`'s).
ENGINES = ("auto", "cached", "generate", "mixture")

__all__ = ["ENGINES", "conditional_coherence", "cross_generate", "mean_pairwise_l2",
           "supports_cached_generation", "supports_mixture_coherence",
           "unconditional_coherence"]

Plan = Sequence[tuple[tuple[str, ...], Sequence[str]]]


def _model_names(vae: Any, fallback: Sequence[str]) -> tuple[str, ...]:
    return tuple(getattr(vae, "names", None) or fallback)


def _check_classifiers(names: Sequence[str], classifiers: ModalityClassifiers) -> None:
    missing = [n for n in names if n not in classifiers.names]
    if missing:
        raise ValueError(
            f"no classifier for modalities {missing} (classifiers exist for "
            f"{list(classifiers.names)}); train them with get_classifiers on this dataset."
        )


# ---------------------------------------------------------------------- cross generation
def supports_cached_generation(vae: Any) -> bool:
    """Whether ``vae`` builds its subset posteriors from cached experts (the library's
    models: :meth:`~pyro_mmvae.models.base.MultimodalVAE.generation_latents`).

    Args:
        vae: any model; True when it has callable ``encode_experts`` and
            ``generation_latents``.
    """
    return all(callable(getattr(vae, a, None)) for a in ("encode_experts", "generation_latents"))


def supports_mixture_coherence(vae: Any) -> bool:
    """Whether ``vae`` generates from a subset S by decoding one uniformly drawn expert of S
    (a mixture-of-experts posterior, ``mixture_generation = True``: MMVAE, MMVAE+ and its
    private-latent baseline), with the cached-expert API.

    Args:
        vae: any model; its ``mixture_generation`` attribute and cached-expert methods are
            read.
    """
    return bool(getattr(vae, "mixture_generation", False)) and supports_cached_generation(vae)


def _decode(vae: Any, target: str, latents: Tensor, chunk: int | None) -> Tensor:
    decode = vae.mods[target].mean
    if chunk is None:
        chunk = CPU_DECODE_CHUNK if latents.device.type == "cpu" else DECODE_CHUNK
    return torch.cat([decode(part) for part in latents.split(chunk)])


def _posterior_kwargs(posterior: str) -> dict[str, str]:
    """``posterior=`` for ``generate``/``generation_latents`` only when it is not the default,
    so that a user's model written before the option (no such argument) still evaluates."""
    return {} if check_posterior_point(posterior) == "mean" else {"posterior": posterior}


def _generate_cached(vae: Any, batch: dict[str, Tensor], plan: Plan, chunk: int | None,
                     posterior: str = "mean") -> dict[tuple[tuple[str, ...], str], Tensor]:
    """Encode once, build every subset's latents, decode each target in one large batch.

    Subsets are visited in ``plan`` order, so random choices (a mixture's component, a
    private latent drawn from its prior) use the generator as ``vae.generate`` would.
    """
    experts = vae.encode_experts(batch)
    latents: dict[str, list[tuple[tuple[str, ...], Tensor]]] = {}
    for sources, targets in plan:
        for t, latent in vae.generation_latents(experts, list(sources), list(targets),
                                                **_posterior_kwargs(posterior)).items():
            latents.setdefault(t, []).append((sources, latent))
    out = {}
    for t, parts in latents.items():
        images = _decode(vae, t, torch.cat([latent for _, latent in parts]), chunk)
        for (sources, _), image in zip(parts, images.split([len(p) for _, p in parts]),
                                            strict=True):
            out[sources, t] = image
    return out


def cross_generate(
    vae: Any,
    batch: dict[str, Tensor],
    plan: Plan,
    engine: str = "auto",
    chunk: int | None = None,
    posterior: str = "mean",
) -> dict[tuple[tuple[str, ...], str], Tensor]:
    """Decoder means of every ``(sources, target)`` of ``plan`` (pairs ``(S, targets)``).

    ``engine="generate"`` calls ``vae.generate(X_S, sources=S, targets=...)`` once per S;
    ``"cached"`` encodes each data point once (``vae.encode_experts``), builds every
    subset's posterior from the cached expert parameters and decodes each target for all
    subsets at once, in chunks of ``chunk`` latents (default: :data:`CPU_DECODE_CHUNK` on the
    CPU, :data:`DECODE_CHUNK` elsewhere): the same numbers (and random draws)
    at a fraction of the encoder passes and Python calls. ``"auto"``: cached where the
    model supports it (:func:`supports_cached_generation`). ``posterior``: decode the
    posterior mean of z or one draw from it (``"mean"``, ``"sample"``). Call under
    ``torch.no_grad()``.

    Args:
        vae: the model (``generate``, or ``encode_experts`` and ``generation_latents``).
        batch: the inputs, dict of modality name -> tensor ``(B, ...)``; every source named
            in ``plan`` must be present.
        plan: pairs ``(S, targets)``: a tuple of source names and the target names to
            generate from it.
        engine: ``"auto"`` (default), ``"cached"`` or ``"generate"``.
        chunk: latents per decoder call of the cached engine (``None``: the default above).
        posterior: ``"mean"`` (default) or ``"sample"``, the point of :math:`q(z|X_S)`
            decoded.

    Returns:
        ``{(S, t): decoder means (B, ...)}`` for every pair of the plan.
    """
    check_posterior_point(posterior)
    if engine not in ENGINES or engine == "mixture":
        raise ValueError(f"unknown engine {engine!r}; choose one of: auto, cached, generate")
    cached = engine == "cached" or (engine == "auto" and supports_cached_generation(vae))
    if cached:
        if not supports_cached_generation(vae):
            raise ValueError(f"{type(vae).__name__} has no encode_experts/generation_latents; "
                             "use engine='generate'")
        return _generate_cached(vae, batch, plan, chunk, posterior)
    out = {}
    for sources, targets in plan:
        generated = vae.generate({m: batch[m] for m in sources}, sources=list(sources),
                                 targets=list(targets), **_posterior_kwargs(posterior))
        out.update({(sources, t): generated[t] for t in targets})
    return out


def _generates(vae: Any, sources: Sequence[str], target: str) -> bool:
    """Whether ``vae`` generates ``target`` from ``sources``: every pair, unless the model
    lists the pairs it defines in ``generation_pairs`` (``((sources...), target)`` tuples;
    the conditional VAE defines one)."""
    pairs = getattr(vae, "generation_pairs", None)
    if pairs is None:
        return True
    return (frozenset(sources), target) in {(frozenset(s), t) for s, t in pairs}


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None (not measurable) when there is no value or one is not measurable:
    a mean over the measurable part only would not be the same figure as other runs'."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(sum(values) / len(values))


#: Prefix of the reasons why a figure is not measurable (reported as ``null`` beside them).
NOT_MEASURABLE = "not measurable"


def _unjudged_targets(names: Sequence[str], classifiers: ModalityClassifiers, rows: int
                      ) -> dict[str, str]:
    """Targets whose classifier has no measurable test accuracy (no test row observes the
    modality: the classifier cannot be checked, and may never have been trained), with why."""
    accuracy = classifiers.test_accuracy
    return {t: f"modality {t} is absent in all {rows} test rows evaluated, so its classifier "
               "cannot be checked" for t in names if t in accuracy and accuracy[t] is None}


def _unobserved_reason(sources: Sequence[str], observed_by_modality: dict[str, int],
                       rows: int) -> str:
    """Why no evaluated row observes every source of S."""
    absent = [m for m in sources if observed_by_modality.get(m, 1) == 0]
    if absent:
        return f"modality {absent[0]} is absent in all {rows} test rows evaluated"
    return f"no test row evaluated observes {', '.join(sources)} together"


def conditional_coherence(
    vae: Any,
    dataset: Any,
    classifiers: ModalityClassifiers,
    subset_sizes: Sequence[int] | None = (1,),
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    max_subsets_per_size: int | None = None,
    engine: str = "auto",
    progress: bool = False,
    posterior: str = "mean",
) -> dict[str, Any]:
    r"""Conditional coherence C(S -> t) for every chosen source subset S and target t not in S.

    Generation decodes the posterior mean of z, or with ``posterior="sample"`` one draw
    :math:`z \sim q(z|X_S)` per data point (recorded as ``"posterior"`` in the result), through
    :func:`cross_generate` with ``engine``: each batch is encoded once and every target
    decoded for all subsets at once (``"cached"``, the library's models), or passed once per
    subset S to ``vae.generate({s: x_s for s in S}, sources=S, targets=[all t not in S])``
    (``"generate"``; only the sources are handed to the model). Each target's images of all
    subsets are classified in one call. ``progress`` shows a bar on stderr.

    **Mixture posteriors** (MMVAE, MMVAE+; ``engine="mixture"``, and ``"auto"`` for them):
    generation from S decodes the mean of one expert :math:`e \in S` drawn uniformly, so the
    coherence of S is the single-source one of the drawn expert. Instead of one draw per
    row this engine takes its expectation over the draw,

    .. math:: C(S \to t) = \frac1N \sum_i \frac{1}{|S|} \sum_{e \in S}
              \mathbb{1}\big[f_t(\hat x_t^{(i, e)}) = y^{(i)}\big],

    from the M(M-1) single-source generations alone: the same expected value as drawing
    (``"cached"``, ``"generate"``) with less variance, and for all 30 subsets of five
    modalities 20 decoded images per tuple instead of 75. MMVAE+ draws the target's private
    latent from its prior once per (expert, target) instead of once per (S, target).

    With missing modalities (a dataset with presence masks, e.g. ``with_missing``),
    C(S -> t) averages over the rows that observe every source of S (``observed_rows``
    counts them); the generation itself never reads an absent entry. A pair is **not
    measurable** when no row observes every source of S, or when the target's classifier
    has no measurable test accuracy (no test row observes t): its accuracy is ``None``, so is
    every mean over it, and ``not_measurable`` (``{"m2 -> m0": reason}``) and ``note`` (one
    line) say why. ``None`` rather than NaN: the results stay strict JSON.

    Returns a dict with
      - ``by_subset``: ``{"m0+m2": {target: accuracy}}`` for every evaluated subset;
      - ``by_subset_size``: ``{k: mean over (S, t) with |S| = k}``;
      - ``by_subset_size_class_average``: the same with each C(S -> t) averaged over the
        classes instead of the rows (MultiVae's per-class figure; equal to
        ``by_subset_size`` when every class has as many test rows);
      - ``single_source_matrix`` ``{src: {tgt: acc}}`` and ``mean_single_source`` (if 1 is
        among the sizes, else absent / None);
      - ``leave_one_out`` ``{tgt: acc from all other modalities}`` and ``mean_leave_one_out``
        (if M - 1 is among the sizes, else absent / None);
      - ``classifier_accuracy`` (the classifiers' accuracy on real test images — the ceiling
        a perfect generator would reach), ``posterior``, ``num_datapoints``, ``subset_sizes``.

    Args:
        vae: the model (a :mod:`pyro_mmvae.models` VAE or any model with ``generate``).
        dataset: the labelled test dataset (``batches`` yields ``(batch, labels)``), with the
            model's modalities; not empty.
        classifiers: one classifier per modality of the model
            (:func:`~pyro_mmvae.metrics.classifiers.get_classifiers`).
        subset_sizes: the sizes :math:`|S|` to evaluate, each in 1..M-1 (default ``(1,)``:
            single sources; ``None``: all of 1..M-1).
        batch_size: data points per batch (default 256).
        device: where to run the model (default ``"cpu"``).
        max_subsets_per_size: at most this many subsets of each size, a seeded random pick
            (``None``, the default: all).
        engine: one of :data:`ENGINES` (default ``"auto"``).
        progress: show a progress bar on stderr (default False).
        posterior: ``"mean"`` (default) or ``"sample"``, the point of :math:`q(z|X_S)`
            decoded.
    """
    names = _model_names(vae, dataset.modalities)
    missing = [n for n in names if n not in dataset.modalities]
    if missing:
        raise ValueError(f"the dataset lacks the model's modalities {missing}.")
    _check_classifiers(names, classifiers)
    subsets = source_subsets(names, subset_sizes, max_subsets_per_size)
    targets = {s: [t for t in names if t not in s and _generates(vae, s, t)] for s in subsets}
    subsets = [s for s in subsets if targets[s]]  # a model may define only some pairs
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    check_posterior_point(posterior)
    mixture = engine == "mixture" or (engine == "auto" and supports_mixture_coherence(vae))
    if mixture and not supports_mixture_coherence(vae):
        raise ValueError(f"{type(vae).__name__} does not generate from one expert of a "
                         "mixture posterior; use engine='cached' or 'generate'")
    singles = [(n,) for n in names]
    plan = [(s, [t for t in names if t != s[0]]) for s in singles] if mixture else \
        [(s, targets[s]) for s in subsets]
    correct: dict[tuple[tuple[str, ...], str], float] = {
        (s, t): 0 for s in subsets for t in targets[s]}
    observed = dict.fromkeys(subsets, 0)  # rows that observe every source of S
    by_modality = dict.fromkeys(names, 0)  # rows that observe each modality
    total = 0
    # per row, for the per-class average: the labels, each (S, t)'s hits, S's observed rows
    row_labels: list[Tensor] = []
    row_hits_of: dict[tuple[tuple[str, ...], str], list[Tensor]] = {k: [] for k in correct}
    rows_of: dict[tuple[str, ...], list[Tensor]] = {s: [] for s in subsets}
    with evaluation_mode(vae), progress_bar(len(dataset), "conditional coherence", progress,
                                            unit="tuple") as bar:
        for batch, labels in dataset.batches(batch_size, device=device):
            labels = labels.to(classifiers.device)
            generated = cross_generate(vae, batch, plan, "cached" if mixture else engine,
                                       posterior=posterior)
            rows = {s: _observed_rows(batch, s, labels) for s in subsets}
            row_labels.append(labels)
            for s in subsets:
                observed[s] += len(labels) if rows[s] is None else int(rows[s].sum())
                rows_of[s].append(torch.ones_like(labels, dtype=torch.bool)
                                  if rows[s] is None else rows[s])
            mask = getattr(batch, "mask", None)
            for m in names:
                by_modality[m] += len(labels) if mask is None else int(mask[m].sum())
            hits = _hits(classifiers, generated, labels, names)
            for s in subsets:
                for t in targets[s]:
                    # mixture: the expectation over the expert of S that generation draws
                    row_hits = (torch.stack([hits[(e,), t] for e in s]).float().mean(0)
                                if mixture else hits[s, t].float())
                    if rows[s] is not None:
                        row_hits = row_hits * rows[s]
                    correct[s, t] += float(row_hits.sum())
                    row_hits_of[s, t].append(row_hits)
            total += len(labels)
            bar.update(len(labels))
    if total == 0:
        raise ValueError("cannot compute coherence on an empty dataset.")
    unjudged = _unjudged_targets(names, classifiers, total)
    reasons = {}  # (S, t) -> why C(S -> t) is not measurable
    for s, t in correct:
        if not observed[s]:
            reasons[s, t] = _unobserved_reason(s, by_modality, total)
        elif t in unjudged:
            reasons[s, t] = unjudged[t]
    accuracy = {key: None if key in reasons else hits / observed[key[0]]
                for key, hits in correct.items()}
    result = _summarise_conditional(names, subsets, targets, accuracy, classifiers, total)
    class_average = _class_averages(torch.cat(row_labels), row_hits_of, rows_of, accuracy)
    result["by_subset_size_class_average"] = {
        k: _mean([a for (s, _), a in class_average.items() if len(s) == k])
        for k in result["subset_sizes"]}
    result["posterior"] = posterior
    if reasons:
        result["not_measurable"] = {f"{subset_key(s)} -> {t}": f"{NOT_MEASURABLE}: {why}"
                                    for (s, t), why in reasons.items()}
        result["note"] = (f"{NOT_MEASURABLE}: {next(iter(reasons.values()))} "
                          f"({len(reasons)} of {len(correct)} (sources, target) pairs are "
                          "null, and so is every mean over them)")
    if getattr(dataset, "masks", None) is not None:
        result["observed_rows"] = {subset_key(s): observed[s] for s in subsets}
    return result


def _hits(classifiers: ModalityClassifiers, generated: dict[tuple[tuple[str, ...], str], Tensor],
          labels: Tensor, names: Sequence[str]) -> dict[tuple[tuple[str, ...], str], Tensor]:
    """Bool ``(B,)`` per generated ``(S, t)``: the target's classifier finds the label; each
    target's images of all subsets are classified in one call."""
    out = {}
    for t in names:
        keys = [k for k in generated if k[1] == t]
        if keys:
            predicted = classifiers.predict(t, torch.cat([generated[k] for k in keys]))
            out.update(zip(keys, predicted.view(len(keys), -1) == labels, strict=True))
    return out


def _class_averages(labels: Tensor, hits: dict[tuple[tuple[str, ...], str], list[Tensor]],
                    rows: dict[tuple[str, ...], list[Tensor]],
                    accuracy: dict[tuple[tuple[str, ...], str], float | None]
                    ) -> dict[tuple[tuple[str, ...], str], float | None]:
    r"""Per ``(S, t)``, the accuracy averaged over classes (MultiVae's "mean over classes"):
    :math:`rac{1}{|Y|}\sum_{y \in Y} rac{\sum_{i: y_i = y} h_i}{\#\{i: y_i = y\}}` over
    the classes ``Y`` that have observed rows (the plain accuracy weighs each class by its
    size instead). ``None`` where the plain accuracy is not measurable."""
    labels = labels.long()
    size = int(labels.max()) + 1 if labels.numel() else 0
    out: dict[tuple[tuple[str, ...], str], float | None] = {}
    for key, parts in hits.items():
        if accuracy[key] is None or not parts:
            out[key] = None
            continue
        observed = torch.cat(rows[key[0]]).to(labels.device).double()
        hit = torch.bincount(labels, weights=torch.cat(parts).to(labels.device).double(),
                             minlength=size)
        count = torch.bincount(labels, weights=observed, minlength=size)
        seen = count > 0
        out[key] = float((hit[seen] / count[seen]).mean())
    return out


def _observed_rows(batch: Any, sources: Sequence[str], labels: Tensor) -> Tensor | None:
    """Bool ``(B,)``: the rows observing every source (None: the batch has no masks)."""
    mask = getattr(batch, "mask", None)
    if mask is None:
        return None
    rows = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    for s in sources:
        rows &= mask[s].to(labels.device)
    return rows


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
    """Mean Euclidean distance between all pairs i < j of ``images`` (flattened); 0 if < 2.

    Args:
        images: a batch ``(N, ...)``; each item is flattened (computed in float64).
    """
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
    progress: bool = False,
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

    Args:
        vae: the model (with ``sample(n)`` returning a dict of modality name -> decoder
            means); at least two modalities.
        classifiers: one classifier per modality of the model.
        num_samples: prior draws, >= 1 (default 1000).
        batch_size: draws generated per call, >= 1 (default 256).
        progress: show a progress bar on stderr (default False).

    Returns:
        A JSON-ready dict: ``coherence`` (fraction in [0, 1], ``None`` when a classifier
        cannot be checked), ``num_samples`` and the diversity figures above.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}."
        )
    predictions: dict[str, list[Tensor]] = {}
    kept: dict[str, list[Tensor]] = {}
    with evaluation_mode(vae), progress_bar(num_samples, "unconditional coherence", progress,
                                            unit="sample") as bar:
        for start in range(0, num_samples, batch_size):
            samples = vae.sample(min(batch_size, num_samples - start))
            bar.update(min(batch_size, num_samples - start))
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
    unjudged = _unjudged_targets(names, classifiers, 0)
    preds = torch.stack([torch.cat(predictions[n]) for n in names])  # (M, num_samples)
    coherent = (preds == preds[0]).all(dim=0)
    k = classifiers.num_classes
    by_modality = {n: torch.bincount(preds[i], minlength=k).double() / preds.shape[1]
                   for i, n in enumerate(names)}
    pooled = torch.bincount(preds.reshape(-1), minlength=k).double() / preds.numel()
    spread = {n: mean_pairwise_l2(torch.cat(kept[n])) for n in names}
    result = {
        "coherence": None if unjudged else float(coherent.double().mean()),
        "num_samples": int(preds.shape[1]),
        "class_histogram": pooled.tolist(),
        "class_histogram_by_modality": {n: h.tolist() for n, h in by_modality.items()},
        "class_entropy": _entropy(pooled),
        "class_entropy_normalised": _entropy(pooled) / math.log(k),
        "mean_pairwise_l2": spread,
        "diversity": spread[names[0]],
        "diversity_modality": names[0],
    }
    if unjudged:
        m = next(iter(unjudged))
        result["note"] = (f"{NOT_MEASURABLE}: modality {m} is absent in every test row, so "
                          "its classifier cannot be checked")
    return result
