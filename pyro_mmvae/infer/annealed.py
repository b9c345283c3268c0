r"""Annealed importance sampling (AIS) of :math:`\log p(X)` per data point.

Annealed importance sampling (Neal 2001), as Wu et al. (2017, "On the quantitative analysis
of decoder-based generative models") use it for VAEs: start from a normalised proposal
:math:`r(z \mid X)` (a guide: the model's :math:`q`, or a refined per-point proposal) and
move every particle through the geometric path of unnormalised densities

.. math:: \pi_t(z) = r(z \mid X)^{1-\beta_t}\, p(X, z)^{\beta_t}, \qquad
          0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

with a Markov transition :math:`\mathcal T_t` that leaves :math:`\pi_t` invariant after each
temperature. With :math:`\ell(z) = \log p(X, z) - \log r(z \mid X)`, the log-weight of a chain
:math:`z_0 \sim r,\ z_t \sim \mathcal T_t(z_{t-1}, \cdot)` is

.. math:: \log w = \sum_{t=1}^{T} \big[\log\pi_t(z_{t-1}) - \log\pi_{t-1}(z_{t-1})\big]
          = \sum_{t=1}^{T} (\beta_t - \beta_{t-1})\, \ell(z_{t-1}),

and :math:`\mathbb E[w] = p(X)` (Neal 2001): the K chains give the same estimator as plain
importance sampling, :math:`\log \frac1K \sum_k w_k`, biased low for finite K, with the same
PSIS :math:`\hat k` and ESS diagnostics (the chains are independent draws of the extended
proposal). T = 1 is plain importance sampling with ``r``; as T grows the weights concentrate
at :math:`p(X)`; with the exact posterior as ``r``, :math:`\ell \equiv \log p(X)` and every
log-weight equals :math:`\log p(X)` whatever T.

**Transitions**: Hamiltonian Monte Carlo with ``leapfrog_steps`` leapfrog steps (one step is
the Metropolis-adjusted Langevin algorithm, MALA) and a Metropolis–Hastings correction per
chain, on all the guide's latent sites at once (MMVAE+'s shared ``z`` and private ``w_m``).
The mass matrix is diagonal, :math:`M = \mathrm{diag}(s)^{-2}` with :math:`s` the standard
deviation per data point and dimension of ``pilot_samples`` draws of the proposal (fixed
before the chains start), so the step size is relative to the proposal's scale. The step
size :math:`\epsilon_b` is adapted per data point after every transition (as Wu et al.):
:math:`\epsilon_b \leftarrow \epsilon_b \exp\big(\gamma(\bar a_b - a^*)\big)` with
:math:`\bar a_b` the mean acceptance probability of the point's chains and :math:`a^*` =
``target_accept``. Gradients of :math:`\log p(X, z)` come from the Pyro model itself,
conditioned (:func:`pyro.poutine.condition`) on the latent values; :math:`\log r` from the
guide's distributions, recorded once per chunk (the guide's sites must not depend on each
other's values, true of every guide in this library). All particles and data points move in
one vectorised pass per leapfrog step; particles are processed in chunks of at most
``chunk_size`` chains to bound memory.

**Schedules** (:data:`SCHEDULES`): ``"sigmoid"`` (Grosse et al. 2013, used by Wu et al.):
:math:`\tilde\beta_t = \sigma\big(\delta(2t/T - 1)\big)`, rescaled to run from 0 to 1,
:math:`\delta = 4`; ``"linear"``: :math:`\beta_t = t/T`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch import Tensor

from pyro_mmvae.infer.base import latent_sites, particle_plate, scored_sites, site_log_prob
from pyro_mmvae.infer.importance import _per_datapoint

#: Temperature schedules of :func:`annealed_log_weights`.
SCHEDULES = ("sigmoid", "linear")
#: The sigmoid schedule's steepness (Grosse et al. 2013).
SIGMOID_DELTA = 4.0
#: Bounds of the adapted step size (relative to the proposal's standard deviation).
STEP_SIZE_RANGE = (1e-4, 10.0)

__all__ = ["SCHEDULES", "annealed_log_weights", "temperatures"]


def temperatures(num: int, schedule: str = "sigmoid") -> Tensor:
    r""":math:`\beta_0 = 0 < \beta_1 < \dots < \beta_T = 1` (float64, length T + 1).

    Args:
        num: T >= 1, the number of steps after :math:`\beta_0 = 0`.
        schedule: ``"sigmoid"`` (default) or ``"linear"``, see :data:`SCHEDULES`.

    Raises:
        ValueError: for ``num < 1`` or an unknown schedule.
    """
    if num < 1:
        raise ValueError(f"the number of temperatures must be >= 1, got {num}")
    t = torch.arange(num + 1, dtype=torch.float64) / num
    if schedule == "linear":
        return t
    if schedule == "sigmoid":
        if num == 1:
            return t
        s = torch.sigmoid(SIGMOID_DELTA * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


class _Layout:
    """Where the particle and data dims of one latent site's value are."""

    def __init__(self, site: dict, full_dims: int, data_plate: str) -> None:
        frames = [f for f in site["cond_indep_stack"] if f.name == data_plate]
        if not frames:
            raise ValueError(f"site {site['name']!r} is outside the {data_plate!r} plate")
        self.site = site
        self.event_dims = len(site["fn"].event_shape)
        self.ndim = site["value"].dim()
        batch_dims = self.ndim - self.event_dims
        self.particle_dim = batch_dims - full_dims
        self.data_dim = batch_dims + frames[0].dim
        self.full_dims, self.data_plate = full_dims, data_plate

    def per_chain(self, values: Tensor) -> Tensor:
        """``(K, B)`` -> broadcastable against the site's value."""
        shape = [1] * self.ndim
        shape[self.particle_dim], shape[self.data_dim] = values.shape
        return values.reshape(shape)

    def per_point(self, values: Tensor) -> Tensor:
        """``(B,)`` -> broadcastable against the site's value."""
        shape = [1] * self.ndim
        shape[self.data_dim] = values.numel()
        return values.reshape(shape)

    def total(self, values: Tensor) -> Tensor:
        """Sum a value-shaped tensor to ``(K, B)`` (event dims and nested plates summed)."""
        if self.event_dims:
            values = values.sum(tuple(range(-self.event_dims, 0)))
        return _per_datapoint(values, self.site, self.full_dims, self.data_plate)


def _proposal_sites(guide: Callable, size: int, args: tuple, kwargs: dict, dim: int
                    ) -> dict[str, dict]:
    with torch.no_grad():
        trace = poutine.trace(particle_plate(guide, size, dim)).get_trace(*args, **kwargs)
    sites = {s["name"]: s for s in latent_sites(trace)}
    if not sites:
        raise ValueError("the guide has no latent site to anneal")
    return sites


def annealed_log_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 100,
    num_temperatures: int = 100,
    leapfrog_steps: int = 1,
    step_size: float = 0.2,
    target_accept: float = 0.65,
    adapt_rate: float = 1.0,
    schedule: str = "sigmoid",
    pilot_samples: int = 64,
    chunk_size: int | None = None,
    max_plate_nesting: int = 2,
    data_plate: str = "data",
    **kwargs: Any,
) -> tuple[Tensor, dict[str, Any]]:
    r"""AIS log-weights ``(num_samples, B)`` from ``guide`` to ``model`` (see the module).

    Args:
        model: the Pyro model :math:`p(X, z)`; every latent site must be proposed by the guide
            and every sample site lie in the ``data_plate``.
        guide: the proposal :math:`r(z|X)` (e.g. ``vae.guide`` with ``stratify=False``); its
            latent sites must not depend on each other's values.
        *args: positional arguments of both programs (the batch: ``data``, a dict of
            modality name -> tensor ``(B, ...)``, then optional ``mask``).
        num_samples: K >= 1, independent annealing chains per data point (default 100).
        num_temperatures: T >= 1, intermediate densities (default 100; T = 1: plain
            importance sampling).
        leapfrog_steps: L >= 1 leapfrog steps per HMC transition (default 1: MALA).
        step_size: initial leapfrog step size > 0, relative to the proposal's std (default
            0.2); adapted per data point within ``STEP_SIZE_RANGE`` = (1e-4, 10).
        target_accept: acceptance probability in (0, 1) the per-point step size is adapted to
            (default 0.65).
        adapt_rate: :math:`\gamma \ge 0` of the step-size update (default 1; 0: no
            adaptation).
        schedule: one of :data:`SCHEDULES` (default ``"sigmoid"``).
        pilot_samples: proposal draws that set the diagonal mass matrix (default 64; < 2:
            identity).
        chunk_size: chains annealed at once (``None``, the default: all K).
        max_plate_nesting: plates besides the particle plate (default 2).
        data_plate: the name of the plate over data points (default ``"data"``).
        **kwargs: keyword arguments of both programs (e.g. ``stratify=False``).

    Returns:
        ``(log_weights, info)``: the log-weights ``(num_samples, B)`` in nats (float64, CPU)
        and ``{"num_temperatures", "leapfrog_steps", "schedule", "acceptance",
        "step_size"}`` (mean acceptance probability over all transitions, mean final step
        size).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be >= 1, got {leapfrog_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    if adapt_rate < 0:
        raise ValueError(f"adapt_rate must be >= 0, got {adapt_rate}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None), got {chunk_size}")
    betas = temperatures(num_temperatures, schedule)
    dim = -(max_plate_nesting + 1)
    full = max_plate_nesting + 1
    scales: dict[str, Tensor] = {}
    if pilot_samples >= 2:
        pilot = _proposal_sites(guide, pilot_samples, args, kwargs, dim)
        for name, site in pilot.items():
            layout = _Layout(site, full, data_plate)
            scales[name] = site["value"].std(layout.particle_dim, keepdim=True).clamp(min=1e-6)
    step = num_samples if chunk_size is None else chunk_size
    chunks, accepts, steps = [], [], []
    for start in range(0, num_samples, step):
        size = min(step, num_samples - start)
        lw, acceptance, eps = _anneal_chunk(model, guide, args, kwargs, size, betas,
                                            leapfrog_steps, step_size, target_accept,
                                            adapt_rate, scales, dim, full, data_plate)
        chunks.append(lw)
        accepts.append(acceptance * size)
        steps.append(eps * size)
    info = {"num_temperatures": num_temperatures, "leapfrog_steps": leapfrog_steps,
            "schedule": schedule, "acceptance": sum(accepts) / num_samples,
            "step_size": sum(steps) / num_samples}
    return torch.cat(chunks).double().cpu(), info


def _anneal_chunk(model: Callable, guide: Callable, args: tuple, kwargs: dict, size: int,
                  betas: Tensor, leapfrog_steps: int, step_size: float, target_accept: float,
                  adapt_rate: float, scales: dict[str, Tensor], dim: int, full: int,
                  data_plate: str) -> tuple[Tensor, float, float]:
    sites = _proposal_sites(guide, size, args, kwargs, dim)
    layouts = {name: _Layout(site, full, data_plate) for name, site in sites.items()}
    names = list(sites)
    conditioned = particle_plate(model, size, dim)

    def log_densities(values: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        log_r: Tensor | float = 0.0
        for name, site in sites.items():
            lp = scale_and_mask(site["fn"].log_prob(values[name]), 1.0, site["mask"])
            log_r = log_r + _per_datapoint(lp, site, full, data_plate)
        trace = poutine.trace(poutine.condition(conditioned, data=values)).get_trace(
            *args, **kwargs)
        unconditioned = [s["name"] for s in latent_sites(trace) if s["name"] not in values]
        if unconditioned:
            raise ValueError(f"the model's latent sites {unconditioned} are not proposed by "
                             "the guide; annealing needs every latent site in the guide")
        log_p: Tensor | float = 0.0
        for site in scored_sites(trace):
            log_p = log_p + _per_datapoint(site_log_prob(site, scaled=False), site, full,
                                           data_plate)
        return log_p, log_r

    def evaluate(values: dict[str, Tensor]) -> tuple[Tensor, Tensor, list, list]:
        leaves = {n: v.detach().requires_grad_(True) for n, v in values.items()}
        with torch.enable_grad():
            log_p, log_r = log_densities(leaves)
            inputs = [leaves[n] for n in names]
            grad_p = torch.autograd.grad(log_p.sum(), inputs)
            grad_r = torch.autograd.grad(log_r.sum(), inputs, allow_unused=True)
        grad_r = [torch.zeros_like(v) if g is None else g for v, g in zip(inputs, grad_r,
                                                                            strict=True)]
        return log_p.detach(), log_r.detach(), list(grad_p), grad_r

    values = {n: sites[n]["value"].detach() for n in names}
    log_p, log_r, grad_p, grad_r = evaluate(values)
    batch = log_p.size(-1)
    log_w = torch.zeros_like(log_p)
    eps = torch.full((batch,), float(step_size), dtype=log_p.dtype, device=log_p.device)
    mass = {n: (scales[n] if n in scales else torch.ones_like(values[n])) ** 2 for n in names}
    accept_sum, transitions = 0.0, 0
    for t in range(1, len(betas)):
        beta, previous = float(betas[t]), float(betas[t - 1])
        log_w = log_w + (beta - previous) * (log_p - log_r)
        if t == len(betas) - 1:
            break

        def grad_log_pi(gp: list, gr: list, beta: float = beta) -> list:
            return [beta * p + (1 - beta) * r for p, r in zip(gp, gr, strict=True)]

        # momenta p ~ N(0, M), M = diag(s)^-2; kinetic energy 1/2 sum s^2 p^2
        momenta = [torch.randn_like(values[n]) / mass[n].sqrt() for n in names]
        kinetic = sum(layouts[n].total(0.5 * mass[n] * m ** 2) for n, m in zip(names, momenta,
                                                                                strict=True))
        log_pi = beta * log_p + (1 - beta) * log_r
        h_old = -log_pi + kinetic
        new_values = dict(values)
        new_p, new_r, new_gp, new_gr = log_p, log_r, grad_p, grad_r
        grads = grad_log_pi(grad_p, grad_r)
        for _ in range(leapfrog_steps):
            for i, n in enumerate(names):
                e = layouts[n].per_point(eps)
                momenta[i] = momenta[i] + 0.5 * e * grads[i]
                new_values[n] = new_values[n] + e * mass[n] * momenta[i]
            new_p, new_r, new_gp, new_gr = evaluate(new_values)
            grads = grad_log_pi(new_gp, new_gr)
            for i, n in enumerate(names):
                momenta[i] = momenta[i] + 0.5 * layouts[n].per_point(eps) * grads[i]
        kinetic = sum(layouts[n].total(0.5 * mass[n] * m ** 2) for n, m in zip(names, momenta,
                                                                                strict=True))
        h_new = -(beta * new_p + (1 - beta) * new_r) + kinetic
        log_accept = (h_old - h_new).clamp(max=0.0)
        log_accept = torch.where(torch.isfinite(log_accept), log_accept,
                                 torch.full_like(log_accept, -math.inf))
        accept = torch.rand_like(log_accept).log() < log_accept
        for i, n in enumerate(names):
            keep = layouts[n].per_chain(accept)
            values[n] = torch.where(keep, new_values[n], values[n])
            grad_p[i] = torch.where(keep, new_gp[i], grad_p[i])
            grad_r[i] = torch.where(keep, new_gr[i], grad_r[i])
        log_p = torch.where(accept, new_p, log_p)
        log_r = torch.where(accept, new_r, log_r)
        probability = log_accept.exp().mean(0)
        accept_sum += float(probability.mean())
        transitions += 1
        if adapt_rate > 0:
            eps = (eps * torch.exp(adapt_rate * (probability - target_accept))).clamp(
                *STEP_SIZE_RANGE)
    acceptance = accept_sum / transitions if transitions else math.nan
    return log_w.detach(), acceptance, float(eps.mean())
