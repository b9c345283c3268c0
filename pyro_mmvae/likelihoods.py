r"""Observation models :math:`p_\theta(x_m \mid z)` for one modality.

A likelihood turns the decoder's output ``params`` (shape ``(*batch, *param_shape)``) into a
Pyro distribution whose event shape is the modality's event shape, gives the decoder mean
used for generation, and checks that data lie in its support.

==============  ==============================  ==================  ====================
likelihood      decoder output                  support of x        mean
==============  ==============================  ==================  ====================
Laplace(b)      location, ``event_shape``       real                location
Normal(σ)       location, ``event_shape``       real                location
Bernoulli       logits, ``event_shape``         [0, 1] (BCE)        sigmoid(logits)
Categorical(C)  logits, ``event_shape + (C,)``  integers in [0, C)  argmax of the logits
==============  ==============================  ==================  ====================

Laplace and Normal use a fixed scale (PolyMNIST recipes: Laplace with scale 0.75).
Bernoulli accepts grey values in [0, 1] and then is the usual binary cross-entropy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints


class Likelihood(ABC):
    """Base class: maps decoder parameters to a distribution over one modality."""

    name: str = "likelihood"

    def param_shape(self, event_shape: torch.Size) -> torch.Size:
        """Shape of the decoder output for one data point.

        Args:
            event_shape: shape of one data point of the modality, e.g. ``(3, 28, 28)``.

        Returns:
            ``event_shape`` itself here (one location or logit per element); subclasses with
            several parameters per element append a dimension.
        """
        return torch.Size(event_shape)

    @abstractmethod
    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        """The distribution of x given decoder ``params``; ``event_dim`` trailing dims of x.

        Args:
            params: decoder output, shape ``(*batch, *param_shape)``; ``*batch`` may hold
                particle and strata dimensions, e.g. ``(K, S, B)``.
            event_dim: how many trailing dimensions of x form one observation (the length
                of the modality's event shape); they are summed in ``log_prob``.

        Returns:
            A distribution with batch shape ``*batch`` and that event shape; ``log_prob`` in
            nats.
        """

    @abstractmethod
    def mean(self, params: Tensor) -> Tensor:
        """The decoder mean (what generation shows).

        Args:
            params: decoder output, shape ``(*batch, *param_shape)``.

        Returns:
            A tensor of shape ``(*batch, *event_shape)``.
        """

    @abstractmethod
    def check_support(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` naming modality ``name`` if ``x`` is outside the support.

        Reads the whole tensor (NaN, infinities, value range), so the models run it only
        while Pyro validation is on (:meth:`~pyro_mmvae.models.base.MultimodalVAE.prepare`).

        Args:
            x: a batch of the modality, shape ``(B, *event_shape)``.
            name: the modality's name, quoted in the error message.
        """

    def check_dtype(self, x: Tensor, name: str, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` naming modality ``name`` unless ``x`` has the model's floating
        ``dtype``. Free (no pass over the data), so it always runs.

        Rule: no silent casts. uint8 is raw 0..255 pixel data (divide by 255); another
        integer or bool dtype is not a valid observation of a continuous likelihood; a float
        dtype other than the model's (float64 data, float32 model) would fail in the first
        matrix product with a bare torch error, and casting it silently would hide a copy of
        the data per batch, so it is refused with the conversion to use.

        Args:
            x: a batch of the modality, shape ``(B, *event_shape)``; only its dtype is read.
            name: the modality's name, quoted in the error message.
            dtype: the model's floating dtype (that of its parameters), e.g.
                ``torch.float32``.
        """
        if x.dtype == torch.uint8:
            raise ValueError(f"modality {name!r} is uint8 (raw 0..255 pixels?), but its "
                             f"{self.name} likelihood needs {_dtype_name(dtype)} data in "
                             "[0, 1] for images: convert with x.float() / 255")
        if not x.is_floating_point():
            raise ValueError(f"modality {name!r} has dtype {_dtype_name(x.dtype)}, but its "
                             f"{self.name} likelihood needs {_dtype_name(dtype)} data: convert "
                             f"with x.to(torch.{_dtype_name(dtype)})")
        if x.dtype != dtype:
            raise ValueError(f"modality {name!r} is {_dtype_name(x.dtype)} but the model "
                             f"computes in {_dtype_name(dtype)}: convert the data with "
                             f"x.to(torch.{_dtype_name(dtype)}) (or the model with "
                             f"model.to(torch.{_dtype_name(x.dtype)}))")

    def _check_finite(self, x: Tensor, name: str) -> None:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"modality {name!r} contains NaN or infinite values")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FixedScale(TorchDistribution):
    """Laplace or Normal with one fixed scalar scale for every element.

    Scores as :math:`-|x-\\mu|/b - \\log 2b` (Laplace) or
    :math:`-\\tfrac12((x-\\mu)/\\sigma)^2 - \\log\\sigma - \\tfrac12\\log 2\\pi` (Normal) without
    materialising a scale tensor the size of the data: on image decoders run for every
    particle and stratum this is a hot path.

    ``FixedScale(loc, scale, family)`` returns an instance of a subclass named after the
    family, ``Laplace`` or ``Normal``, so that :func:`pyro.render_model` (which labels a site
    by its distribution's class name) shows the likelihood rather than this wrapper. Scores and
    draws are those of the family; ``isinstance(fn, FixedScale)`` still holds.

    Args:
        loc: the location :math:`\\mu` (decoder output), any shape; it is the batch shape
            (no event dimensions: wrap in ``.to_event(n)``).
        scale: the scale :math:`b` (Laplace) or :math:`\\sigma` (Normal), one positive float
            for every element.
        family: ``"laplace"`` or ``"normal"`` (any other value scores as a Normal, under the
            name ``FixedScale``).
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __new__(cls, loc: Tensor | None = None, scale: float | None = None,
                family: str | None = None, *args, **kwargs):
        # pick the family's subclass, so that the class name is the likelihood's
        if cls is FixedScale:
            cls = _FAMILY_CLASSES.get(family, cls)
        return super().__new__(cls)

    def __init__(self, loc: Tensor, scale: float, family: str) -> None:
        self.loc, self.scale, self.family = loc, float(scale), family
        if family == "laplace":
            self._log_norm = math.log(2 * self.scale)
        else:
            self._log_norm = math.log(self.scale) + 0.5 * math.log(2 * math.pi)
        super().__init__(loc.shape, torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        """The same distribution with ``loc`` broadcast to ``batch_shape``.

        Args:
            batch_shape: the new batch shape, broadcastable from ``loc.shape``.
            _instance: unused (Pyro's ``expand`` protocol); a new instance is returned.
        """
        return FixedScale(self.loc.expand(batch_shape), self.scale, self.family)

    @property
    def mean(self) -> Tensor:
        return self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        if self.family == "laplace":
            return (value - self.loc).abs().mul(-1.0 / self.scale) - self._log_norm
        return ((value - self.loc) / self.scale).pow(2).mul(-0.5) - self._log_norm

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """A reparameterised draw :math:`\\mu + b\\,\\epsilon` (Laplace or standard Normal
        :math:`\\epsilon`).

        Args:
            sample_shape: leading shape of the draws; the result has shape
                ``sample_shape + loc.shape``.
        """
        shape = torch.Size(sample_shape) + self.loc.shape
        if self.family == "laplace":
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device) - 0.5
            eps = torch.finfo(u.dtype).eps
            noise = -u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.5 - eps))
        else:
            noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * noise


class _LaplaceFixedScale(FixedScale):
    """:class:`FixedScale` of the Laplace family (class name ``Laplace``)."""


class _NormalFixedScale(FixedScale):
    """:class:`FixedScale` of the Normal family (class name ``Normal``)."""


# the name pyro.render_model shows; __qualname__ keeps the module attribute (pickling)
_LaplaceFixedScale.__name__ = "Laplace"
_NormalFixedScale.__name__ = "Normal"
_FAMILY_CLASSES: dict[str | None, type[FixedScale]] = {
    "laplace": _LaplaceFixedScale, "normal": _NormalFixedScale}


class _FixedScaleLikelihood(Likelihood):

    def __init__(self, scale: float = 0.75) -> None:
        if not scale > 0:
            raise ValueError(f"{self.name} likelihood scale must be positive, got {scale}")
        self.scale = float(scale)

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        return FixedScale(params, self.scale, self.name).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        return params

    def check_support(self, x: Tensor, name: str) -> None:
        self._check_finite(x, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class LaplaceLikelihood(_FixedScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathrm{Laplace}(x_i; \mu_i(z), b)`.

    The decoder outputs the location :math:`\mu(z)`, shape ``event_shape``.

    Args:
        scale: the fixed scale :math:`b > 0` shared by every element (default 0.75, the
            PolyMNIST recipe); not learnt.
    """

    name = "laplace"


class NormalLikelihood(_FixedScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathcal{N}(x_i; \mu_i(z), \sigma^2)`.

    The decoder outputs the mean :math:`\mu(z)`, shape ``event_shape``.

    Args:
        scale: the fixed standard deviation :math:`\sigma > 0` shared by every element
            (default 0.75); not learnt.
    """

    name = "normal"


class BernoulliLikelihood(Likelihood):
    r"""Binary data: :math:`\log p(x|z) = \sum_i x_i \log \pi_i + (1-x_i)\log(1-\pi_i)`.

    :math:`\pi=\sigma(\ell)` with :math:`\ell` the decoder's logits.
    """

    name = "bernoulli"

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        """Independent Bernoullis with logits ``params`` (grey values in [0, 1] allowed).

        Args:
            params: logits :math:`\\ell`, shape ``(*batch, *event_shape)``.
            event_dim: the number of trailing dimensions of x summed in ``log_prob``.
        """
        return dist.Bernoulli(logits=params, validate_args=False).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        """:math:`\\sigma(\\ell)`, the probabilities (in [0, 1]).

        Args:
            params: logits :math:`\\ell`, shape ``(*batch, *event_shape)``.
        """
        return torch.sigmoid(params)

    def check_support(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` if ``x`` has NaN/infinite values or values outside [0, 1].

        Args:
            x: a batch of the modality, shape ``(B, *event_shape)``.
            name: the modality's name, quoted in the error message.
        """
        self._check_finite(x, name)
        if bool((x < 0).any() | (x > 1).any()):
            raise ValueError(f"modality {name!r} has a Bernoulli likelihood but values outside "
                             "[0, 1]; rescale the data or choose a Laplace/Normal likelihood")


class CategoricalLikelihood(Likelihood):
    r"""Token sequences: :math:`p(x|z) = \prod_t \mathrm{Cat}(x_t; \mathrm{softmax}(\ell_t))`.

    ``x`` holds integer token ids (any dtype); the decoder outputs ``event_shape + (C,)``
    logits.

    Args:
        num_classes: C, the vocabulary size (at least 2); token ids lie in ``[0, C)``.
    """

    name = "categorical"

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError("a categorical likelihood needs at least 2 classes")
        self.num_classes = int(num_classes)

    def param_shape(self, event_shape: torch.Size) -> torch.Size:
        """``event_shape + (C,)``: one logit per class for every token.

        Args:
            event_shape: shape of one token sequence, e.g. ``(T,)``.
        """
        return torch.Size(event_shape) + (self.num_classes,)

    def check_dtype(self, x: Tensor, name: str, dtype: torch.dtype) -> None:
        """Token ids may be of any integer or floating dtype (their values are checked in
        :meth:`check_support`); only bool and complex are refused.

        Args:
            x: a batch of token ids, shape ``(B, *event_shape)``; only its dtype is read.
            name: the modality's name, quoted in the error message.
            dtype: the model's floating dtype; unused (token ids need not match it).
        """
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"modality {name!r} has dtype {_dtype_name(x.dtype)}, but its "
                             "categorical likelihood needs integer token ids: convert with "
                             "x.long()")

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        """Independent categoricals over the tokens.

        Args:
            params: logits, shape ``(*batch, *event_shape, C)``.
            event_dim: the number of token dimensions (length of the event shape).
        """
        return dist.Categorical(logits=params, validate_args=False).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        """The most likely token per position (the argmax of the logits), not an average.

        Args:
            params: logits, shape ``(*batch, *event_shape, C)``.
        """
        return params.argmax(-1)

    def check_support(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` unless every value of ``x`` is a whole number in ``[0, C)``.

        Args:
            x: token ids, shape ``(B, *event_shape)``, any integer or float dtype.
            name: the modality's name, quoted in the error message.
        """
        self._check_finite(x.float(), name)
        if bool(((x < 0) | (x >= self.num_classes) | (x != x.round())).any()):
            raise ValueError(f"modality {name!r} has a categorical likelihood over "
                             f"{self.num_classes} classes but values that are not integers in "
                             f"[0, {self.num_classes})")

    def __repr__(self) -> str:
        return f"CategoricalLikelihood(num_classes={self.num_classes})"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "laplace": LaplaceLikelihood,
    "normal": NormalLikelihood,
    "bernoulli": BernoulliLikelihood,
    "categorical": CategoricalLikelihood,
}


def get_likelihood(name: str | Likelihood, **kwargs) -> Likelihood:
    """Build a likelihood by name (``laplace``, ``normal``, ``bernoulli``, ``categorical``).

    Args:
        name: a key of :data:`LIKELIHOODS`, or a :class:`Likelihood` instance, returned as is
            (``kwargs`` are then ignored).
        **kwargs: constructor arguments of the class, e.g. ``scale=0.75`` (Laplace, Normal) or
            ``num_classes=C`` (categorical, required).

    Returns:
        The likelihood; an unknown name raises ``ValueError`` listing the known ones.
    """
    if isinstance(name, Likelihood):
        return name
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        known = ", ".join(LIKELIHOODS)
        raise ValueError(f"unknown likelihood {name!r}; choose one of: {known}") from None
    return cls(**kwargs)
