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
        """Shape of the decoder output for one data point."""
        return torch.Size(event_shape)

    @abstractmethod
    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        """The distribution of x given decoder ``params``; ``event_dim`` trailing dims of x."""

    @abstractmethod
    def mean(self, params: Tensor) -> Tensor:
        """The decoder mean (what generation shows)."""

    @abstractmethod
    def check_support(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` naming modality ``name`` if ``x`` is outside the support."""

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
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, scale: float, family: str) -> None:
        self.loc, self.scale, self.family = loc, float(scale), family
        if family == "laplace":
            self._log_norm = math.log(2 * self.scale)
        else:
            self._log_norm = math.log(self.scale) + 0.5 * math.log(2 * math.pi)
        super().__init__(loc.shape, torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return FixedScale(self.loc.expand(batch_shape), self.scale, self.family)

    @property
    def mean(self) -> Tensor:
        return self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        if self.family == "laplace":
            return (value - self.loc).abs().mul(-1.0 / self.scale) - self._log_norm
        return ((value - self.loc) / self.scale).pow(2).mul(-0.5) - self._log_norm

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.loc.shape
        if self.family == "laplace":
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device) - 0.5
            eps = torch.finfo(u.dtype).eps
            noise = -u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.5 - eps))
        else:
            noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * noise


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
    r""":math:`p(x|z) = \prod_i \mathrm{Laplace}(x_i; \mu_i(z), b)`."""

    name = "laplace"


class NormalLikelihood(_FixedScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathcal{N}(x_i; \mu_i(z), \sigma^2)`."""

    name = "normal"


class BernoulliLikelihood(Likelihood):
    r"""Binary data: :math:`\log p(x|z) = \sum_i x_i \log \pi_i + (1-x_i)\log(1-\pi_i)`.

    :math:`\pi=\sigma(\ell)` with :math:`\ell` the decoder's logits.
    """

    name = "bernoulli"

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        return dist.Bernoulli(logits=params, validate_args=False).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def check_support(self, x: Tensor, name: str) -> None:
        self._check_finite(x, name)
        if bool((x < 0).any() | (x > 1).any()):
            raise ValueError(f"modality {name!r} has a Bernoulli likelihood but values outside "
                             "[0, 1]; rescale the data or choose a Laplace/Normal likelihood")


class CategoricalLikelihood(Likelihood):
    r"""Token sequences: :math:`p(x|z) = \prod_t \mathrm{Cat}(x_t; \mathrm{softmax}(\ell_t))`.

    ``x`` holds integer token ids (any dtype); the decoder outputs ``event_shape + (C,)``
    logits.
    """

    name = "categorical"

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError("a categorical likelihood needs at least 2 classes")
        self.num_classes = int(num_classes)

    def param_shape(self, event_shape: torch.Size) -> torch.Size:
        return torch.Size(event_shape) + (self.num_classes,)

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        return dist.Categorical(logits=params, validate_args=False).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def check_support(self, x: Tensor, name: str) -> None:
        self._check_finite(x.float(), name)
        if bool(((x < 0) | (x >= self.num_classes) | (x != x.round())).any()):
            raise ValueError(f"modality {name!r} has a categorical likelihood over "
                             f"{self.num_classes} classes but values that are not integers in "
                             f"[0, {self.num_classes})")

    def __repr__(self) -> str:
        return f"CategoricalLikelihood(num_classes={self.num_classes})"


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "laplace": LaplaceLikelihood,
    "normal": NormalLikelihood,
    "bernoulli": BernoulliLikelihood,
    "categorical": CategoricalLikelihood,
}


def get_likelihood(name: str | Likelihood, **kwargs) -> Likelihood:
    """Build a likelihood by name (``laplace``, ``normal``, ``bernoulli``, ``categorical``)."""
    if isinstance(name, Likelihood):
        return name
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        known = ", ".join(LIKELIHOODS)
        raise ValueError(f"unknown likelihood {name!r}; choose one of: {known}") from None
    return cls(**kwargs)
