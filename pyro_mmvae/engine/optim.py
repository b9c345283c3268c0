"""The optimiser and learning-rate schedule of the training engine.

One :class:`torch.optim.Adam` over every parameter of the run (the model's modules and any
``pyro.param`` sites its programs create), with the multi-tensor (``foreach``) or ``fused``
kernels where the device has them. :mod:`pyro.optim` wraps one Adam per parameter tensor
instead (about 70 per step for a small MMVAE), which costs Python time on every step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

#: Learning-rate schedules (``--lr-schedule``), stepped once per optimiser step.
LR_SCHEDULES = ("constant", "cosine", "linear")


def build_optimizer(
    params: Iterable[Tensor], lr: float, amsgrad: bool, device: torch.device
) -> torch.optim.Adam:
    """Adam over ``params``: ``fused`` on CUDA, ``foreach`` (multi-tensor) elsewhere."""
    params = list(params)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad, fused=True)
    return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad, foreach=True)


def check_lr_schedule(name: str) -> str:
    """Return ``name`` if it is one of :data:`LR_SCHEDULES`, else raise ValueError."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of "
                         f"{', '.join(LR_SCHEDULES)}")
    return name


def build_lr_schedule(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    r"""The schedule ``name`` over ``total_steps`` optimiser steps (None for ``constant``).

    * ``cosine``: :math:`\eta_t = \eta \cdot \tfrac12 (1 + \cos(\pi t / T))`
      (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`);
    * ``linear``: :math:`\eta_t = \eta (1 - t / T)`
      (:class:`~torch.optim.lr_scheduler.LinearLR`).
    """
    check_lr_schedule(name)
    total_steps = max(int(total_steps), 1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "linear":
        return torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=0.0, total_iters=total_steps
        )
    return None
