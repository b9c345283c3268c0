"""Multi-process data parallel training with :mod:`torch.distributed` (DDP).

Launch with ``torchrun --nproc-per-node N -m pyro_mmvae train ...``: every process trains a
replica on its shard of each global batch (rows split in rank order), gradients are averaged
by :class:`torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL on GPUs), and
rank 0 alone writes checkpoints, metrics and the summary.

The per-rank loss is multiplied by the world size before ``backward``: DDP averages the
gradients of W shards, so the update is that of the *sum* over the global batch — the same
as one process training on the whole batch (``tests/test_distributed.py``).

Every collective runs on the group's device, :attr:`ProcessGroup.device`, which is the
training device of this process: NCCL takes only CUDA tensors, so a tensor built on the CPU
(e.g. a sum of test losses) must be moved there first. :func:`all_reduce_sum` does the move
itself; :func:`all_gather_object` relies on ``torch.cuda.set_device`` having been called
(:func:`init_process_group` does that *before* joining the group).

Backends: NCCL when the training device is CUDA and every local process has its own GPU;
gloo otherwise (the CPU, and several ranks sharing one GPU: gloo reduces CUDA tensors too,
which is how ``benchmarks/gpu/check.sh`` forms a real two-rank group on a single GPU).
DDP runs without the unused-parameter search (every trained parameter takes part in the
loss; frozen ones are left out of the replica) and broadcasts buffers before each forward
only when a module keeps running statistics (batch norm); the others are constants.
"""

from __future__ import annotations

import atexit
import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size`` (1 without torchrun).

    ``device`` is where this process trains and where its collectives run (the tensors handed
    to NCCL must be on it); ``backend`` is the ``torch.distributed`` backend (None in a
    single process); ``owned`` says whether :func:`init_process_group` created the default
    group (it is then destroyed when the process exits).

    Args:
        rank: this process's global rank, ``0 <= rank < world_size`` (``RANK``).
        world_size: the number of processes of the run (``WORLD_SIZE``; 1 without torchrun).
        local_rank: this process's rank on its machine (``LOCAL_RANK``), which picks its GPU.
        device: the training device of this process, where its collectives run.
        backend: ``"nccl"`` or ``"gloo"``; None in a single process.
        owned: whether :func:`init_process_group` created the default group (destroyed at
            exit) rather than joining one that already existed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owned: bool = False

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


def choose_backend(device: torch.device, local_world_size: int) -> str:
    """``nccl`` when ``device`` is CUDA and each of the ``local_world_size`` processes of this
    machine has a GPU of its own (NCCL refuses two ranks on one GPU); ``gloo`` otherwise.

    Args:
        device: the training device (its type, ``cpu`` or ``cuda``, matters).
        local_world_size: the number of processes on this machine (``LOCAL_WORLD_SIZE``).

    Returns:
        ``"nccl"`` or ``"gloo"``.
    """
    if device.type == "cuda" and local_world_size <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


def init_process_group(device: torch.device) -> ProcessGroup:
    """Join the torchrun process group; a one-process :class:`ProcessGroup` otherwise.

    On CUDA this process's GPU (``cuda:<local rank>``, modulo the GPUs there are) becomes
    the current device *before* the group is formed, as NCCL requires; the backend is
    :func:`choose_backend`'s. The returned group's ``device`` is the training device.

    The group lives until the process exits (``destroy_process_group`` then runs from
    :mod:`atexit`): a second ``train()`` in the same torchrun job joins it again, where
    destroying and re-forming it would meet the first group's rendezvous keys in
    torchrun's store (the ranks hang connecting to stale addresses).

    Args:
        device: the requested training device; under torchrun on CUDA it is replaced by
            this process's GPU, ``cuda:<local rank>``.
    """
    device = torch.device(device)
    if not launched_by_torchrun():
        return ProcessGroup(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:  # later runs of this process (train() called again) join the same group
        backend = choose_backend(device, local_world)
        options: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **options)
        atexit.register(_destroy_at_exit)
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, device=device,
                        backend=str(dist.get_backend()), owned=owned)


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """This process's training device: ``group.device`` under torchrun (``cuda:<local
    rank>`` on GPUs), else ``device``.

    Args:
        device: the requested training device.
        group: this process's group, from :func:`init_process_group`.
    """
    if group.distributed:
        return group.device
    return device


def shard(batch: dict[str, Tensor], group: ProcessGroup) -> dict[str, Tensor]:
    """This rank's rows of a global batch: contiguous chunks in rank order.

    Args:
        batch: the global batch, a dict of modality name -> tensor ``(B, *event_shape)``; a
            :class:`~pyro_mmvae.data.base.MaskedBatch` has its bool ``(B,)`` presence masks
            sharded the same way.
        group: this process's group; in a single process ``batch`` comes back as it is.

    Returns:
        The same kind of batch with this rank's rows (``torch.tensor_split`` into
        ``world_size`` chunks, so sizes differ by at most one row).
    """
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
    """The sum of ``values`` over the processes, on ``group.device``.

    ``values`` is reduced in place when it is already on the group's device; a tensor
    elsewhere (e.g. built on the CPU for a CUDA run) is first copied there, since NCCL takes
    CUDA tensors only. In a single process ``values`` comes back unchanged.

    Args:
        values: a tensor of any shape (e.g. the summed losses and row counts of a rank).
        group: this process's group.
    """
    if group.distributed:
        values = values.to(group.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any, group: ProcessGroup) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process).

    torch pickles ``obj`` into a byte tensor on the current CUDA device for NCCL (set by
    :func:`init_process_group`) and on the CPU for gloo.

    Args:
        obj: a picklable object of this rank.
        group: this process's group.
    """
    if not group.distributed:
        return [obj]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op in a single process).

    Args:
        group: this process's group.
    """
    if group.distributed:
        dist.barrier()


class LossModule(nn.Module):
    """``forward(batch) = elbo.differentiable_loss(vae.model, vae.guide, batch)``: the
    objective as a module, which is the shape :class:`DistributedDataParallel` wraps.
    Presence masks travel as the explicit ``mask`` argument (DDP may copy the batch dict,
    which would drop a :class:`~pyro_mmvae.data.base.MaskedBatch`'s ``mask``).

    Args:
        vae: the model, an ``nn.Module`` with Pyro ``model`` and ``guide`` methods.
        elbo: its objective, a :class:`pyro.infer.ELBO` with ``differentiable_loss``.
    """

    def __init__(self, vae: nn.Module, elbo: Any) -> None:
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, batch: dict[str, Tensor], mask: dict[str, Tensor] | None = None
                ) -> Tensor:
        """The differentiable loss of ``batch`` (summed over its rows, in nats).

        Args:
            batch: dict of modality name -> tensor ``(B, *event_shape)`` (this rank's rows).
            mask: dict of modality name -> bool ``(B,)``, True where a row observes the
                modality; None when every row observes every modality.
        """
        if mask is None:
            return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch)
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch, mask)


def has_running_buffers(module: nn.Module) -> bool:
    """Whether ``module`` holds buffers that change in training (batch-norm statistics).

    Args:
        module: the module to search, submodules included.
    """
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
               for m in module.modules())


def wrap_ddp(vae: nn.Module, elbo: Any, device: torch.device) -> nn.Module:
    """A DDP replica of the loss (parameters frozen by a training stage are left out).

    ``find_unused_parameters=False``: every parameter that requires a gradient takes part in
    every loss (``tests/test_accelerator_engine.py`` checks it for the zoo), so the search
    for unused ones, a traversal of the autograd graph per step, is skipped.
    Buffers are broadcast before each forward only where :func:`has_running_buffers`
    (``forward_sync_buffers``; ``broadcast_buffers`` before torch 2.13); they are synced once
    when the replica is built either way.

    Args:
        vae: the model (its trainable parameters are the replica's).
        elbo: its objective, as in :class:`LossModule`.
        device: this process's training device (``cuda:<local rank>`` or the CPU).
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    sync = has_running_buffers(vae)
    accepted = inspect.signature(DistributedDataParallel).parameters
    buffers = ({"forward_sync_buffers": sync} if "forward_sync_buffers" in accepted
               else {"broadcast_buffers": sync})
    return DistributedDataParallel(LossModule(vae, elbo), device_ids=ids,
                                   find_unused_parameters=False, **buffers)
