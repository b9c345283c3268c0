r"""MVAE's sub-sampled objective (Wu & Goodman 2018).

.. math:: \mathcal{L} = \mathrm{ELBO}(X) + \sum_m \mathrm{ELBO}(x_m)
          + \sum_{j=1}^{k} \mathrm{ELBO}(X_{S_j}),\qquad S_j \sim \mathcal{U}\{S : 2 \le |S| < M\}

Each ELBO is one stratum of the product-of-experts guide (see
:class:`~pyro_mmvae.models.MVAE`); this subclass only draws the k random subsets each step and
hands the same ones to model and guide as the ``subsets`` keyword. Stratum weights are 1:
the subset ELBOs are summed, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pyro_mmvae.distributions.experts import nonempty_subsets, subset_indicators
from pyro_mmvae.infer.base import MultimodalELBO


def _batch_device(args: tuple, kwargs: dict) -> torch.device | None:
    """The device of the batch handed to model and guide (its first tensor), if any."""
    data = args[0] if args else kwargs.get("data")
    if isinstance(data, torch.Tensor):
        return data.device
    if isinstance(data, Mapping):
        for value in data.values():
            if isinstance(value, torch.Tensor):
                return value.device
    return None


class SubsampledELBO(MultimodalELBO):
    """Joint + unimodal + k random-subset ELBOs of a product-of-experts model.

    The k subsets are drawn on the batch's device from a candidate table built once per
    device: no host-to-device copy per step.

    Args:
        num_modalities: M, the number of modalities of the model.
        num_subsets: k >= 0, random subsets of size 2..M-1 drawn per step, uniformly with
            replacement (default 1; forced to 0 when M <= 2, where no such subset exists).
        **kwargs: ``num_particles``, ``estimator`` and ``max_plate_nesting`` of
            :class:`~pyro_mmvae.infer.MultimodalELBO`.

    Raises:
        ValueError: if ``num_subsets < 0``.
    """

    def __init__(self, num_modalities: int, num_subsets: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_subsets < 0:
            raise ValueError(f"num_subsets must be >= 0, got {num_subsets}")
        self.num_modalities = int(num_modalities)
        self.candidate_subsets = tuple(s for s in nonempty_subsets(self.num_modalities)
                                       if 2 <= len(s) < self.num_modalities)
        self.num_subsets = num_subsets if self.candidate_subsets else 0

    def candidates(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``(C, M)``: the subsets of size 2..M-1, one per row (cached per device).

        Args:
            device: where to put the table (``None``: torch's default device).
        """
        return subset_indicators(self.candidate_subsets, self.num_modalities, device)

    def draw_subsets(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """k subsets drawn uniformly (with replacement) from those of size 2..M-1, as a bool
        ``(k, M)`` tensor on ``device``.

        Args:
            device: where to draw the subsets (``None``: torch's default device).

        Returns:
            Bool ``(k, M)``, True where a modality is in the subset, or ``None`` when k = 0.
        """
        if self.num_subsets == 0:
            return None
        index = torch.randint(len(self.candidate_subsets), (self.num_subsets,), device=device)
        return self.candidates(device)[index]

    def objective(self, model, guide, *args, **kwargs):
        """The base objective with k fresh ``subsets`` drawn on the batch's device.

        Args:
            model: the Pyro model of a product-of-experts VAE (e.g. ``MVAE.model``).
            guide: its guide (e.g. ``MVAE.guide``); receives the same ``subsets``.
            *args: the batch: ``data`` (dict of modality name -> tensor ``(B, ...)``), then
                optional ``mask`` (dict of name -> bool ``(B,)``).
            **kwargs: keyword arguments of both programs; a given ``subsets`` (bool
                ``(k, M)``) is used as is instead of drawing new ones.

        Returns:
            ``(value, surrogate)`` as in :meth:`MultimodalELBO.objective
            <pyro_mmvae.infer.MultimodalELBO.objective>`.
        """
        if kwargs.get("subsets") is None:
            subsets = self.draw_subsets(_batch_device(args, kwargs))
            if subsets is not None:
                kwargs["subsets"] = subsets
        return super().objective(model, guide, *args, **kwargs)
