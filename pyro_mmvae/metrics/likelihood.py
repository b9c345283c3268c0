r"""Log-likelihoods by importance sampling, per data point, with PSIS diagnostics.

For observations :math:`X` and a proposal :math:`q(z \mid X)` (the guide),

.. math:: \log \hat p(X) = \log \frac{1}{K} \sum_{k=1}^K w_k, \qquad
          \log w_k = \log p(X, z_k) - \log q(z_k \mid X), \qquad z_k \sim q(z \mid X),

a consistent estimator of :math:`\log p(X)` (biased low by Jensen's inequality for finite K;
the bias vanishes as K grows; Burda et al. 2016). For a multimodal VAE the proposal for a
subset S of modalities is the model's own inference network for that subset, so

* joint:       :math:`\log p(X)`, proposal :math:`q(z \mid X)`;
* subset:      :math:`\log p(X_S)`, proposal :math:`q(z \mid X_S)` (only S is passed);
* conditional: :math:`\log p(X_T \mid X_S) = \log p(X_{S \cup T}) - \log p(X_S)`.

Site scales are *not* applied: :math:`\beta` (KL weight) and :math:`\lambda_m` (modality
weights) are training devices, and :math:`\log p(X)` is the unweighted density of the model.
Masks (absent modalities) are applied. Pyro's ``vectorized_importance_weights`` sums over the
data plate, so the per-datapoint weights are computed here from the traces.

Every estimate comes with two diagnostics of the weights, per data point:

* Pareto :math:`\hat k` of PSIS (Vehtari et al. 2024, via :func:`arviz.psislw`): the shape
  of a generalised Pareto distribution fitted to the largest weights. :math:`\hat k < 0.5`:
  the estimate is reliable; :math:`0.5 \le \hat k < 0.7`: usable; :math:`\hat k \ge 0.7`:
  the proposal misses mass of the posterior and the estimate cannot be trusted.
* effective sample size :math:`\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2 \in [1, K]`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_mmvae.metrics.coherence import evaluation_mode, source_subsets, subset_key

#: Latent draws decoded at once by default: ``chunk_size = max(1, CHUNK_BUDGET // batch)``.
CHUNK_BUDGET = 4096
#: PSIS needs a tail of at least 5 weights: :math:`\min(0.2K, 3\sqrt K) \ge 5` from K = 25.
MIN_SAMPLES_FOR_PARETO_K = 25
#: Above this :math:`\hat k` an importance-sampling estimate is unreliable (Vehtari et al.).
PARETO_K_THRESHOLD = 0.7
#: Relative spread of log-weights below which they count as constant (exact proposal).
CONSTANT_LOG_WEIGHTS = 1e-6

__all__ = [
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
    "supports_unstratified",
    "vae_log_likelihood",
    "weight_summary",
]


# ---------------------------------------------------------------------- log-weights
def _particle_plate(fn: Callable, size: int, dim: int) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("particles", size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def _sample_sites(trace: Trace) -> list[dict]:
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def _per_datapoint(site: dict, full_dims: int, data_plate: str) -> Tensor:
    """Unscaled, masked ``log_prob`` of a site summed to shape ``(k or 1, B or 1)``.

    Dims of plates nested inside the data plate are summed; the particle dim is
    ``-full_dims`` and the data plate's dim is read from the site's plate stack.
    """
    frames = [f for f in site["cond_indep_stack"] if f.name == data_plate]
    if not frames:
        raise ValueError(
            f"site {site['name']!r} is outside the {data_plate!r} plate; per-datapoint "
            "importance weights need every sample site inside it (a global latent couples "
            "the data points)"
        )
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    log_p = scale_and_mask(log_p, 1.0, site["mask"])
    if not isinstance(log_p, Tensor):
        log_p = torch.as_tensor(log_p)
    if log_p.dim() > full_dims:
        raise ValueError(
            f"site {site['name']!r} has log_prob of shape {tuple(log_p.shape)}, more batch "
            f"dims than max_plate_nesting + 1 = {full_dims}; raise max_plate_nesting"
        )
    log_p = log_p.reshape((1,) * (full_dims - log_p.dim()) + tuple(log_p.shape))
    log_p = log_p.movedim(frames[0].dim, -1)
    return log_p.reshape(log_p.size(0), -1, log_p.size(-1)).sum(1)


def _chunk_log_weights(model: Callable, guide: Callable, size: int, args: tuple,
                       kwargs: dict, max_plate_nesting: int, data_plate: str) -> Tensor:
    """Log-weights ``(size, B)`` of one chunk of particles (see :func:`importance_log_weights`)."""
    dim = -(max_plate_nesting + 1)
    guide_trace = poutine.trace(_particle_plate(guide, size, dim)).get_trace(*args, **kwargs)
    replayed = poutine.replay(_particle_plate(model, size, dim), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    proposed = {s["name"] for s in _sample_sites(guide_trace) if not s["is_observed"]}
    log_w: Tensor | float = 0.0
    for site in _sample_sites(model_trace):
        if site["is_observed"] or site["name"] in proposed:
            log_w = log_w + _per_datapoint(site, max_plate_nesting + 1, data_plate)
        # a model latent the guide does not propose is drawn from its prior: p/q = 1
    for site in _sample_sites(guide_trace):
        if not site["is_observed"]:
            log_w = log_w - _per_datapoint(site, max_plate_nesting + 1, data_plate)
    if not isinstance(log_w, Tensor):
        raise ValueError("the model has no sample site inside the data plate")
    return log_w.expand(size, log_w.size(-1))


def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    max_plate_nesting: int = 2,
    data_plate: str = "data",
    **kwargs: Any,
) -> Tensor:
    r"""Per-datapoint importance log-weights :math:`\log p(X_b, z_{kb}) - \log q(z_{kb}|X_b)`.

    Runs ``guide(*args, **kwargs)`` inside a ``particles`` plate of size k at dim
    ``-(max_plate_nesting + 1)`` (the library's convention: -3), replays ``model`` against
    it and sums, per data point, ``site["fn"].log_prob(site["value"])`` with the site's
    mask but without its scale over the model's observed sites and the latents the guide
    proposes, minus the guide's latent sites. Plates nested inside ``data_plate`` are summed.
    Particles are drawn in chunks of at most ``chunk_size`` (``None``: all K at once) under
    ``torch.no_grad()``, so memory is bounded whatever K. Chunks draw their samples one after
    the other from torch's generator: with the same seed, chunked and unchunked runs see the
    same samples whenever torch fills a tensor in the same order (e.g. Normal draws with
    B·D a multiple of 16 on the CPU), and otherwise agree in distribution.

    Every sample site must live in ``data_plate``, and the guide must draw one z per
    particle and data point (for this library's models pass ``stratify=False``).

    Returns a float tensor ``(num_samples, B)`` on the device of the model.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None), got {chunk_size}")
    step = num_samples if chunk_size is None else chunk_size
    chunks: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, num_samples, step):
            size = min(step, num_samples - start)
            chunks.append(_chunk_log_weights(model, guide, size, args, kwargs,
                                             max_plate_nesting, data_plate))
    return torch.cat(chunks)


def default_chunk_size(batch_size: int, budget: int = CHUNK_BUDGET) -> int:
    """Particles per chunk so that at most ``budget`` latents are decoded at once."""
    return max(1, budget // max(1, int(batch_size)))


# ---------------------------------------------------------------------- diagnostics
def effective_sample_size(log_weights: Tensor) -> Tensor:
    r"""Per data point :math:`\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2` from ``(K, B)``.

    Computed in log space: :math:`\exp(2\,\mathrm{lse}_k \log w - \mathrm{lse}_k 2\log w)`.
    """
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))


def pareto_k(log_weights: Tensor) -> Tensor:
    r"""PSIS Pareto :math:`\hat k` per data point from log-weights ``(K, B)`` (arviz).

    Uses :func:`arviz.psislw` on the ``(B, K)`` array (it reads the last axis as samples)
    with ``reff = 1`` (independent draws). Conventions: data points whose log-weights are
    all equal up to rounding (spread below :math:`\epsilon\max(1, |\mathrm{median}\log w|)`,
    :math:`\epsilon = 10^{-6}`, or :math:`256` float32 epsilons for float32 log-weights, whose
    sums over many pixels carry that much rounding; as with the exact posterior as proposal)
    get :math:`\hat k = 0` — arviz fits the rounding
    noise and answers inf there; with fewer than 25 samples the tail is too short to fit and
    every :math:`\hat k` is NaN.
    """
    tolerance = CONSTANT_LOG_WEIGHTS
    if log_weights.dtype == torch.float32:
        tolerance = max(tolerance, 256 * torch.finfo(log_weights.dtype).eps)
    lw = log_weights.detach().double().cpu()
    num, batch = lw.shape
    if num < MIN_SAMPLES_FOR_PARETO_K:
        return torch.full((batch,), math.nan, dtype=torch.float64)
    import arviz

    finite = torch.where(torch.isfinite(lw), lw, torch.tensor(-1e300, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns about k > 0.7: reported, not raised
        _, khat = arviz.psislw(finite.t().contiguous().numpy(), reff=1.0)
    khat = torch.as_tensor(np.asarray(khat, dtype=np.float64))
    spread = lw.max(0).values - lw.min(0).values
    constant = spread <= tolerance * lw.median(0).values.abs().clamp(min=1.0)
    return torch.where(constant, torch.zeros_like(khat), khat)


# ---------------------------------------------------------------------- estimates
@dataclass
class ImportanceEstimate:
    r"""Importance-sampling estimate of :math:`\log p(X_b)` for a batch of data points.

    :param log_weights: ``(K, B)`` float64 on the CPU.
    """

    log_weights: Tensor
    _pareto_k: Tensor | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int:
        """The number of importance samples K."""
        return int(self.log_weights.size(0))

    @property
    def log_likelihood(self) -> Tensor:
        r""":math:`\log \frac1K \sum_k w_{kb}` per data point, ``(B,)``."""
        return torch.logsumexp(self.log_weights, 0) - math.log(self.num_samples)

    @property
    def ess(self) -> Tensor:
        """Effective sample size per data point, ``(B,)`` (see :func:`effective_sample_size`)."""
        return effective_sample_size(self.log_weights)

    @property
    def pareto_k(self) -> Tensor:
        r"""PSIS :math:`\hat k` per data point, ``(B,)`` (computed once, see :func:`pareto_k`)."""
        if self._pareto_k is None:
            self._pareto_k = pareto_k(self.log_weights)
        return self._pareto_k

    @classmethod
    def concatenate(cls, estimates: Sequence[ImportanceEstimate]) -> ImportanceEstimate:
        """Join estimates of consecutive batches along the data dimension."""
        if not estimates:
            raise ValueError("nothing to concatenate")
        ks = [e._pareto_k for e in estimates]
        joined = torch.cat(ks) if all(k is not None for k in ks) else None
        return cls(torch.cat([e.log_weights for e in estimates], dim=1), joined)

    def summary(self) -> dict[str, Any]:
        """Mean log-likelihood, its standard error and the weight diagnostics, JSON-ready."""
        return {
            **_mean_and_error(self.log_likelihood),
            **weight_summary(self.pareto_k, self.ess, self.num_samples),
        }


def _mean_and_error(values: Tensor) -> dict[str, float]:
    values = values.double()
    n = values.numel()
    std = float(values.std()) if n > 1 else math.nan
    return {
        "mean": float(values.mean()),
        "std": std,
        "std_error": std / math.sqrt(n) if n > 1 else math.nan,
        "num_datapoints": n,
    }


def weight_summary(khat: Tensor, ess: Tensor, num_samples: int) -> dict[str, Any]:
    r"""Quantiles of :math:`\hat k`, the fraction above 0.7, and ESS (absolute and / K)."""
    khat = khat.double()
    known = khat[torch.isfinite(khat)]
    if known.numel():
        q = torch.quantile(known, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
        k_stats = {"median": float(q[0]), "q90": float(q[1]), "q99": float(q[2]),
                   "max": float(known.max()),
                   "fraction_above_0.7": float((known > PARETO_K_THRESHOLD).double().mean()),
                   "fraction_above_0.5": float((known > 0.5).double().mean())}
    else:
        k_stats = {"median": None, "note": f"needs K >= {MIN_SAMPLES_FOR_PARETO_K} samples"}
    return {
        "num_samples": int(num_samples),
        "pareto_k": k_stats,
        "ess": {"mean": float(ess.mean()), "min": float(ess.min()),
                "median": float(ess.median()),
                "mean_fraction": float(ess.mean() / num_samples)},
    }


def log_marginal(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    max_plate_nesting: int = 2,
    data_plate: str = "data",
    **kwargs: Any,
) -> ImportanceEstimate:
    r""":math:`\log \hat p(X_b) = \log \frac1K \sum_k w_{kb}` for any Pyro model/guide pair.

    See :func:`importance_log_weights` for the requirements on the programs; the returned
    :class:`ImportanceEstimate` also gives :math:`\hat k` and the ESS per data point.
    """
    lw = importance_log_weights(model, guide, *args, num_samples=num_samples,
                                chunk_size=chunk_size, max_plate_nesting=max_plate_nesting,
                                data_plate=data_plate, **kwargs)
    return ImportanceEstimate(lw.detach().double().cpu())


# ---------------------------------------------------------------------- multimodal VAEs
def supports_unstratified(vae: Any) -> str | None:
    """``None`` if ``vae.model``/``vae.guide`` accept ``stratify=False``, else the reason."""
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


def vae_log_likelihood(
    vae: Any,
    data: Mapping[str, Tensor | None],
    modalities: Sequence[str] | None = None,
    num_samples: int = 1000,
    chunk_size: int | None = None,
) -> ImportanceEstimate:
    r""":math:`\log \hat p(X_S)` for a multimodal VAE, S = ``modalities`` (default: all given).

    Only the modalities in S are passed to ``vae.model`` and ``vae.guide`` with
    ``stratify=False``, so the proposal is the model's posterior :math:`q(z \mid X_S)` and
    the other modalities are masked out of :math:`p(X, z)`. Runs in eval mode, no grad.
    """
    reason = supports_unstratified(vae)
    if reason is not None:
        raise ValueError(reason)
    subset = _select(data, modalities)
    batch = next(iter(subset.values())).shape[0]
    chunk = default_chunk_size(batch) if chunk_size is None else chunk_size
    with evaluation_mode(vae):
        return log_marginal(vae.model, vae.guide, subset, num_samples=num_samples,
                            chunk_size=chunk, stratify=False)


@dataclass
class ConditionalEstimate:
    r""":math:`\log p(X_T \mid X_S) = \log p(X_{S \cup T}) - \log p(X_S)` per data point."""

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
) -> ConditionalEstimate:
    r""":math:`\log \hat p(X_T \mid X_S) = \log \hat p(X_{S \cup T}) - \log \hat p(X_S)`.

    Two independent importance-sampling estimates, each with its own proposal
    :math:`q(z \mid X_{S \cup T})` and :math:`q(z \mid X_S)`.
    """
    overlap = set(targets) & set(sources)
    if overlap or not targets or not sources:
        raise ValueError(f"targets and sources must be non-empty and disjoint, got {targets} "
                         f"and {sources}")
    union = list(sources) + list(targets)
    joint = vae_log_likelihood(vae, data, union, num_samples, chunk_size)
    given = vae_log_likelihood(vae, data, sources, num_samples, chunk_size)
    return ConditionalEstimate(joint, given)


def dataset_log_likelihood(
    vae: Any,
    dataset: Any,
    subsets: Sequence[Sequence[str]] = (),
    num_samples: int = 1000,
    batch_size: int = 64,
    chunk_size: int | None = None,
    max_points: int | None = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    r"""Joint, subset and conditional log-likelihoods over (the first ``max_points`` of) a dataset.

    For every data point: :math:`\log \hat p(X)` (all the model's modalities), and for each
    source subset S in ``subsets``: :math:`\log \hat p(X_S)` and
    :math:`\log \hat p(X_{\bar S} \mid X_S) = \log \hat p(X) - \log \hat p(X_S)` with
    :math:`\bar S` the other modalities. Returns ``{"joint": ImportanceEstimate,
    "subsets": {key: ImportanceEstimate}, "conditional": {key: ConditionalEstimate}}``
    (keys like ``"m0+m2"``) plus the settings; see :func:`likelihood_summary` for JSON.
    """
    names = tuple(getattr(vae, "names", None) or dataset.modalities)
    subsets = [tuple(s) for s in subsets]
    bad = [s for s in subsets if not s or set(s) - set(names) or set(s) == set(names)]
    if bad:
        raise ValueError(f"subsets must be non-empty proper subsets of {list(names)}, got {bad}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1 (or None), got {max_points}")
    if max_points is not None and len(dataset) > max_points:
        dataset = dataset.subset(torch.arange(max_points))
    joint: list[ImportanceEstimate] = []
    parts: dict[tuple[str, ...], list[ImportanceEstimate]] = {s: [] for s in subsets}
    for batch, _ in dataset.batches(batch_size, device=device):
        joint.append(vae_log_likelihood(vae, batch, names, num_samples, chunk_size))
        for s in subsets:
            parts[s].append(vae_log_likelihood(vae, batch, s, num_samples, chunk_size))
    if not joint:
        raise ValueError("cannot estimate likelihoods on an empty dataset")
    joint_all = ImportanceEstimate.concatenate(joint)
    subset_est = {subset_key(s): ImportanceEstimate.concatenate(p) for s, p in parts.items()}
    conditional = {f"{subset_key([n for n in names if n not in s])}|{subset_key(s)}":
                   ConditionalEstimate(joint_all, subset_est[subset_key(s)]) for s in subsets}
    return {"joint": joint_all, "subsets": subset_est, "conditional": conditional,
            "num_samples": num_samples, "num_datapoints": joint_all.log_weights.size(1)}


def likelihood_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready summary of :func:`dataset_log_likelihood` (means, errors, k-hat, ESS)."""
    subsets_by_size: dict[int, list[float]] = {}
    conditional_by_size: dict[int, list[float]] = {}
    subsets = {k: e.summary() for k, e in result["subsets"].items()}
    conditional = {k: e.summary() for k, e in result["conditional"].items()}
    for key, summary in subsets.items():
        subsets_by_size.setdefault(len(key.split("+")), []).append(summary["mean"])
    for key, summary in conditional.items():
        size = len(key.split("|")[1].split("+"))
        conditional_by_size.setdefault(size, []).append(summary["mean"])
    return {
        "units": "nats per data point (sum over the modalities' dimensions)",
        "estimator": "importance sampling, proposal = the model's q(z | X_S) (stratify=False)",
        "num_samples": result["num_samples"],
        "num_datapoints": result["num_datapoints"],
        "joint": result["joint"].summary(),
        "subsets": subsets,
        "conditional": conditional,
        "subset_mean_by_size": {k: float(np.mean(v)) for k, v in sorted(subsets_by_size.items())},
        "conditional_mean_by_num_sources": {
            k: float(np.mean(v)) for k, v in sorted(conditional_by_size.items())},
    }


def likelihood_subsets(names: Sequence[str], per_size: int, seed: int = 0
                       ) -> list[tuple[str, ...]]:
    """Up to ``per_size`` source subsets of every size 1..M-1 (seeded choice); [] for 0."""
    if per_size < 0:
        raise ValueError(f"the number of subsets per size must be >= 0, got {per_size}")
    if per_size == 0 or len(names) < 2:
        return []
    return source_subsets(names, None, per_size, seed)
