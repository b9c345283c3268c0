r"""Importance sampling of :math:`\log p(X)` per data point, with proposals and PSIS diagnostics.

For observations :math:`X` and a proposal :math:`r(z \mid X)` (a guide),

.. math:: \log \hat p(X) = \log \frac{1}{K} \sum_{k=1}^K w_k, \qquad
          \log w_k = \log p(X, z_k) - \log r(z_k \mid X), \qquad z_k \sim r(z \mid X),

a consistent estimator of :math:`\log p(X)`, biased low by Jensen's inequality for finite K
(Burda et al. 2016). The traces come from the machinery of :mod:`pyro_mmvae.infer.base`: the
guide runs once inside a ``particles`` plate (:func:`~pyro_mmvae.infer.base.particle_plate`)
and the model is replayed against it. Sites are scored by
:func:`~pyro_mmvae.infer.base.site_log_prob` with their masks but *without* their scales
(:math:`\beta` and :math:`\lambda_m` are training devices; :math:`\log p(X)` is the model's
unweighted density), and summed per data point of the ``data`` plate (Pyro's
``vectorized_importance_weights`` sums over it).

**Proposals.** Any guide is a proposal. Two ways to build better ones from a given guide,
both replacing the distribution of one latent site (``z``) and keeping the guide's others:

* :func:`mixture_proposal` — a *defensive mixture* (Hesterberg 1995)
  :math:`r(z) = \sum_c \alpha_c\, r_c(z)` of the guide's own distribution and further
  components (e.g. the product of the present experts and the prior). Any component with
  :math:`\alpha_c > 0` that covers :math:`p(z|X)` bounds the weights by :math:`1/\alpha_c`
  times their ratio under that component alone, which cuts the heavy weight tails of a
  proposal that misses mass.
* :func:`refine_proposal` — a per-datapoint Normal :math:`\mathcal{N}(\mu_b, \sigma_b)`
  initialised from the guide's moments and moved by a few Adam steps on the per-point
  IWAE bound :math:`\log \frac1k \sum_j w_j` (k small): a cheap, amortisation-free fit
  that closes the amortisation gap before the K samples are drawn.

**Diagnostics**, per data point: the Pareto :math:`\hat k` of PSIS (Vehtari et al. 2024,
:func:`arviz.psislw`): < 0.5 reliable, 0.5–0.7 usable, > 0.7 the estimate cannot be trusted;
and the effective sample size :math:`(\sum_k w_k)^2 / \sum_k w_k^2 \in [1, K]`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import constraints

from pyro_mmvae.infer.base import latent_sites, particle_plate, scored_sites, site_log_prob

#: PSIS needs a tail of at least 5 weights: :math:`\min(0.2K, 3\sqrt K) \ge 5` from K = 25.
MIN_SAMPLES_FOR_PARETO_K = 25
#: Above this :math:`\hat k` an importance-sampling estimate is unreliable (Vehtari et al.).
PARETO_K_THRESHOLD = 0.7
#: Relative spread of log-weights below which they count as constant (exact proposal).
CONSTANT_LOG_WEIGHTS = 1e-6

__all__ = [
    "DefensiveMixture",
    "ImportanceEstimate",
    "MIN_SAMPLES_FOR_PARETO_K",
    "PARETO_K_THRESHOLD",
    "effective_sample_size",
    "importance_log_weights",
    "log_marginal",
    "mixture_proposal",
    "pareto_k",
    "particle_log_weights",
    "refine_proposal",
    "replace_site",
    "weight_summary",
]


# ---------------------------------------------------------------------- log-weights
def _per_datapoint(log_p: Tensor, site: dict, full_dims: int, data_plate: str) -> Tensor:
    """A site's log-density summed to shape ``(k or 1, B or 1)``.

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


def particle_log_weights(model: Callable, guide: Callable, size: int, *args: Any,
                         max_plate_nesting: int = 2, data_plate: str = "data",
                         **kwargs: Any) -> Tensor:
    r"""Log-weights ``(size, B)`` of ``size`` particles drawn at once (gradients flow).

    The guide runs inside a ``particles`` plate at dim ``-(max_plate_nesting + 1)``, the
    model is replayed against it; per data point, the unscaled masked log-densities of the
    model's observed sites and of the latents the guide proposes are added and the guide's
    latent sites subtracted. A model latent the guide does not propose is drawn from its
    prior and contributes :math:`p/q = 1`.

    Args:
        model: the Pyro model :math:`p(X, z)` (e.g. ``vae.model``); every sample site must
            lie in the ``data_plate``.
        guide: the proposal :math:`r(z|X)` (e.g. ``vae.guide``; for this library's models pass
            ``stratify=False`` so it draws one z per particle and data point).
        size: the number of particles drawn at once.
        *args: positional arguments of both programs (the batch: ``data``, a dict of
            modality name -> tensor ``(B, ...)``, then optional ``mask``).
        max_plate_nesting: plates of the programs besides the particle plate (default 2),
            which goes at dim ``-(max_plate_nesting + 1)``.
        data_plate: the name of the plate over data points (default ``"data"``); densities
            are summed per data point of it.
        **kwargs: keyword arguments of both programs (e.g. ``stratify=False``).

    Returns:
        Log-weights in nats, shape ``(size, B)``, with gradients.
    """
    dim = -(max_plate_nesting + 1)
    full = max_plate_nesting + 1
    guide_trace = poutine.trace(particle_plate(guide, size, dim)).get_trace(*args, **kwargs)
    replayed = poutine.replay(particle_plate(model, size, dim), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    proposed = {s["name"] for s in latent_sites(guide_trace)}
    log_w: Tensor | float = 0.0
    for site in scored_sites(model_trace):
        if site["is_observed"] or site["name"] in proposed:
            log_w = log_w + _per_datapoint(site_log_prob(site, scaled=False), site, full,
                                           data_plate)
    for site in latent_sites(guide_trace):
        log_w = log_w - _per_datapoint(site_log_prob(site, scaled=False), site, full,
                                       data_plate)
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
    r"""Per-datapoint importance log-weights :math:`\log p(X_b, z_{kb}) - \log r(z_{kb}|X_b)`.

    :func:`particle_log_weights` for K = ``num_samples`` particles, drawn in chunks of at
    most ``chunk_size`` (``None``: all K at once) under ``torch.no_grad()``, so memory is
    bounded whatever K. Chunks draw their samples one after the other from torch's
    generator: with the same seed, chunked and unchunked runs see the same samples whenever
    torch fills a tensor in the same order (e.g. Normal draws with B·D a multiple of 16 on
    the CPU), and otherwise agree in distribution.

    Every sample site must live in ``data_plate``, and the guide must draw one z per
    particle and data point (for this library's models pass ``stratify=False``).

    Returns a float tensor ``(num_samples, B)`` on the device of the model.

    Args:
        model: the Pyro model :math:`p(X, z)` (e.g. ``vae.model``); every sample site must
            lie in the ``data_plate``.
        guide: the proposal :math:`r(z|X)` (e.g. ``vae.guide``; for this library's models pass
            ``stratify=False`` so it draws one z per particle and data point).
        *args: positional arguments of both programs (the batch: ``data``, a dict of
            modality name -> tensor ``(B, ...)``, then optional ``mask``).
        num_samples: K >= 1, importance samples per data point (default 1000).
        chunk_size: the most particles drawn at once (``None``, the default: all K).
        max_plate_nesting: plates of the programs besides the particle plate (default 2),
            which goes at dim ``-(max_plate_nesting + 1)``.
        data_plate: the name of the plate over data points (default ``"data"``); densities
            are summed per data point of it.
        **kwargs: keyword arguments of both programs (e.g. ``stratify=False``).
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
            chunks.append(particle_log_weights(model, guide, size, *args,
                                               max_plate_nesting=max_plate_nesting,
                                               data_plate=data_plate, **kwargs))
    return torch.cat(chunks)


# ---------------------------------------------------------------------- diagnostics
def effective_sample_size(log_weights: Tensor) -> Tensor:
    r"""Per data point :math:`\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2` from ``(K, B)``.

    Computed in log space: :math:`\exp(2\,\mathrm{lse}_k \log w - \mathrm{lse}_k 2\log w)`.

    Args:
        log_weights: importance log-weights ``(K, B)`` (particles x data points).

    Returns:
        Float64 ``(B,)``, values in [1, K].
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

    Args:
        log_weights: importance log-weights ``(K, B)`` (particles x data points); non-finite
            entries are treated as weight 0.

    Returns:
        Float64 ``(B,)`` on the CPU (NaN for every point when K < 25).
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


def weight_summary(khat: Tensor, ess: Tensor, num_samples: int) -> dict[str, Any]:
    r"""Quantiles of :math:`\hat k`, the fraction above 0.7, and ESS (absolute and / K).

    Args:
        khat: Pareto :math:`\hat k` per data point ``(B,)`` (NaN entries are ignored).
        ess: effective sample size per data point ``(B,)``.
        num_samples: K, the number of importance samples behind them.

    Returns:
        A JSON-ready dict ``{"num_samples", "pareto_k": {...}, "ess": {...}}``; ``pareto_k``
        has ``median``, ``q90``, ``q99``, ``max`` and the fractions above 0.7 and 0.5, or a
        ``note`` when no :math:`\hat k` is finite.
    """
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


@dataclass
class ImportanceEstimate:
    r"""Importance-sampling estimate of :math:`\log p(X_b)` for a batch of data points.

    Attributes:
        log_weights: importance log-weights ``(K, B)`` in nats, float64 on the CPU.
        _pareto_k: cached :math:`\hat k` ``(B,)``, or ``None`` (the default) to compute it on
            first access of :attr:`pareto_k`.
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
        """Join estimates of consecutive batches along the data dimension.

        Args:
            estimates: a non-empty sequence of estimates with the same K; their cached
                :math:`\\hat k` is kept only if every one has it.
        """
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


def log_marginal(model: Callable, guide: Callable, *args: Any, **kwargs: Any
                 ) -> ImportanceEstimate:
    r""":math:`\log \hat p(X_b) = \log \frac1K \sum_k w_{kb}` for any Pyro model/guide pair.

    Takes the arguments of :func:`importance_log_weights` (``num_samples``, ``chunk_size``,
    ``max_plate_nesting``, ``data_plate`` and the programs' own); the returned
    :class:`ImportanceEstimate` also gives :math:`\hat k` and the ESS per data point.

    Args:
        model: the Pyro model, as in :func:`importance_log_weights`.
        guide: the proposal, as in :func:`importance_log_weights`.
        *args: positional arguments of both programs (the batch).
        **kwargs: ``num_samples``, ``chunk_size``, ``max_plate_nesting``, ``data_plate`` of
            :func:`importance_log_weights`, and the programs' keyword arguments.
    """
    lw = importance_log_weights(model, guide, *args, **kwargs)
    return ImportanceEstimate(lw.detach().double().cpu())


# ---------------------------------------------------------------------- proposals
class _ReplaceSite(Messenger):
    """Replace the distribution of latent site ``name`` by ``build(original)``."""

    def __init__(self, name: str, build: Callable[[TorchDistribution], TorchDistribution]):
        super().__init__()
        self.name, self.build = name, build

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name and not msg["is_observed"]:
            msg["fn"] = self.build(msg["fn"])


def replace_site(guide: Callable, name: str,
                 build: Callable[[TorchDistribution], TorchDistribution]) -> Callable:
    """``guide`` with the distribution of its latent site ``name`` replaced by
    ``build(original)`` (given the original after the guide's own plates have broadcast it,
    with batch shape ``(B,)`` for one data plate); its other sites are untouched.

    Args:
        guide: a Pyro guide.
        name: the name of its latent site to replace (observed sites are never replaced).
        build: maps the site's original distribution to its replacement (same batch and event
            shape).

    Returns:
        The wrapped guide (a Pyro program with ``guide``'s signature).
    """
    return _ReplaceSite(name, build)(guide)


class DefensiveMixture(TorchDistribution):
    r"""A mixture of distributions of one batch and event shape with fixed weights,

    .. math:: r(z) = \sum_c \alpha_c\, r_c(z), \qquad \log r(z) =
              \mathrm{lse}_c\big(\log\alpha_c + \log r_c(z)\big).

    ``sample`` draws one component per batch element with the weights, then from it (not
    reparameterised: a proposal for importance sampling, not for gradients).

    Args:
        components: the :math:`r_c`, a non-empty sequence of distributions with one batch and
            event shape.
        weights: :math:`\alpha_c \ge 0`, one per component with a positive sum; normalised to
            sum to 1, and components of weight 0 are dropped.
        validate_args: Pyro/torch argument validation (``None``: the global default).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, components: Sequence[TorchDistribution], weights: Sequence[float],
                 validate_args: bool | None = None) -> None:
        if len(components) != len(weights) or not components:
            raise ValueError(f"need one weight per component, got {len(weights)} weights for "
                             f"{len(components)} components")
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        first = components[0]
        for c in components:
            if c.batch_shape != first.batch_shape or c.event_shape != first.event_shape:
                shapes = [(tuple(c.batch_shape), tuple(c.event_shape)) for c in components]
                raise ValueError(f"mixture components need one batch and event shape, got "
                                 f"{shapes}")
        total = float(sum(weights))
        keep = [i for i, w in enumerate(weights) if w > 0]
        self.components = [components[i] for i in keep]
        self.weights = [weights[i] / total for i in keep]
        self._log_weights = torch.tensor([math.log(w) for w in self.weights])
        super().__init__(first.batch_shape, first.event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        """The mixture with its batch shape expanded (see :meth:`TorchDistribution.expand`).

        Args:
            batch_shape: the new batch shape, broadcastable from the current one.
            _instance: unused (torch's subclass protocol).
        """
        return TorchDistribution.expand(self, batch_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Draw a component per batch element with the weights, then a value from it.

        Args:
            sample_shape: the leading shape of the draws (default ``()``).

        Returns:
            Shape ``sample_shape + batch_shape + event_shape``, without gradients.
        """
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            draws = torch.stack([c.sample(shape) for c in self.components])
            index = dist.Categorical(logits=self._log_weights).sample(shape + self.batch_shape)
            index = index.to(draws.device).reshape(
                (1,) + index.shape + (1,) * len(self.event_shape)).expand((1,) + draws.shape[1:])
            return draws.gather(0, index).squeeze(0)

    def log_prob(self, value: Tensor) -> Tensor:
        scores = torch.stack([c.log_prob(value) for c in self.components])
        log_w = self._log_weights.to(scores).reshape((-1,) + (1,) * (scores.dim() - 1))
        return torch.logsumexp(scores + log_w, dim=0)


def mixture_proposal(guide: Callable, site: str,
                     components: Callable[[TorchDistribution], Sequence[TorchDistribution]],
                     weights: Sequence[float]) -> Callable:
    r"""``guide`` with site ``site`` drawn from a :class:`DefensiveMixture` of the guide's own
    distribution (weight ``weights[0]``) and ``components(original)`` (the other weights).

    Args:
        guide: a Pyro guide (e.g. ``vae.guide`` with ``stratify=False``).
        site: the name of the latent site to draw from the mixture (e.g. ``"z"``).
        components: maps the site's original distribution to the further components
            (e.g. the product of the present experts and the prior), each of its batch and
            event shape.
        weights: mixture weights, the guide's own first, then one per further component.

    Returns:
        The wrapped guide.
    """

    def build(original: TorchDistribution) -> TorchDistribution:
        return DefensiveMixture([original, *components(original)], weights)

    return replace_site(guide, site, build)


def _moments(fn: TorchDistribution) -> tuple[Tensor, Tensor]:
    try:
        return fn.mean.detach(), fn.variance.detach().sqrt()
    except NotImplementedError as err:
        raise ValueError(f"cannot refine from {type(fn).__name__}: it has no mean/variance "
                         "to start from") from err


def refine_proposal(
    model: Callable,
    guide: Callable,
    *args: Any,
    site: str = "z",
    steps: int = 50,
    num_particles: int = 8,
    lr: float = 0.05,
    starts: Sequence[TorchDistribution] = (),
    max_plate_nesting: int = 2,
    data_plate: str = "data",
    **kwargs: Any,
) -> tuple[Callable, dict[str, Any]]:
    r"""A per-datapoint Normal proposal for ``site``, fitted by a few gradient steps.

    Starts from the moments of the guide's distribution of ``site`` (mean and standard
    deviation per data point, shape ``(B, D)``) or, per data point, from those of whichever
    of ``starts`` (further distributions of the site's batch and event shape, e.g. the
    product of the experts) has the highest bound below at step 0; then runs ``steps``
    Adam steps on
    :math:`(\mu_b, \log\sigma_b)` maximising :math:`\sum_b \log \frac1k \sum_j w_{jb}`
    (the IWAE bound with k = ``num_particles``, which is a sum of independent per-point
    bounds, so each point gets its own gradient). The model's parameters are not changed
    (gradients are taken with respect to :math:`\mu, \log\sigma` only). The guide's other
    sites keep their distributions.

    Returns ``(proposal, info)``: the guide with ``site`` drawn from
    :math:`\mathcal{N}(\mu_b, \sigma_b)` and ``{"steps", "num_particles", "bound_start",
    "bound_end", "start_from"}`` (the mean per-point bound before and after; the fraction of
    the points started from each candidate, the guide's own first).

    Args:
        model: the Pyro model :math:`p(X, z)`.
        guide: the proposal to start from (e.g. ``vae.guide`` with ``stratify=False``).
        *args: positional arguments of both programs (the batch).
        site: the latent site to refine (default ``"z"``).
        steps: Adam steps, >= 0 (default 50; 0 keeps the starting moments).
        num_particles: k >= 1, particles of the per-point IWAE bound (default 8).
        lr: Adam's learning rate on :math:`(\mu_b, \log\sigma_b)` (default 0.05).
        starts: further starting distributions of the site, each of its batch and event
            shape (default none: start from the guide).
        max_plate_nesting: plates besides the particle plate (default 2).
        data_plate: the name of the plate over data points (default ``"data"``).
        **kwargs: keyword arguments of both programs (e.g. ``stratify=False``).
    """
    if steps < 0 or num_particles < 1:
        raise ValueError(f"steps must be >= 0 and num_particles >= 1, got {steps}, "
                         f"{num_particles}")
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    if site not in trace.nodes:
        raise ValueError(f"the guide has no site {site!r} to refine")
    mean, std = _moments(trace.nodes[site]["fn"])
    loc = mean.clone().requires_grad_(True)
    log_scale = std.clamp(min=1e-6).log().clone().requires_grad_(True)

    proposal = replace_site(guide, site, lambda original: dist.Normal(
        loc, log_scale.exp()).to_event(len(original.event_shape)))

    def bound() -> Tensor:
        lw = particle_log_weights(model, proposal, num_particles, *args,
                                  max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                                  **kwargs)
        return torch.logsumexp(lw, 0) - math.log(num_particles)

    start_from = [1.0]
    if starts:
        candidates = [(mean, std)] + [_moments(d) for d in starts]
        for c_mean, _ in candidates[1:]:
            if c_mean.shape != mean.shape:
                raise ValueError(f"a start of shape {tuple(c_mean.shape)} for site {site!r} "
                                 f"of shape {tuple(mean.shape)}")
        bounds = []
        with torch.no_grad():
            for c_mean, c_std in candidates:
                loc.copy_(c_mean)
                log_scale.copy_(c_std.clamp(min=1e-6).log())
                bounds.append(bound())
            choice = torch.stack(bounds).nan_to_num(-math.inf).argmax(0)  # (B,)
            pick = choice.reshape(choice.shape + (1,) * (mean.dim() - choice.dim()))
            loc.copy_(torch.stack([c[0] for c in candidates]).gather(
                0, pick.unsqueeze(0).expand((1,) + mean.shape)).squeeze(0))
            log_scale.copy_(torch.stack([c[1] for c in candidates]).clamp(min=1e-6).log()
                            .gather(0, pick.unsqueeze(0).expand((1,) + mean.shape)).squeeze(0))
        start_from = [float((choice == i).double().mean()) for i in range(len(candidates))]
    optimiser = torch.optim.Adam([loc, log_scale], lr=lr)

    history = []
    with torch.enable_grad():
        for _ in range(steps):
            value = bound()
            history.append(float(value.detach().mean()))
            (grad_loc, grad_scale) = torch.autograd.grad(-value.sum(), [loc, log_scale])
            optimiser.zero_grad()
            loc.grad, log_scale.grad = grad_loc, grad_scale
            optimiser.step()
    loc.requires_grad_(False)
    log_scale.requires_grad_(False)
    with torch.no_grad():
        final = float(bound().mean())
    info = {"steps": steps, "num_particles": num_particles, "lr": lr,
            "bound_start": history[0] if history else final, "bound_end": final,
            "start_from": start_from,
            "loc": loc.detach(), "scale": log_scale.detach().exp()}
    return proposal, info
