r"""Log-likelihoods of multimodal VAEs per data point, with a choice of proposals.

The estimator is importance sampling (:mod:`pyro_mmvae.infer.importance`):
:math:`\log \hat p(X) = \log \frac1K \sum_k p(X, z_k) / r(z_k \mid X)`, consistent and biased
low for finite K. For a subset S of modalities

* joint:       :math:`\log p(X)`;
* subset:      :math:`\log p(X_S)` (only S is passed to the model: the others are absent);
* conditional: :math:`\log p(X_T \mid X_S) = \log p(X_{S \cup T}) - \log p(X_S)`.

Proposals :math:`r(z \mid X_S)` (``proposal=``), each keeping the guide's other latents
(MMVAE+'s private :math:`w_m`):

* ``"model"``: the model's own :math:`q(z \mid X_S)` (its guide with ``stratify=False``);
* ``"mixture"``: the defensive mixture :math:`\alpha_1 q(z|X_S) + \alpha_2
  \prod_{m \in S} q_m(z|x_m) + \alpha_3 p(z)` (default :math:`\alpha = (0.6, 0.3, 0.1)`):
  the normalised product of the present experts is where a multimodal posterior
  concentrates (a mixture-of-experts :math:`q` spreads over every expert), the prior
  bounds the weights where both miss (for Laplace experts the product is that of Normals of
  the same variance; models without experts mix :math:`q` and the prior only);
* ``"refined"``: a per-datapoint Normal started at the moments of :math:`q` or of the
  product of the present experts, whichever has the higher IWAE bound at that point (a
  mixture-of-experts :math:`q` is far wider than the posterior), and moved by a few Adam
  steps on the per-point IWAE bound (:func:`~pyro_mmvae.infer.importance.refine_proposal`);
* ``"annealed"``: annealed importance sampling (:mod:`pyro_mmvae.infer.annealed`, Neal 2001;
  Wu et al. 2017) from a start proposal (``annealed_start``: ``"refined"`` by default) along
  :math:`r^{1-\beta_t} p(X, z)^{\beta_t}` over ``annealed_temperatures`` temperatures with
  HMC transitions on every latent site; ``annealed_samples`` chains per point (default
  :data:`ANNEALED_SAMPLES`, at most K). Costs about T × L gradient passes of the decoders per
  chain, so it is opt-in: ``"all"`` runs the three cheap proposals (:data:`CHEAP_PROPOSALS`).

With several proposals (:func:`dataset_log_likelihood`), every one is run on the same data
points and the *best* is the one with the fewest points with :math:`\hat k > 0.7` on
:math:`\log p(X)` (then the lowest median :math:`\hat k`): it gives the headline figures,
every proposal's figures are kept beside them. Each proposal gives a valid estimate, so the
choice by a diagnostic (made once for the whole data set) does not bias any of them.
When :math:`\hat k > 0.7` for more than 10 % of the points of a headline estimate, the
summary carries a warning: the number is then a loose lower bound.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from pyro_mmvae.distributions.experts import product_of_experts
from pyro_mmvae.distributions.subsets import complement, source_subsets, subset_key, subset_size
from pyro_mmvae.infer.annealed import annealed_log_weights
from pyro_mmvae.infer.importance import (
    PARETO_K_THRESHOLD,
    ImportanceEstimate,
    _mean_and_error,
    effective_sample_size,
    importance_log_weights,
    log_marginal,
    mixture_proposal,
    pareto_k,
    refine_proposal,
    weight_summary,
)
from pyro_mmvae.metrics.common import evaluation_mode, head, progress_bar

#: Latent draws decoded at once by default: ``chunk_size = max(1, CHUNK_BUDGET // batch)``.
CHUNK_BUDGET = 4096
#: The importance proposals (see the module docstring).
PROPOSALS = ("model", "mixture", "refined", "annealed")
#: What ``"all"`` runs: every proposal but the (costly, opt-in) annealed one.
CHEAP_PROPOSALS = ("model", "mixture", "refined")
#: AIS chains per data point by default (each costs T × L model gradients).
ANNEALED_SAMPLES = 50
#: Defaults of the ``annealed_*`` options (see :func:`annealed_log_weights`).
ANNEALED_DEFAULTS = {"start": "refined", "samples": ANNEALED_SAMPLES, "temperatures": 100,
                     "leapfrog": 1, "step_size": 0.2}
#: Weights of q(z|X_S), the product of the present experts and the prior in ``"mixture"``.
MIXTURE_WEIGHTS = (0.6, 0.3, 0.1)
#: Warn when more than this fraction of the points have k-hat above 0.7.
WARN_FRACTION = 0.1

__all__ = [
    "ANNEALED_DEFAULTS",
    "ANNEALED_SAMPLES",
    "CHEAP_PROPOSALS",
    "MIXTURE_WEIGHTS",
    "PROPOSALS",
    "ConditionalEstimate",
    "ImportanceEstimate",
    "conditional_log_likelihood",
    "dataset_log_likelihood",
    "default_chunk_size",
    "effective_sample_size",
    "importance_log_weights",
    "likelihood_subsets",
    "likelihood_summary",
    "log_marginal",
    "pareto_k",
    "parse_proposals",
    "supports_unstratified",
    "vae_log_likelihood",
    "vae_proposal",
    "weight_summary",
]


def default_chunk_size(batch_size: int, budget: int = CHUNK_BUDGET) -> int:
    """Particles per chunk so that at most ``budget`` latents are decoded at once.

    Args:
        batch_size: data points per batch B (values below 1 count as 1).
        budget: the most latents (particles x B) decoded at once (default
            ``CHUNK_BUDGET`` = 4096).

    Returns:
        ``max(1, budget // B)``.
    """
    return max(1, budget // max(1, int(batch_size)))


def parse_proposals(proposal: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` (:data:`CHEAP_PROPOSALS`), one name, ``"a,b"`` or a list of
    :data:`PROPOSALS` (``"all"`` may be one of them) -> validated tuple.

    Args:
        proposal: ``"all"``, a name of :data:`PROPOSALS`, several comma-separated, or a
            sequence of them; duplicates are dropped, order kept.

    Raises:
        ValueError: for an unknown name or an empty selection.
    """
    items = [p.strip() for p in proposal.split(",")] if isinstance(proposal, str) \
        else [str(p).strip() for p in proposal]
    names: list[str] = []
    for item in items:
        names.extend(CHEAP_PROPOSALS if item == "all" else [item])
    unknown = [p for p in names if p not in PROPOSALS]
    if unknown or not names:
        raise ValueError(f"unknown proposal(s) {unknown or list(names)}; choose from "
                         f"{', '.join(PROPOSALS)} or 'all' (comma-separated for several)")
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------- multimodal VAEs
def supports_unstratified(vae: Any) -> str | None:
    """``None`` if ``vae.model``/``vae.guide`` accept ``stratify=False``, else the reason.

    Args:
        vae: any model; its ``model`` and ``guide`` signatures are inspected.
    """
    for name in ("model", "guide"):
        program = getattr(vae, name, None)
        if program is None:
            return f"the model has no {name}() program"
        try:
            params = inspect.signature(program).parameters
        except (TypeError, ValueError):
            return f"cannot inspect {name}()"
        if "stratify" not in params:
            return (f"{type(vae).__name__}.{name}() takes no 'stratify' argument; importance "
                    "sampling needs a guide that draws one z per data point from the "
                    "posterior of the given modalities (stratify=False)")
    return None


def _select(data: Mapping[str, Tensor | None], modalities: Sequence[str] | None
            ) -> dict[str, Tensor]:
    names = [k for k, v in data.items() if v is not None] if modalities is None \
        else list(modalities)
    missing = [m for m in names if data.get(m) is None]
    if missing:
        raise ValueError(f"modalities {missing} are not in the data (it has "
                         f"{[k for k, v in data.items() if v is not None]})")
    if not names:
        raise ValueError("need at least one modality to estimate a likelihood")
    return {m: data[m] for m in names}


def _expert_product(vae: Any, data: dict[str, Tensor]) -> TorchDistribution | None:
    r"""The normalised product of the present unimodal experts (no prior expert), as a
    Normal of batch shape ``(B,)``; ``None`` for a model without ``expert_params``."""
    if not all(callable(getattr(vae, a, None)) for a in ("prepare", "expert_params")):
        return None
    filled, present = vae.prepare(data)
    loc, scale = vae.expert_params(filled)
    if getattr(vae, "posterior_family", "normal") == "laplace":
        scale = scale * math.sqrt(2.0)  # a Normal of the Laplace expert's variance
    p_loc, p_scale = product_of_experts(loc, scale, present, prior_expert=False)
    return dist.Normal(p_loc, p_scale).to_event(1)


def vae_proposal(
    vae: Any,
    data: dict[str, Tensor],
    proposal: str = "model",
    mixture_weights: Sequence[float] = MIXTURE_WEIGHTS,
    refine_steps: int = 50,
    refine_particles: int = 8,
    refine_lr: float = 0.1,
) -> tuple[Any, dict[str, Any]]:
    """The proposal program (a guide taking ``(data, stratify=False)``) for ``data``, and
    what was done to build it (the refinement's bounds before and after).

    Args:
        vae: a :mod:`pyro_mmvae.models` VAE (``model``, ``guide``, ``prior``; the product of
            experts needs ``prepare`` and ``expert_params``).
        data: the batch, dict of modality name -> tensor ``(B, ...)`` holding only the
            modalities S conditioned on.
        proposal: ``"model"`` (default), ``"mixture"`` or ``"refined"`` (``"annealed"`` is
            not a guide and raises ``ValueError``).
        mixture_weights: weights of :math:`q(z|X_S)`, the product of the present experts and
            the prior for ``"mixture"`` (default :data:`MIXTURE_WEIGHTS`; without experts the
            second is dropped).
        refine_steps: Adam steps of ``"refined"`` (default 50).
        refine_particles: particles of the per-point IWAE bound of ``"refined"`` (default 8).
        refine_lr: Adam's learning rate of ``"refined"`` (default 0.1).

    Returns:
        ``(guide, info)``: the proposal program and a dict describing it (empty for
        ``"model"``).
    """
    if proposal == "model":
        return vae.guide, {}
    if proposal == "mixture":
        product = _expert_product(vae, data)
        weights = list(mixture_weights)
        if product is None:
            weights = [weights[0], weights[2]]

        def components(original: TorchDistribution) -> list[TorchDistribution]:
            prior = vae.prior().expand(original.batch_shape)
            return [prior] if product is None else [product, prior]

        return mixture_proposal(vae.guide, "z", components, weights), {
            "weights": {"q": mixture_weights[0], "experts": mixture_weights[1] if product
                        is not None else None, "prior": mixture_weights[2]}}
    if proposal == "refined":
        product = _expert_product(vae, data)
        return refine_proposal(vae.model, vae.guide, data, stratify=False, steps=refine_steps,
                               num_particles=refine_particles, lr=refine_lr,
                               starts=() if product is None else (product,))
    if proposal == "annealed":
        raise ValueError("the annealed proposal is a sampler, not a guide: use "
                         "vae_log_likelihood(..., proposal='annealed')")
    raise ValueError(f"unknown proposal {proposal!r}; choose from {', '.join(PROPOSALS)}")


def vae_log_likelihood(
    vae: Any,
    data: Mapping[str, Tensor | None],
    modalities: Sequence[str] | None = None,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    proposal: str = "model",
    **proposal_options: Any,
) -> ImportanceEstimate:
    r""":math:`\log \hat p(X_S)` for a multimodal VAE, S = ``modalities`` (default: all given).

    Only the modalities in S are passed to ``vae.model`` and the proposal (``"model"``:
    ``vae.guide`` with ``stratify=False``, the model's posterior :math:`q(z \mid X_S)`;
    ``"mixture"``, ``"refined"``: see the module docstring, options as for
    :func:`vae_proposal`; ``"annealed"``: AIS, options ``annealed_start``,
    ``annealed_samples``, ``annealed_temperatures``, ``annealed_leapfrog``,
    ``annealed_step_size`` (:data:`ANNEALED_DEFAULTS`), the start proposal taking the
    others); the other modalities are masked out of :math:`p(X, z)`. Runs in eval mode, no
    grad (the refinement and the HMC transitions take their own gradients).

    Args:
        vae: a model whose ``model`` and ``guide`` accept ``stratify=False``
            (:func:`supports_unstratified`).
        data: the batch, dict of modality name -> tensor ``(B, ...)`` (``None`` entries
            absent).
        modalities: the modalities S, each present in ``data`` (``None``, the default: all
            present ones).
        num_samples: K, importance samples per data point (default 1000; AIS uses
            ``annealed_samples`` of them).
        chunk_size: particles drawn at once (``None``: :func:`default_chunk_size` of B).
        proposal: ``"model"`` (default), ``"mixture"``, ``"refined"`` or ``"annealed"``.
        **proposal_options: options of :func:`vae_proposal` and the ``annealed_*`` options.

    Returns:
        The :class:`ImportanceEstimate` (log-weights ``(K, B)``, nats).
    """
    return _vae_estimate(vae, data, modalities, num_samples, chunk_size, proposal,
                         proposal_options)[0]


def _annealed_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``annealed_*`` options (validated, with defaults) from the others."""
    annealed = dict(ANNEALED_DEFAULTS)
    rest = {}
    for key, value in options.items():
        if key.startswith("annealed_"):
            name = key[len("annealed_"):]
            if name not in ANNEALED_DEFAULTS:
                raise ValueError(f"unknown option {key!r}; the annealed proposal takes "
                                 f"{', '.join('annealed_' + k for k in ANNEALED_DEFAULTS)}")
            annealed[name] = value
        else:
            rest[key] = value
    if annealed["start"] not in CHEAP_PROPOSALS:
        raise ValueError(f"annealed_start must be one of {', '.join(CHEAP_PROPOSALS)}, got "
                         f"{annealed['start']!r}")
    if annealed["samples"] is not None and annealed["samples"] < 1:
        raise ValueError(f"annealed_samples must be >= 1 (or None), got {annealed['samples']}")
    return annealed, rest


def _vae_estimate(vae: Any, data: Mapping[str, Tensor | None], modalities: Sequence[str] | None,
                  num_samples: int, chunk_size: int | None, proposal: str,
                  options: Mapping[str, Any]) -> tuple[ImportanceEstimate, dict[str, Any]]:
    reason = supports_unstratified(vae)
    if reason is not None:
        raise ValueError(reason)
    annealed, options = _annealed_options(options)
    subset = _select(data, modalities)
    batch = next(iter(subset.values())).shape[0]
    chunk = default_chunk_size(batch) if chunk_size is None else chunk_size
    with evaluation_mode(vae):
        if proposal != "annealed":
            guide, info = vae_proposal(vae, subset, proposal, **options)
            estimate = log_marginal(vae.model, guide, subset, num_samples=num_samples,
                                    chunk_size=chunk, stratify=False)
            return estimate, info
        guide, start_info = vae_proposal(vae, subset, annealed["start"], **options)
        chains = num_samples if annealed["samples"] is None else \
            min(num_samples, annealed["samples"])
        log_weights, info = annealed_log_weights(
            vae.model, guide, subset, num_samples=chains,
            num_temperatures=annealed["temperatures"], leapfrog_steps=annealed["leapfrog"],
            step_size=annealed["step_size"], chunk_size=chunk, stratify=False)
    info = {"start": annealed["start"], "num_samples": chains, **info,
            **{f"start_{k}": v for k, v in start_info.items() if not isinstance(v, Tensor)}}
    return ImportanceEstimate(log_weights), info


@dataclass
class ConditionalEstimate:
    r""":math:`\log p(X_T \mid X_S) = \log p(X_{S \cup T}) - \log p(X_S)` per data point.

    Attributes:
        joint: the estimate of :math:`\log p(X_{S \cup T})` (log-weights ``(K, B)``).
        given: the estimate of :math:`\log p(X_S)` over the same B data points.
    """

    joint: ImportanceEstimate
    given: ImportanceEstimate

    @property
    def log_likelihood(self) -> Tensor:
        r""":math:`\log p(X_T \mid X_S)` per data point, ``(B,)``: joint minus given."""
        return self.joint.log_likelihood - self.given.log_likelihood

    def summary(self) -> dict[str, Any]:
        """Mean, standard error and the diagnostics of both estimates."""
        return {**_mean_and_error(self.log_likelihood),
                "numerator": weight_summary(self.joint.pareto_k, self.joint.ess,
                                            self.joint.num_samples),
                "denominator": weight_summary(self.given.pareto_k, self.given.ess,
                                              self.given.num_samples)}


def conditional_log_likelihood(
    vae: Any,
    data: Mapping[str, Tensor | None],
    targets: Sequence[str],
    sources: Sequence[str],
    num_samples: int = 1000,
    chunk_size: int | None = None,
    proposal: str = "model",
    **proposal_options: Any,
) -> ConditionalEstimate:
    r""":math:`\log \hat p(X_T \mid X_S) = \log \hat p(X_{S \cup T}) - \log \hat p(X_S)`.

    Two independent importance-sampling estimates, each with its own proposal
    (for ``"model"``: :math:`q(z \mid X_{S \cup T})` and :math:`q(z \mid X_S)`).

    Args:
        vae: the model, as in :func:`vae_log_likelihood`.
        data: the batch, dict of modality name -> tensor ``(B, ...)``.
        targets: the modalities T, non-empty and disjoint from ``sources``.
        sources: the modalities S conditioned on, non-empty.
        num_samples: K per estimate (default 1000).
        chunk_size: particles drawn at once (``None``: :func:`default_chunk_size`).
        proposal: the proposal of both estimates (default ``"model"``).
        **proposal_options: as for :func:`vae_log_likelihood`.
    """
    overlap = set(targets) & set(sources)
    if overlap or not targets or not sources:
        raise ValueError(f"targets and sources must be non-empty and disjoint, got {targets} "
                         f"and {sources}")
    union = list(sources) + list(targets)
    joint = vae_log_likelihood(vae, data, union, num_samples, chunk_size, proposal,
                               **proposal_options)
    given = vae_log_likelihood(vae, data, sources, num_samples, chunk_size, proposal,
                               **proposal_options)
    return ConditionalEstimate(joint, given)


# ---------------------------------------------------------------------- data sets
def _rank(estimate: ImportanceEstimate) -> tuple[float, float]:
    """Sort key of a proposal: (fraction of k-hat > 0.7, median k-hat); NaN last."""
    k = estimate.pareto_k
    known = k[torch.isfinite(k)]
    if not known.numel():
        return (math.inf, math.inf)
    return (float((known > PARETO_K_THRESHOLD).double().mean()), float(known.median()))


def _merge_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Average the numeric entries of the per-batch proposal infos (refinement bounds,
    AIS acceptance and step sizes)."""
    if not infos or not infos[0]:
        return infos[0] if infos else {}
    out = {k: v for k, v in infos[0].items() if not isinstance(v, Tensor)}
    averaged = ("bound", "start_bound", "acceptance", "step_size")
    for key, value in infos[0].items():
        if isinstance(value, float) and key.startswith(averaged):
            out[key] = float(np.mean([i[key] for i in infos]))
    return out


def dataset_log_likelihood(
    vae: Any,
    dataset: Any,
    subsets: Sequence[Sequence[str]] = (),
    num_samples: int = 1000,
    batch_size: int = 64,
    chunk_size: int | None = None,
    max_points: int | None = 100,
    device: torch.device | str = "cpu",
    proposals: str | Sequence[str] = ("model",),
    progress: bool = False,
    **proposal_options: Any,
) -> dict[str, Any]:
    r"""Joint, subset and conditional log-likelihoods over (the first ``max_points`` of) a dataset.

    For every data point and every proposal in ``proposals`` (``"all"`` or names of
    :data:`PROPOSALS`): :math:`\log \hat p(X)` (all the model's modalities), and for each
    source subset S in ``subsets``: :math:`\log \hat p(X_S)` and
    :math:`\log \hat p(X_{\bar S} \mid X_S) = \log \hat p(X) - \log \hat p(X_S)` with
    :math:`\bar S` the other modalities.

    Returns ``{"proposals": {name: {"joint", "subsets", "conditional", "info"}},
    "best": name, "joint": ImportanceEstimate, "subsets": {key: ImportanceEstimate},
    "conditional": {key: ConditionalEstimate}}`` (the top-level estimates are the best
    proposal's; keys like ``"m0+m2"``) plus the settings; see :func:`likelihood_summary`.

    Args:
        vae: the model, as in :func:`vae_log_likelihood`.
        dataset: a multimodal dataset (``batches`` yields ``(batch, labels)``); not empty.
        subsets: source subsets S, each a non-empty proper subset of the model's modalities
            (default none: the joint only).
        num_samples: K, importance samples per data point (default 1000).
        batch_size: data points per batch (default 64).
        chunk_size: particles drawn at once (``None``: :func:`default_chunk_size`).
        max_points: the first points used (default 100; ``None``: all).
        device: where to run the model (default ``"cpu"``).
        proposals: ``"all"`` or names of :data:`PROPOSALS`, as in :func:`parse_proposals`
            (default ``("model",)``).
        progress: show a progress bar on stderr (default False).
        **proposal_options: as for :func:`vae_log_likelihood`.
    """
    names = tuple(getattr(vae, "names", None) or dataset.modalities)
    chosen, skipped = applicable_proposals(vae, parse_proposals(proposals))
    subsets = [tuple(s) for s in subsets]
    bad = [s for s in subsets if not s or set(s) - set(names) or set(s) == set(names)]
    if bad:
        raise ValueError(f"subsets must be non-empty proper subsets of {list(names)}, got {bad}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1 (or None), got {max_points}")
    dataset = head(dataset, max_points)
    if len(dataset) == 0:
        raise ValueError("cannot estimate likelihoods on an empty dataset")
    results: dict[str, dict[str, Any]] = {}
    total = len(dataset) * len(chosen)
    with progress_bar(total, "likelihood", progress, unit="point") as bar:
        for proposal in chosen:
            bar.set_postfix_str(proposal)
            start = time.perf_counter()
            results[proposal] = _one_proposal(vae, dataset, names, subsets, num_samples,
                                              batch_size, chunk_size, device, proposal,
                                              proposal_options, bar)
            results[proposal]["seconds"] = time.perf_counter() - start
    best = min(chosen, key=lambda p: _rank(results[p]["joint"]))
    return {"proposals": results, "best": best, **results[best], "num_samples": num_samples,
            "num_datapoints": results[best]["joint"].log_weights.size(1),
            **({"skipped_proposals": skipped} if skipped else {})}


def applicable_proposals(vae: Any, chosen: tuple[str, ...]
                         ) -> tuple[tuple[str, ...], dict[str, str]]:
    """The proposals of ``chosen`` that ``vae`` supports, and why the others are skipped.

    A model lists the proposals that apply to it in ``likelihood_proposals`` (default: all of
    :data:`PROPOSALS`). The mixture and refined proposals build on one latent site ``z`` with
    the prior and the experts' product over it; a model with several latent levels (MHVAE,
    Nexus) supports only its own guide, ``"model"``.

    Args:
        vae: the model.
        chosen: validated proposal names (:func:`parse_proposals`).

    Returns:
        ``(kept, skipped)``: the names to run, in order, and ``{name: reason}``.

    Raises:
        ValueError: when none of ``chosen`` applies.
    """
    supported = tuple(getattr(vae, "likelihood_proposals", PROPOSALS))
    kept = tuple(p for p in chosen if p in supported)
    skipped = {p: f"not applicable to {type(vae).__name__} (its proposals: "
                  f"{', '.join(supported)})" for p in chosen if p not in supported}
    if not kept:
        raise ValueError(f"{type(vae).__name__} supports the proposals {', '.join(supported)}; "
                         f"none of {', '.join(chosen)} applies")
    return kept, skipped


def _one_proposal(vae: Any, dataset: Any, names: tuple[str, ...],
                  subsets: list[tuple[str, ...]], num_samples: int, batch_size: int,
                  chunk_size: int | None, device: torch.device | str, proposal: str,
                  options: Mapping[str, Any], bar: Any) -> dict[str, Any]:
    joint: list[ImportanceEstimate] = []
    infos: list[dict[str, Any]] = []
    parts: dict[tuple[str, ...], list[ImportanceEstimate]] = {s: [] for s in subsets}
    for batch, _ in dataset.batches(batch_size, device=device):
        estimate, info = _vae_estimate(vae, batch, names, num_samples, chunk_size, proposal,
                                       options)
        joint.append(estimate)
        infos.append(info)
        for s in subsets:
            parts[s].append(_vae_estimate(vae, batch, s, num_samples, chunk_size, proposal,
                                          options)[0])
        bar.update(estimate.log_weights.size(1))
    joint_all = ImportanceEstimate.concatenate(joint)
    subset_est = {subset_key(s): ImportanceEstimate.concatenate(p) for s, p in parts.items()}
    conditional = {f"{subset_key(complement(names, s))}|{subset_key(s)}":
                   ConditionalEstimate(joint_all, subset_est[subset_key(s)]) for s in subsets}
    return {"joint": joint_all, "subsets": subset_est, "conditional": conditional,
            "info": _merge_info(infos)}


def _warnings(label: str, summary: Mapping[str, Any], proposal: str,
              tried: Sequence[str]) -> list[str]:
    fraction = (summary.get("pareto_k") or {}).get("fraction_above_0.7")
    if fraction is None or fraction <= WARN_FRACTION:
        return []
    which = f"the best of {len(tried)} proposals, {proposal!r}" if len(tried) > 1 else \
        f"the {proposal!r} proposal"
    advice = "a larger K" if len(tried) > 1 else "--proposal all or a larger K"
    if "annealed" not in tried:
        advice += ", or annealed importance sampling (--proposal all,annealed)"
    else:
        advice += " or more AIS temperatures (--annealed-temperatures)"
    return [f"{label}: k-hat > {PARETO_K_THRESHOLD} for {fraction:.0%} of the points with "
            f"{which} (more than {WARN_FRACTION:.0%}): the importance weights are "
            f"heavy-tailed and the estimate is a loose lower bound; try {advice}"]


def _proposal_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    subsets_by_size: dict[int, list[float]] = {}
    conditional_by_size: dict[int, list[float]] = {}
    subsets = {k: e.summary() for k, e in result["subsets"].items()}
    conditional = {k: e.summary() for k, e in result["conditional"].items()}
    for key, summary in subsets.items():
        subsets_by_size.setdefault(subset_size(key), []).append(summary["mean"])
    for key, summary in conditional.items():
        conditional_by_size.setdefault(subset_size(key.split("|")[1]), []).append(
            summary["mean"])
    return {
        "joint": result["joint"].summary(),
        "subsets": subsets,
        "conditional": conditional,
        "subset_mean_by_size": {k: float(np.mean(v)) for k, v in sorted(subsets_by_size.items())},
        "conditional_mean_by_num_sources": {
            k: float(np.mean(v)) for k, v in sorted(conditional_by_size.items())},
        "info": dict(result.get("info") or {}),
        "seconds": round(float(result["seconds"]), 2) if "seconds" in result else None,
    }


def likelihood_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready summary of :func:`dataset_log_likelihood`: the best proposal's figures
    at the top level, every proposal's under ``"proposals"``, and ``"warnings"``.

    Args:
        result: the dict :func:`dataset_log_likelihood` returns.

    Returns:
        A JSON-ready dict (figures in nats per data point) with one warning per headline
        estimate whose :math:`\\hat k > 0.7` for more than 10 % of the points.
    """
    proposals = result.get("proposals") or {"model": {k: result[k] for k in
                                                      ("joint", "subsets", "conditional")}}
    best = result.get("best", next(iter(proposals)))
    by_proposal = {name: _proposal_summary(r) for name, r in proposals.items()}
    headline = by_proposal[best]
    messages = _warnings("log p(X)", headline["joint"], best, list(by_proposal))
    for key, summary in headline["subsets"].items():
        messages += _warnings(f"log p({key})", summary, best, list(by_proposal))
    return {
        "units": "nats per data point (sum over the modalities' dimensions)",
        "estimator": "importance sampling (stratify=False guides); proposals: "
                     + ", ".join(by_proposal),
        "best_proposal": best,
        "selection": "fewest points with k-hat > 0.7 on log p(X), then the lowest median",
        "num_samples": result["num_samples"],
        "num_datapoints": result["num_datapoints"],
        **{k: v for k, v in headline.items() if k != "info"},
        "proposals": {name: {"joint": s["joint"], "subset_mean_by_size":
                             s["subset_mean_by_size"], "info": s["info"],
                             "seconds": s["seconds"]}
                      for name, s in by_proposal.items()},
        **({"skipped_proposals": dict(result["skipped_proposals"])}
           if result.get("skipped_proposals") else {}),
        "warnings": messages,
    }


def likelihood_subsets(names: Sequence[str], per_size: int, seed: int = 0
                       ) -> list[tuple[str, ...]]:
    """Up to ``per_size`` source subsets of every size 1..M-1 (seeded choice); [] for 0.

    Args:
        names: the M modality names in the model's order ([] when M < 2).
        per_size: subsets per size, >= 0.
        seed: seed of the choice (default 0).
    """
    if per_size < 0:
        raise ValueError(f"the number of subsets per size must be >= 0, got {per_size}")
    if per_size == 0 or len(names) < 2:
        return []
    return source_subsets(names, None, per_size, seed)
