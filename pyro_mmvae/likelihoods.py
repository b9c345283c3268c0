r"""Observation models :math:`p_\theta(x_m \mid z)` for one modality.

A likelihood turns the decoder's output ``params`` (shape ``(*batch, *param_shape)``) into a
Pyro distribution whose event shape is the modality's event shape, gives the decoder mean
used for generation, and checks that data lie in its support.

=============  ============================  ===================  =======================
likelihood     decoder output                support of x         mean
=============  ============================  ===================  =======================
Laplace(b)     location, ``event_shape``     real                 location
Normal(σ)      location, ``event_shape``     real                 location
Bernoulli      logits, ``event_shape``       [0, 1] (BCE)         sigmoid(logits)
Categorical(C) logits, ``event_shape + (C,)`` integers in [0, C)  argmax of the logits
=============  ============================  ===================  =======================

Laplace and Normal use a fixed scale (PolyMNIST recipes: Laplace with scale 0.75).
Bernoulli accepts grey values in [0, 1] and then is the usual binary cross-entropy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor


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


class _FixedScaleLikelihood(Likelihood):
    family: type[TorchDistribution]

    def __init__(self, scale: float = 0.75) -> None:
        if not scale > 0:
            raise ValueError(f"{self.name} likelihood scale must be positive, got {scale}")
        self.scale = float(scale)

    def distribution(self, params: Tensor, event_dim: int) -> TorchDistribution:
        scale = params.new_tensor(self.scale).expand(params.shape)
        return self.family(params, scale).to_event(event_dim)

    def mean(self, params: Tensor) -> Tensor:
        return params

    def check_support(self, x: Tensor, name: str) -> None:
        self._check_finite(x, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class LaplaceLikelihood(_FixedScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathrm{Laplace}(x_i; \mu_i(z), b)`."""

    name = "laplace"
    family = dist.Laplace


class NormalLikelihood(_FixedScaleLikelihood):
    r""":math:`p(x|z) = \prod_i \mathcal{N}(x_i; \mu_i(z), \sigma^2)`."""

    name = "normal"
    family = dist.Normal


class BernoulliLikelihood(Likelihood):
    r""":math:`\log p(x|z) = \sum_i x_i \log \pi_i + (1-x_i)\log(1-\pi_i)`, :math:`\pi=\sigma(\ell)`."""

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
