"""Multi-process data parallel training with :mod:`torch.distributed` (DDP).

Launch with ``torchrun --nproc-per-node N -m pyro_mmvae train ...``: every process trains a
replica on its shard of each global batch (rows split in rank order), gradients are averaged
by :class:`torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL on GPUs), and
rank 0 alone writes checkpoints, metrics and the summary.

The per-rank loss is multiplied by the world size before ``backward``: DDP averages the
gradients of W shards, so the update is that of the *sum* over the global batch — the same
as one process training on the whole batch (``tests/test_distributed.py``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size`` (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether gradients are averaged across processes."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``WORLD_SIZE`` > 1) is present."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device) -> ProcessGroup:
    """Join the torchrun process group (gloo on the CPU, NCCL on CUDA); no-op otherwise."""
    if not launched_by_torchrun():
        return ProcessGroup()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    group = ProcessGroup(dist.get_rank(), dist.get_world_size(),
                         int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(group.local_rank)
    return group


def local_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """``cuda:<local rank>`` for a CUDA run under torchrun, else ``device``."""
    if device.type == "cuda" and group.distributed:
        return torch.device("cuda", group.local_rank)
    return device


def shard(batch: dict[str, Tensor], group: ProcessGroup) -> dict[str, Tensor]:
    """This rank's rows of a global batch: contiguous chunks in rank order."""
    if not group.distributed:
        return batch
    local = {name: x.tensor_split(group.world_size)[group.rank] for name, x in batch.items()}
    mask = getattr(batch, "mask", None)
    if mask is not None:  # a MaskedBatch: shard its presence masks the same way
        sharded = copy.copy(batch)
        sharded.clear()
        sharded.update(local)
        sharded.mask = {name: m.tensor_split(group.world_size)[group.rank]
                        for name, m in mask.items()}
        return sharded
    return local


def all_reduce_sum(values: Tensor, group: ProcessGroup) -> Tensor:
    """Sum ``values`` over the processes (in place; returned for chaining)."""
    if group.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any, group: ProcessGroup) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not group.distributed:
        return [obj]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op in a single process)."""
    if group.distributed:
        dist.barrier()


class LossModule(nn.Module):
    """``forward(batch) = elbo.differentiable_loss(vae.model, vae.guide, batch)``: the
    objective as a module, which is the shape :class:`DistributedDataParallel` wraps.
    Presence masks travel as the explicit ``mask`` argument (DDP may copy the batch dict,
    which would drop a :class:`~pyro_mmvae.data.base.MaskedBatch`'s ``mask``)."""

    def __init__(self, vae: nn.Module, elbo: Any) -> None:
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, batch: dict[str, Tensor], mask: dict[str, Tensor] | None = None
                ) -> Tensor:
        if mask is None:
            return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch)
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch, mask)


def wrap_ddp(vae: nn.Module, elbo: Any, device: torch.device) -> nn.Module:
    """A DDP replica of the loss (parameters frozen by a training stage are left out)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(vae, elbo), device_ids=ids,
                                   find_unused_parameters=True)
