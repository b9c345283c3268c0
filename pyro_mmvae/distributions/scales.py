"""Maps from an encoder's unconstrained output to a positive scale.

Two parameterisations are in use in the multimodal-VAE literature:

* ``softplus``: :math:`\\sigma = \\operatorname{softplus}(v) + \\epsilon`, the usual choice
  for Normal posteriors.
* ``softmax``: :math:`\\sigma = D\\,\\operatorname{softmax}(v) + \\epsilon` over the D latent
  dimensions, as in the official MMVAE and MMVAE+ code (Shi et al. 2019; Palumbo et al. 2023)
  for Laplace posteriors. The scales then sum to about D, which keeps the posterior from
  collapsing in every dimension at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def softplus_scale(raw: Tensor) -> Tensor:
    """:math:`\\operatorname{softplus}(v) + 10^{-6}`, elementwise.

    Args:
        raw: the encoder's unconstrained output v, any shape (usually ``(B, D)``).

    Returns:
        Positive scales of the same shape.
    """
    return F.softplus(raw) + EPS


def softmax_scale(raw: Tensor) -> Tensor:
    """:math:`D\\,\\operatorname{softmax}(v) + 10^{-6}` over the last (latent) dimension.

    Args:
        raw: the encoder's unconstrained output v, shape ``(..., D)``.

    Returns:
        Positive scales of the same shape, summing to about D over the last dimension.
    """
    return F.softmax(raw, dim=-1) * raw.size(-1) + EPS


#: Scale parameterisations by name: ``"softplus"`` and ``"softmax"`` (the official MMVAE code's).
SCALE_PARAMETERISATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "softplus": softplus_scale,
    "softmax": softmax_scale,
}


def get_scale_fn(name: str) -> Callable[[Tensor], Tensor]:
    """Look up a scale parameterisation by name (``"softplus"`` or ``"softmax"``).

    Args:
        name: a key of :data:`SCALE_PARAMETERISATIONS`; another raises ``ValueError``.

    Returns:
        The map from raw encoder output to scale, e.g. :func:`softplus_scale`.
    """
    try:
        return SCALE_PARAMETERISATIONS[name]
    except KeyError:
        known = ", ".join(sorted(SCALE_PARAMETERISATIONS))
        raise ValueError(f"unknown scale parameterisation {name!r}; choose one of: {known}"
                         ) from None


def unit_scale_raw(dim: int, name: str) -> Tensor:
    """The raw value v for which the parameterisation gives a unit scale in every dimension.

    Args:
        dim: D, the latent dimension.
        name: the parameterisation: ``"softmax"`` (v = 0), else softplus
            (:math:`v = \\log(e - 1)`).

    Returns:
        A float tensor of shape ``(dim,)``, up to the 1e-6 offset of the maps.
    """
    if name == "softmax":
        return torch.zeros(dim)
    return torch.full((dim,), float(torch.log(torch.expm1(torch.tensor(1.0)))))
