r"""Joint posteriors built from unimodal experts: PoE, MoE and MoPoE.

Every function here takes expert parameters stacked along a leading *expert* dimension,
``loc`` and ``scale`` of shape ``(E, *batch, D)``, and an optional presence mask of shape
``(E, *batch)`` (True where expert e is available for that data point). Absent experts drop
out of the aggregation exactly; a data point needs at least one present expert.

* **PoE** (Wu & Goodman 2018): :math:`q(z|X_S) \propto p(z)\prod_{m\in S} q_m(z|x_m)`. For
  Gaussian experts the product is Gaussian with precision :math:`T = \sum_m T_m (+1)` and mean
  :math:`\mu = T^{-1}\sum_m T_m \mu_m` (the ``+1`` and the zero mean are the standard-normal
  prior expert).
* **MoE** (Shi et al. 2019): :math:`q(z|X_S) = \frac{1}{|S|}\sum_{m\in S} q_m(z|x_m)`.
* **MoPoE** (Sutter et al. 2021): :math:`\frac{1}{|P(S)|}\sum_{T\subseteq S, T\neq\emptyset}
  \mathrm{PoE}(T)`, i.e. an MoE whose components are the PoEs of all non-empty subsets.

:class:`StratifiedMixture` is the distribution a guide samples from for the *stratified*
mixture objectives (MMVAE, MMVAE+, MoPoE): batch element ``e`` along the expert dimension is
drawn from component ``e`` alone, while ``log_prob`` scores with the full mixture density.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine.util import is_validation_enabled
from torch import Tensor
from torch.distributions import constraints

#: Distribution families of the unimodal experts.
FAMILIES = ("normal", "laplace")
MIN_SCALE = 1e-4
MAX_SCALE = 1e4


def _default_accelerator_check(device: torch.device) -> bool:
    return device.type != "cpu"


_ACCELERATOR_CHECK: Callable[[torch.device], bool] = _default_accelerator_check


def is_accelerator(device: torch.device) -> bool:
    """Whether reading a tensor on ``device`` from the host stalls an accelerator (anything
    but the CPU): the checks of this library then run only while Pyro validation is on and
    use ``torch._assert_async`` otherwise, so a training step never waits for the device.

    Args:
        device: the device a tensor lives on.
    """
    return _ACCELERATOR_CHECK(device)


def set_accelerator_check(check: Callable[[torch.device], bool]) -> Callable[[torch.device], bool]:
    """Replace :func:`is_accelerator` (returns the previous check). The fake-accelerator
    tests (``benchmarks/host_syncs.py``) use it to send CPU tensors down the accelerator path.

    Args:
        check: the new test, ``device -> bool`` (True: treat ``device`` as an accelerator).

    Returns:
        The previous check, to restore it afterwards.
    """
    global _ACCELERATOR_CHECK
    previous, _ACCELERATOR_CHECK = _ACCELERATOR_CHECK, check
    return previous


def check_rows(ok: Tensor, message: str, sync: bool = False) -> None:
    """Raise ``ValueError(message)`` unless every entry of the bool tensor ``ok`` is True.

    A host check (a sync) with ``sync`` (Pyro validation on) or off an accelerator; on an
    accelerator otherwise ``torch._assert_async``, which fails at the device's next
    synchronisation without stalling the host.

    Args:
        ok: bool tensor of any shape, e.g. ``(B,)`` (one entry per data point).
        message: the error message (one line naming what is wrong and how to fix it).
        sync: force the host check even on an accelerator (pass
            ``is_validation_enabled()``); default False.
    """
    if sync or not is_accelerator(ok.device):
        if not bool(ok.all()):
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)


def component_distribution(family: str, loc: Tensor, scale: Tensor) -> TorchDistribution:
    """A factorised Normal or Laplace over the last dimension (event shape ``(D,)``).

    Args:
        family: ``"normal"`` or ``"laplace"`` (:data:`FAMILIES`); another raises ``ValueError``.
        loc: locations, shape ``(*batch, D)``.
        scale: positive scales (standard deviations for Normal), shape ``(*batch, D)``.

    Returns:
        A distribution with batch shape ``(*batch,)`` and event shape ``(D,)``.
    """
    if family == "normal":
        return dist.Normal(loc, scale).to_event(1)
    if family == "laplace":
        return dist.Laplace(loc, scale).to_event(1)
    raise ValueError(f"unknown posterior family {family!r}; choose one of: {', '.join(FAMILIES)}")


def _check_experts(loc: Tensor, scale: Tensor, mask: Tensor | None) -> Tensor:
    if loc.shape != scale.shape:
        raise ValueError(f"expert loc and scale shapes differ: {tuple(loc.shape)} vs "
                         f"{tuple(scale.shape)}")
    if loc.dim() < 2:
        raise ValueError("expert parameters need shape (E, *batch, D)")
    if mask is None:
        return torch.ones(loc.shape[:-1], dtype=torch.bool, device=loc.device)
    if mask.shape != loc.shape[:-1]:
        raise ValueError(f"expert mask must have shape {tuple(loc.shape[:-1])}, "
                         f"got {tuple(mask.shape)}")
    return mask.bool()


def product_of_experts(
    loc: Tensor,
    scale: Tensor,
    mask: Tensor | None = None,
    prior_expert: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Closed-form product of Gaussian experts along dim 0.

    .. math:: T = [1] + \sum_{e} m_e\,\sigma_e^{-2},\qquad
              \mu = T^{-1}\sum_e m_e\,\sigma_e^{-2}\mu_e,\qquad \sigma = T^{-1/2}

    where :math:`m_e` is the presence mask and the bracketed 1 is the standard-normal prior
    expert. Scales are clamped to ``[1e-4, 1e4]`` before inversion so that a near-deterministic
    expert cannot produce an infinite precision. Without a prior expert, a data point with no
    present expert has no product and raises.

    Args:
        loc: expert means :math:`\mu_e`, shape ``(E, *batch, D)``.
        scale: expert standard deviations :math:`\sigma_e`, shape ``(E, *batch, D)``.
        mask: bool ``(E, *batch)``, True where expert e is present; ``None``: all present.
        prior_expert: include the standard-normal prior expert (default True).

    Returns:
        The ``loc`` and ``scale`` of the product, shape ``(*batch, D)``.
    """
    mask = _check_experts(loc, scale, mask)
    precision = scale.clamp(MIN_SCALE, MAX_SCALE).pow(-2) * mask.unsqueeze(-1)
    total = precision.sum(0)
    weighted = (precision * loc).sum(0)
    if prior_expert:
        total = total + 1.0
    else:
        check_rows(mask.any(0), "PoE without a prior expert needs at least one present expert "
                   "per row", sync=is_validation_enabled())
    return weighted / total, total.rsqrt()


def nonempty_subsets(num: int) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``range(num)``, by size then lexicographically.

    Args:
        num: the number of experts (modalities), at least 1.

    Returns:
        :math:`2^{num} - 1` tuples of indices, e.g. ``[(0,), (1,), (0, 1)]`` for 2.
    """
    if num < 1:
        raise ValueError("need at least one modality")
    return [s for k in range(1, num + 1) for s in itertools.combinations(range(num), k)]


@functools.lru_cache(maxsize=256)
def _cached_table(rows: tuple[tuple[bool, ...], ...] | tuple[int, ...], dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(rows, dtype=dtype, device=device)


def constant_table(rows, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """``torch.tensor(rows, dtype, device)`` built once per (rows, dtype, device) and cached:
    one host-to-device copy per process instead of one per training step. ``rows`` is a
    hashable (nested) tuple; the result is shared, so never modify it in place.

    Args:
        rows: a hashable (nested) tuple of numbers or bools, e.g. ``((True, False),)``.
        dtype: the tensor's dtype, e.g. ``torch.bool`` or ``torch.long``.
        device: where the tensor lives; ``None``: the CPU (``"cuda"`` means the current
            GPU).
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:  # the same GPU for every rank's key
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached_table(rows, dtype, device)


@functools.lru_cache(maxsize=256)
def _indicator_rows(subsets: tuple[tuple[int, ...], ...], num: int
                    ) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(i in s for i in range(num)) for s in subsets)


def subset_indicators(subsets, num: int,
                      device: torch.device | str | None = None) -> Tensor:
    """Bool ``(len(subsets), num)``: row j marks the members of ``subsets[j]`` (tuples of
    indices), built once per device (:func:`constant_table`).

    Args:
        subsets: an iterable of tuples of expert indices in ``range(num)``.
        num: the number of experts E (columns).
        device: where the table lives; ``None``: the CPU.
    """
    rows = _indicator_rows(tuple(subsets), num)
    if not rows:
        return torch.zeros(0, num, dtype=torch.bool, device=device)
    return constant_table(rows, torch.bool, device)


def subset_matrix(num: int, device: torch.device | str | None = None) -> Tensor:
    """Indicator matrix ``(2^num - 1, num)``: row j marks the members of subset j (in the
    order of :func:`nonempty_subsets`). Built once per ``(num, device)`` and shared: do not
    modify it in place.

    Args:
        num: the number of experts E (at least 1).
        device: where the table lives; ``None``: the CPU.
    """
    return subset_indicators(_nonempty_subsets(num), num, device)


@functools.lru_cache(maxsize=64)
def _nonempty_subsets(num: int) -> tuple[tuple[int, ...], ...]:
    return tuple(nonempty_subsets(num))


def subset_products(
    loc: Tensor,
    scale: Tensor,
    members: Tensor,
    mask: Tensor | None = None,
    prior_expert: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The PoE of the present members of every subset, vectorised over subsets.

    ``members`` is a bool matrix ``(S, E)``: row s marks the experts of subset s. Component s
    is :math:`\mathrm{PoE}(\{e : \text{members}_{s,e} \wedge \text{mask}_{e,b}\})`, computed
    as in :func:`product_of_experts` with one einsum over all subsets.

    Returns ``(loc, scale, count)``: ``(S, *batch, D)`` twice and the number of present members
    ``(S, *batch)``. A component with no present member and no prior expert is returned as a
    standard normal and must be masked out by the caller (``count == 0``).

    Args:
        loc: expert means, shape ``(E, B, D)`` (exactly one batch dimension).
        scale: expert standard deviations, shape ``(E, B, D)``.
        members: bool ``(S, E)``, row s marks the experts of subset s.
        mask: bool ``(E, B)``, True where expert e is present in row b; ``None``: all
            present.
        prior_expert: include the standard-normal prior expert in every product (default
            False).
    """
    mask = _check_experts(loc, scale, mask)
    used = members.to(loc.dtype).unsqueeze(-1).unsqueeze(-1) if loc.dim() == 3 else None
    if used is None:
        raise ValueError("subset_products expects experts of shape (E, B, D)")
    present = used.squeeze(-1) * mask.to(loc.dtype)  # (S, E, B)
    precision = scale.clamp(MIN_SCALE, MAX_SCALE).pow(-2)
    total = torch.einsum("seb,ebd->sbd", present, precision)
    weighted = torch.einsum("seb,ebd->sbd", present, precision * loc)
    count = present.sum(1)
    total = total + (1.0 if prior_expert else (count == 0).to(loc.dtype).unsqueeze(-1))
    return weighted / total, total.rsqrt(), count


def mopoe_components(
    loc: Tensor,
    scale: Tensor,
    mask: Tensor | None = None,
    prior_expert: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The PoE of every non-empty subset of experts (the components of MoPoE).

    Component j is :math:`\mathrm{PoE}(T_j)` for the j-th subset of :func:`nonempty_subsets`.
    A component is available for a data point only when every member of its subset is
    present, so the MoPoE of a row with present set S is the uniform mixture over the
    :math:`2^{|S|}-1` subsets of S.

    Returns ``(loc, scale, mask)`` of shape ``(J, B, D)``, ``(J, B, D)`` and ``(J, B)`` with
    :math:`J = 2^E - 1`.

    Args:
        loc: expert means, shape ``(E, B, D)``.
        scale: expert standard deviations, shape ``(E, B, D)``.
        mask: bool ``(E, B)``, True where expert e is present; ``None``: all present.
        prior_expert: include the standard-normal prior expert in every product (default
            False, as in Sutter et al. 2021).
    """
    members = subset_matrix(loc.size(0), loc.device)
    c_loc, c_scale, _ = subset_products(loc, scale, members, mask, prior_expert)
    return c_loc, c_scale, subset_availability(members, _check_experts(loc, scale, mask))


def subset_availability(members: Tensor, present: Tensor) -> Tensor:
    """Bool ``(S, B)``: every member of subset s (``members`` ``(S, E)``) is present in row b.

    Args:
        members: bool ``(S, E)``, row s marks the experts of subset s.
        present: bool ``(E, B)``, True where expert e is present in row b.
    """
    missing = members.to(torch.float32) @ (~present).to(torch.float32)
    return missing == 0


class ComponentDraws(TorchDistribution):
    """Base of the stratified guide distributions: a draw is one reparameterised draw of each
    component in ``self.components`` (one per stratum); subclasses define ``log_prob``.

    Args:
        batch_shape: the batch shape, strata first, e.g. ``(S, B)``.
        event_shape: the event shape, ``(D,)``.
        validate_args: Pyro/torch argument validation; ``None`` follows the global setting.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True
    components: TorchDistribution

    def expand(self, batch_shape, _instance=None):
        """Pyro's generic expansion (an ``ExpandedDistribution``) to ``batch_shape``.

        Args:
            batch_shape: the new batch shape, broadcastable from :attr:`batch_shape`.
            _instance: unused (Pyro's ``expand`` protocol).
        """
        return TorchDistribution.expand(self, batch_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """One reparameterised draw per stratum, each from its own component.

        Args:
            sample_shape: leading shape of the draws; the result has shape
                ``sample_shape + batch_shape + (D,)``.
        """
        return self.components.rsample(sample_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """:meth:`rsample` without gradients.

        Args:
            sample_shape: leading shape of the draws, as in :meth:`rsample`.
        """
        with torch.no_grad():
            return self.rsample(sample_shape)


class StratifiedMixture(ComponentDraws):
    r"""Uniform mixture of experts, laid out for a stratified estimator.

    Parameters have shape ``(E, *batch, D)`` and the distribution has batch shape
    ``(E, *batch)``: ``rsample`` draws element ``e`` from expert ``e`` only (one draw per
    stratum, reparameterised), while ``log_prob(z)`` at every element is the mixture density

    .. math:: \log q(z) = \log \frac{1}{|S|} \sum_{e \in S} q_e(z)

    over the present experts S of that data point, computed with log-sum-exp. Averaging an
    integrand over the strata with :attr:`stratum_weights` (:math:`1/|S|` for present experts,
    0 otherwise) gives the stratified Monte-Carlo estimate of an expectation under the mixture,
    as the MMVAE objective requires (Shi et al. 2019, eq. 3).

    With ``score="component"`` each element is scored by its own component instead,
    :math:`\log q_e(z)`: the per-component KL terms of MoPoE (Sutter et al. 2021) and the
    per-subset ELBOs of MVAE (Wu & Goodman 2018). ``weights`` overrides the stratum weights
    (MVAE sums its subset ELBOs: weight 1 for every available stratum).

    Args:
        loc: component locations, shape ``(E, *batch, D)``.
        scale: component scales, shape ``(E, *batch, D)``, positive.
        mask: bool ``(E, *batch)``, True where component e is present for that data point;
            ``None``: all present. Every data point needs at least one.
        family: ``"normal"`` (default) or ``"laplace"``, the family of every component.
        score: ``"mixture"`` (default: ``log_prob`` is the mixture density) or
            ``"component"`` (each element scored by its own component).
        weights: stratum weights ``(E, *batch)`` replacing :math:`1/|S|` (masked by
            ``mask``); ``None``: the mixture weights.
        validate_args: Pyro/torch argument validation; ``None`` follows the global setting.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        mask: Tensor | None = None,
        family: str = "normal",
        score: str = "mixture",
        weights: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.mask = _check_experts(loc, scale, mask)
        if score not in ("mixture", "component"):
            raise ValueError(f"score must be 'mixture' or 'component', got {score!r}")
        if weights is not None and weights.shape != self.mask.shape:
            raise ValueError(f"stratum weights must have shape {tuple(self.mask.shape)}")
        if is_validation_enabled() and not bool(self.mask.any(0).all()):
            raise ValueError("every data point needs at least one present expert")
        self.loc, self.scale, self.family, self.score = loc, scale, family, score
        self._weights = weights
        self.components = component_distribution(family, loc, scale)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @property
    def num_experts(self) -> int:
        """The number of experts M (strata)."""
        return self.loc.size(0)

    @property
    def log_mixture_weights(self) -> Tensor:
        """:math:`\\log(1/|S|)` for present experts, :math:`-\\infty` otherwise; ``(E, *batch)``."""
        count = self.mask.sum(0, keepdim=True).to(self.loc.dtype)
        logw = -count.log().expand_as(self.mask)
        return logw.masked_fill(~self.mask, -math.inf)

    @property
    def stratum_weights(self) -> Tensor:
        """Weight of each stratum in a stratified average: :math:`1/|S|` or 0; ``(E, *batch)``."""
        if self._weights is not None:
            return self._weights * self.mask
        return self.log_mixture_weights.exp()

    def log_prob(self, value: Tensor) -> Tensor:
        # value (*S, E, *batch, D) -> score it under every component e' on a new dim.
        if self.score == "component":
            return self.components.log_prob(value)
        nbatch = self.loc.dim() - 2
        scores = self.components.log_prob(value.unsqueeze(-nbatch - 2))  # (*S, E, E', *batch)
        return torch.logsumexp(scores + self.log_mixture_weights, dim=-nbatch - 1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    def select_component(self, generator: torch.Generator | None = None) -> Tensor:
        """Pick one present expert per data point uniformly at random; returns ``(*batch,)``.

        Args:
            generator: the random generator for ``torch.multinomial``; ``None``: torch's
                global one.
        """
        probs = self.log_mixture_weights.exp().movedim(0, -1).reshape(-1, self.num_experts)
        idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return idx.reshape(self.batch_shape[1:])

    def choose_component(self, generator: torch.Generator | None = None) -> TorchDistribution:
        """One present component per data point, drawn with the mixture weights.

        Returns that component as a distribution of batch shape ``(*batch,)``: its mean is
        the point conditional generation decodes for a mixture posterior.

        Args:
            generator: the random generator of the pick; ``None``: torch's global one.
        """
        index = self.select_component(generator)
        gather = index.unsqueeze(0).unsqueeze(-1).expand(1, *index.shape, self.loc.size(-1))
        loc = self.loc.gather(0, gather).squeeze(0)
        scale = self.scale.gather(0, gather).squeeze(0)
        return component_distribution(self.family, loc, scale)

    def marginal(self) -> TorchDistribution:
        """The mixture as one distribution per data point, batch shape ``(*batch,)``.

        Sampling picks a present component with the mixture weights, then draws from it
        (not reparameterised: use it as an importance proposal, not for gradients);
        ``log_prob`` is the mixture density.
        """
        weights = self.log_mixture_weights.exp().movedim(0, -1)
        components = component_distribution(self.family, self.loc.movedim(0, -2),
                                             self.scale.movedim(0, -2))
        return dist.MixtureSameFamily(dist.Categorical(probs=weights), components)
