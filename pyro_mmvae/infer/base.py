r"""The shared machinery of the library's objectives, as a :class:`pyro.infer.ELBO` subclass.

:class:`MultimodalELBO` runs the guide once inside a ``particles`` plate of size K (dim -3),
replays the model against it, and turns the two traces into per-datapoint log-weights

.. math:: \log w_{k,s,b} = \sum_{\text{model sites}} \log p(\cdot)
          - \sum_{\text{guide latent sites}} \log q(\cdot)

of shape ``(K, S, B)``: K particles, S strata of a stratified mixture guide (1 otherwise),
B data points. Site scales (:math:`\beta`, :math:`\lambda_m`) and masks (missing modalities)
are applied as Pyro records them. Subclasses reduce these log-weights to an objective with
one of three estimators:

* ``"elbo"``: :math:`\frac{1}{K}\sum_k \log w_k` (K = 1: the usual ELBO);
* ``"iwae"``: :math:`\log \frac{1}{K}\sum_k w_k` (Burda et al. 2016), reparameterised gradient;
* ``"dreg"``: the same value with the doubly reparameterised gradient (Tucker et al. 2019):
  the guide's parameters are detached inside :math:`\log q` and the gradient reaching each
  sample :math:`z_k` is multiplied by its normalised weight :math:`\tilde w_k`, so encoder
  gradients are :math:`\sum_k \tilde w_k^2\, \partial_z \log w_k\, \partial_\phi z_k` and
  decoder gradients the IWAE ones, :math:`\sum_k \tilde w_k\, \partial_\theta \log w_k`.

All latent sites must be reparameterisable and live inside the data plate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import is_validation_enabled, site_is_subsample
from torch import Tensor

#: The estimators of :class:`MultimodalELBO`: ``"elbo"``, ``"iwae"`` and ``"dreg"``.
ESTIMATORS = ("elbo", "iwae", "dreg")


@dataclass
class WeightedTraces:
    r"""Log-weights ``(K, S, B)`` and the stratum weights ``(S, B)`` they are averaged with.

    Attributes:
        log_weights: :math:`\log w_{k,s,b}` in nats, shape ``(K, S, B)`` (particles x strata x
            batch); scaled (β, :math:`\lambda_m`) and masked as Pyro recorded the sites.
        stratum_weights: weights ``(S, B)`` of the strata in the outer average (a stratified
            mixture guide's ``stratum_weights``, e.g. :math:`1/|S|` or 0); ones ``(1, B)``
            when the guide has no strata.
        guide_trace: the vectorised guide trace the weights were computed from.
        model_trace: the model trace replayed against ``guide_trace``.
    """

    log_weights: Tensor
    stratum_weights: Tensor
    guide_trace: Trace
    model_trace: Trace


def _unwrap(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def site_log_prob(site: dict, detach_params: bool = False, scaled: bool = True) -> Tensor:
    """``log_prob`` of a sample site with its scale and mask applied, as Pyro would score it.

    With ``detach_params`` the distribution's parameters are detached (the value is not), which
    is what the DReG surrogate needs for :math:`\\log q`. With ``scaled=False`` the site's
    scale (:math:`\\beta`, :math:`\\lambda_m`) is left out and only its mask applied: the
    unweighted density importance sampling of :math:`\\log p(X)` needs.

    Args:
        site: a sample site of a Pyro trace (a dict with ``fn``, ``value``, ``args``,
            ``kwargs``, ``scale`` and ``mask``).
        detach_params: detach the distribution's parameters (not the value) before scoring;
            default False.
        scaled: multiply by the site's ``scale``; default True. The ``mask`` is always applied.

    Returns:
        The log-density in nats, with the site's batch shape (e.g. ``(K, S, B)``); masked-out
        entries are 0.
    """
    fn = detach(site["fn"]) if detach_params else site["fn"]
    log_p = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"] if scaled else 1.0, site["mask"])


def scored_sites(trace: Trace) -> list[dict]:
    """The sample sites of a trace that enter a density (every one but plate subsamples).

    Args:
        trace: a Pyro :class:`~pyro.poutine.trace_struct.Trace` (model or guide).

    Returns:
        The site dicts, observed and latent, in execution order.
    """
    return [s for s in trace.nodes.values()
            if s["type"] == "sample" and not site_is_subsample(s)]


def latent_sites(trace: Trace) -> list[dict]:
    """The unobserved sites among :func:`scored_sites`.

    Args:
        trace: a Pyro :class:`~pyro.poutine.trace_struct.Trace` (model or guide).

    Returns:
        The latent site dicts (``is_observed`` False), in execution order.
    """
    return [s for s in scored_sites(trace) if not s["is_observed"]]


_scored_sites = scored_sites
_latent_sites = latent_sites


def particle_plate(fn, size: int, dim: int):
    """``fn`` run inside a ``particles`` plate of ``size`` at ``dim`` (vectorised particles).

    Args:
        fn: a Pyro program (model or guide); called with the wrapper's arguments.
        size: K, the number of particles (the plate's size).
        dim: the plate's (negative) batch dim, left of every other plate of ``fn``; the
            objectives use ``-(max_plate_nesting + 1)``, i.e. -3 for strata and data plates.

    Returns:
        A callable with ``fn``'s signature and return value.
    """

    def wrapped(*args, **kwargs):
        with pyro.plate("particles", size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def logmeanexp(x: Tensor, dim: int = 0) -> Tensor:
    """:math:`\\log \\frac{1}{K}\\sum_k e^{x_k}` along ``dim``, computed stably.

    Args:
        x: log-values (e.g. log-weights ``(K, S, B)``), any shape.
        dim: the dimension of size K to reduce; default 0 (the particles).

    Returns:
        ``x`` with ``dim`` removed (``torch.logsumexp(x, dim) - log K``).
    """
    return torch.logsumexp(x, dim=dim) - math.log(x.size(dim))


def dreg_gradient_factor(site: dict, normalised: Tensor) -> Tensor:
    r"""The factor a latent site's value gradient is multiplied by in the DReG surrogate.

    :math:`\tilde\omega` where the guide scores the site (its mask is True or absent), 1
    where it is masked out — an unscored draw (MMVAE+'s cross-modal :math:`\tilde w_d`) has no
    score-function term to remove and keeps its IWAE gradient. Shape ``(K, S, B, 1, ...)``,
    broadcastable to the site's value.

    Args:
        site: a latent site of the guide trace; its ``mask`` (bool tensor, ``True``/absent,
            or ``False``) decides where the factor applies and its ``value`` the trailing
            dims added.
        normalised: the normalised weights :math:`\tilde\omega` ``(K, S, B)``, a softmax of
            the log-weights over the particle dim (detached).
    """
    mask = site["mask"]
    factor = normalised
    if isinstance(mask, Tensor):
        factor = torch.where(mask, normalised, torch.ones_like(normalised))
    elif mask is False:
        factor = torch.ones_like(normalised)
    extra = site["value"].dim() - normalised.dim()
    return factor.reshape(factor.shape + (1,) * extra)


class MultimodalELBO(ELBO):
    """Base class: vectorised particles, per-datapoint log-weights, three estimators.

    Args:
        num_particles: K, the number of importance samples per data point (>= 1; default 1),
            drawn at once in a ``particles`` plate at dim ``-(max_plate_nesting + 1)``.
        estimator: ``"elbo"`` (mean of :math:`\\log w_k`), ``"iwae"``
            (:math:`\\log\\frac1K\\sum_k w_k`) or ``"dreg"`` (the IWAE value with the doubly
            reparameterised gradient); one of :data:`ESTIMATORS`, default ``"elbo"`` (see the
            module docstring).
        max_plate_nesting: plates besides the particle plate (default 2: strata at dim -2 and
            data at dim -1).

    Raises:
        ValueError: for an unknown ``estimator`` or ``num_particles < 1``.
    """

    def __init__(
        self,
        num_particles: int = 1,
        estimator: str = "elbo",
        max_plate_nesting: int = 2,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of: "
                             f"{', '.join(ESTIMATORS)}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.estimator = estimator

    # ------------------------------------------------------------------- traces
    def _in_particle_plate(self, fn):
        return particle_plate(fn, self.num_particles, -(self.max_plate_nesting + 1))

    def get_traces(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        """One vectorised guide trace and the model trace replayed against it.

        Args:
            model: the Pyro model (e.g. a :mod:`pyro_mmvae.models` VAE's ``model``).
            guide: the Pyro guide; run once inside the ``particles`` plate of size K.
            args: positional arguments of both programs, as a tuple (the batch: ``data``,
                a dict of modality name -> tensor ``(B, ...)``, then optional ``mask``).
            kwargs: keyword arguments of both programs, as a dict (e.g. ``subsets``).

        Returns:
            ``(model_trace, guide_trace)``; with Pyro validation on, checks that every latent
            site is reparameterisable and every scored site lies in the ``data`` plate.
        """
        guide_trace = poutine.trace(self._in_particle_plate(guide)).get_trace(*args, **kwargs)
        replayed = poutine.replay(self._in_particle_plate(model), trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        if is_validation_enabled():
            self._check_traces(model_trace, guide_trace)
        return model_trace, guide_trace

    def _check_traces(self, model_trace: Trace, guide_trace: Trace) -> None:
        for site in _latent_sites(guide_trace):
            if not site["fn"].has_rsample:
                raise NotImplementedError(f"latent site {site['name']!r} is not "
                                          "reparameterisable; these objectives need rsample")
        for trace in (model_trace, guide_trace):
            for site in _scored_sites(trace):
                frames = {f.name for f in site["cond_indep_stack"]}
                if "data" not in frames:
                    raise NotImplementedError(f"site {site['name']!r} is outside the 'data' "
                                              "plate; per-datapoint objectives need every "
                                              "site inside it")

    def weigh(self, model_trace: Trace, guide_trace: Trace,
              detach_guide: bool = False) -> WeightedTraces:
        """Per-datapoint log-weights ``(K, S, B)`` and stratum weights ``(S, B)``.

        Args:
            model_trace: the model trace from :meth:`get_traces`; every scored site is added.
            guide_trace: the guide trace from :meth:`get_traces`; its latent sites are
                subtracted and a stratified site supplies the ``stratum_weights``.
            detach_guide: score the guide with its parameters detached (the DReG surrogate's
                :math:`\\log q`); default False.

        Returns:
            A :class:`WeightedTraces` (stratum weights ones ``(1, B)`` without strata).

        Raises:
            ValueError: when the log-weights do not have ``max_plate_nesting + 1`` dims (a
                site outside the ``data`` plate).
        """
        log_w = 0.0
        for site in _scored_sites(model_trace):
            log_w = log_w + site_log_prob(site)
        strata = None
        for site in _latent_sites(guide_trace):
            log_w = log_w - site_log_prob(site, detach_params=detach_guide)
            weights = getattr(_unwrap(site["fn"]), "stratum_weights", None)
            if weights is not None:
                strata = weights
        if not isinstance(log_w, Tensor) or log_w.dim() != self.max_plate_nesting + 1:
            raise ValueError("the model and guide must place their sites in the 'data' plate "
                             f"(dim -1); got log-weights of shape {getattr(log_w, 'shape', ())}")
        if strata is None:
            strata = log_w.new_ones(log_w.shape[1:-1] + (1,))
        return WeightedTraces(log_w, strata, guide_trace, model_trace)

    # ------------------------------------------------------------------- estimators
    def _reduce(self, log_w: Tensor) -> Tensor:
        """Estimator over particles: ``(K, S, B) -> (S, B)``."""
        if self.estimator == "elbo":
            return log_w.mean(0)
        return logmeanexp(log_w, dim=0)

    def _dreg_surrogate(self, model_trace: Trace, guide_trace: Trace) -> Tensor:
        """Per-stratum surrogate whose gradient is the DReG estimator, ``(S, B)``."""
        detached = self.weigh(model_trace, guide_trace, detach_guide=True).log_weights
        normalised = torch.softmax(detached.detach(), dim=0)
        for site in _latent_sites(guide_trace):
            value = site["value"]
            if not value.requires_grad:
                continue
            if value.shape[: normalised.dim()] != normalised.shape:
                raise NotImplementedError(f"DReG needs site {site['name']!r} to have one value "
                                          "per particle, stratum and data point")
            factor = dreg_gradient_factor(site, normalised)
            value.register_hook(lambda grad, f=factor: grad * f)
        return (normalised * detached).sum(0)

    def objective(self, model, guide, *args, **kwargs) -> tuple[Tensor, Tensor]:
        r"""``(value, surrogate)``: the objective summed over the batch, and a tensor with the
        same value whose gradient is the chosen estimator's.

        Stratified average: :math:`\sum_b \sum_s w_{s,b}\,\hat{L}_{s,b}`.

        Args:
            model: the Pyro model, e.g. ``vae.model`` of a :mod:`pyro_mmvae.models` VAE.
            guide: the Pyro guide, e.g. ``vae.guide``; run once in the ``particles`` plate.
            *args: the batch, passed to both programs: ``data`` (dict of modality name ->
                tensor ``(B, ...)``, ``None`` or missing for an absent modality), then optional
                ``mask`` (dict of name -> bool ``(B,)``, True where observed).
            **kwargs: further keyword arguments of both programs (e.g. ``subsets``, a bool
                ``(k, M)`` tensor of extra strata).

        Returns:
            ``(value, surrogate)``, scalar tensors in nats (summed over the batch, not
            averaged); equal unless the estimator is ``"dreg"``.
        """
        model_trace, guide_trace = self.get_traces(model, guide, args, kwargs)
        weighted = self.weigh(model_trace, guide_trace)
        per_stratum = self._reduce(weighted.log_weights)
        value = (weighted.stratum_weights * per_stratum).sum()
        if self.estimator != "dreg":
            return value, value
        surrogate = (weighted.stratum_weights.detach()
                     * self._dreg_surrogate(model_trace, guide_trace)).sum()
        return value, value.detach() + surrogate - surrogate.detach()

    # ------------------------------------------------------------------- Pyro's ELBO API
    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("use get_traces(): particles are vectorised in one trace")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The loss (negative objective, summed over the batch) with the estimator's gradient.

        Args:
            model: the Pyro model (e.g. ``vae.model``).
            guide: the Pyro guide (e.g. ``vae.guide``).
            *args: the batch, passed to both programs: ``data`` (dict of modality name ->
                tensor ``(B, ...)``), then optional ``mask`` (dict of name -> bool ``(B,)``).
            **kwargs: further keyword arguments of both programs (e.g. ``subsets``).

        Returns:
            A scalar tensor in nats; back-propagating it gives the ELBO, IWAE or DReG gradient.
        """
        _, surrogate = self.objective(model, guide, *args, **kwargs)
        return -surrogate

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss value without gradients.

        Args:
            model: the Pyro model, as in :meth:`differentiable_loss`.
            guide: the Pyro guide, as in :meth:`differentiable_loss`.
            *args: the batch, passed to both programs: ``data`` (dict of modality name ->
                tensor ``(B, ...)``), then optional ``mask`` (dict of name -> bool ``(B,)``).
            **kwargs: further keyword arguments of both programs (e.g. ``subsets``).

        Returns:
            The negative objective summed over the batch, in nats, as a float (computed under
            ``torch.no_grad()``).
        """
        with torch.no_grad():
            value, _ = self.objective(model, guide, *args, **kwargs)
        return -float(value)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the estimator's gradient and return the loss value.

        Args:
            model: the Pyro model, as in :meth:`differentiable_loss`.
            guide: the Pyro guide, as in :meth:`differentiable_loss`.
            *args: the batch, passed to both programs: ``data`` (dict of modality name ->
                tensor ``(B, ...)``), then optional ``mask`` (dict of name -> bool ``(B,)``).
            **kwargs: further keyword arguments of both programs (e.g. ``subsets``).

        Returns:
            The loss (negative objective summed over the batch, nats) as a float; the
            gradients are accumulated in the parameters' ``.grad``.
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())
