r"""One training step: the objective's differentiable loss, ``backward``, one optimiser step.

.. math:: \theta \leftarrow \mathrm{Adam}\big(\theta, \nabla_\theta\,
          \mathcal{L}(\theta; X_{\text{batch}})\big),
          \qquad \mathcal{L} = \texttt{elbo.differentiable\_loss(model, guide, batch)}

This is what :class:`pyro.infer.SVI` does, without its per-step bookkeeping: no per-parameter
optimisers, no trace of the parameter sites on every step. Around it the step adds what a
training engine needs: network mixed precision (:mod:`pyro_mmvae.engine.networks`), float16
loss scaling, gradient clipping by global norm, a learning-rate schedule, data-parallel
gradient averaging (:mod:`pyro_mmvae.engine.distributed`) and a stop on non-finite values:
a NaN/inf loss or gradient raises :class:`NonFiniteError` *before* the optimiser touches
the parameters, naming the parameters whose gradient is not finite.

**Without host syncs** (``sync_free``, the default on an accelerator with the fused Adam
kernel): reading the loss on the host after every step makes the host wait for the device,
so the next step's Python work is never hidden behind the device's. :meth:`TrainStep.queue`
instead leaves ``(loss, gradient norm)`` on the device and hands the fused Adam kernel a
device flag (its ``found_inf``, as :class:`torch.amp.GradScaler` does) that makes a step
with a non-finite loss or gradient leave the parameters and the Adam state unchanged;
:meth:`TrainStep.check` reads a window of queued steps in one transfer and raises
:class:`NonFiniteError` for the first bad one. Training therefore still never continues past
a non-finite value unnoticed: it stops at the end of the window, before any checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pyro_mmvae.engine.device import configure_backends
from pyro_mmvae.engine.distributed import ProcessGroup, all_reduce_sum, shard, wrap_ddp
from pyro_mmvae.engine.networks import grad_scaler, network_precision, warn_if_emulated


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite; no parameter was changed by that step.

    Args:
        message: what became non-finite.
        index: the step's position in the window :meth:`TrainStep.check` read (0 for a
            step that raised at once); kept as ``index``.
    """

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


class TrainStep:
    """Callable ``step(batch) -> loss`` (the global batch's loss, a float).

    Args:
        vae: the model (an ``nn.Module`` with ``model`` and ``guide`` Pyro programs).
        elbo: the objective (a :class:`pyro.infer.ELBO` with ``differentiable_loss``).
        params: ``(name, parameter)`` pairs the optimiser updates (the unconstrained
            tensors of ``pyro.param`` sites included); the names appear in
            :class:`NonFiniteError` messages.
        optimizer: a torch optimiser over those parameters.
        device: the training device (for autocast and loss scaling); on CUDA the
            backend defaults of :func:`~pyro_mmvae.engine.device.configure_backends` (TF32,
            ``cudnn.benchmark`` unless deterministic) are set.
        precision: ``"32"``, ``"bf16"`` or ``"16"`` for the networks (already resolved:
            not ``"auto"``); ``"16"`` adds a gradient scaler.
        clip_grad: clip the gradients' global 2-norm to this positive value (None: no
            clipping).
        scheduler: a learning-rate scheduler stepped after every optimiser step (None:
            none).
        group: the data-parallel process group (default None: one process).
        sync_free: run steps with :meth:`queue` and :meth:`check` instead of ``__call__``
            (see the module docstring); None (the default) chooses it off the CPU when the
            optimiser is fused Adam without float16 loss scaling.

    Raises:
        ValueError: when ``clip_grad`` is not positive, or ``sync_free`` is asked for
            without a fused Adam optimiser or with float16 loss scaling.
    """

    def __init__(
        self,
        vae: nn.Module,
        elbo: Any,
        params: Sequence[tuple[str, Tensor]],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str = "32",
        clip_grad: float | None = None,
        scheduler: Any = None,
        group: ProcessGroup | None = None,
        sync_free: bool | None = None,
    ) -> None:
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad must be positive, got {clip_grad}")
        self.vae = vae
        self.elbo = elbo
        self.names = {id(p): name for name, p in params}
        self.params = [p for _, p in params]
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.clip_grad = clip_grad
        self.scheduler = scheduler
        self.group = group or ProcessGroup()
        self.scaler = grad_scaler(precision, device)
        possible = bool(optimizer.defaults.get("fused")) and self.scaler is None
        if sync_free is None:
            sync_free = possible and torch.device(device).type != "cpu"
        if sync_free and not possible:
            raise ValueError("sync_free steps need the fused Adam optimiser and no float16 "
                             "loss scaling")
        self.sync_free = bool(sync_free)
        warn_if_emulated(precision, device)
        configure_backends(device)
        self._ddp: nn.Module | None = None
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the DDP replica after parameters were frozen or unfrozen (a new stage)."""
        if self.group.distributed:
            self._ddp = wrap_ddp(self.vae, self.elbo, self.device)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The differentiable loss of this process's shard of ``batch``.

        Args:
            batch: the global batch, a dict of modality name -> tensor
                ``(B, *event_shape)`` on the training device; a
                :class:`~pyro_mmvae.data.base.MaskedBatch` carries its bool ``(B,)``
                presence masks.

        Returns:
            A scalar tensor: the loss of this rank's rows (summed over them, in nats).
        """
        local = shard(batch, self.group)
        with network_precision(self.precision, self.device):
            if self._ddp is not None:
                mask = getattr(local, "mask", None)
                return self._ddp(dict(local), mask) if mask is not None else self._ddp(local)
            return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, local)

    def __call__(self, batch: dict[str, Tensor]) -> float:
        loss = self.loss(batch)
        scaled = loss * self.group.world_size if self.group.distributed else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            scaled.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (torch.nn.utils.get_total_norm(grads, foreach=True) if grads
                else loss.new_zeros(()))
        stats = all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]), self.group)
        total, norm_value = stats.tolist()
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            bad = self.non_finite_parameters()
            if bad:
                raise NonFiniteError(
                    f"parameter {', '.join(bad[:5])}{' and others' if len(bad) > 5 else ''} "
                    f"became non-finite (NaN or inf) in the previous optimiser step, and the "
                    f"loss became {total}")
            raise NonFiniteError(f"the loss became {total}")
        if not math.isfinite(norm_value) and self.scaler is None:
            bad = self.non_finite_gradients()
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(f"the gradient of {', '.join(bad[:5])}"
                                 f"{' and others' if len(bad) > 5 else ''} became non-finite "
                                 f"(loss {total:.6g}); the parameters were not updated")
        if self.clip_grad is not None and math.isfinite(norm_value):
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in self.params if p.grad is not None], self.clip_grad, norm,
                foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def queue(self, batch: dict[str, Tensor]) -> Tensor:
        """One step without a host sync; returns the device tensor ``(loss, gradient norm)``
        for :meth:`check`. A step whose loss or gradient norm is not finite leaves the
        parameters and the Adam state as they were (the fused kernel's ``found_inf``).

        Args:
            batch: the global batch, as for ``__call__``.

        Raises:
            RuntimeError: when the step was not built ``sync_free``.
        """
        if not self.sync_free:
            raise RuntimeError("queue() needs a TrainStep built with sync_free=True")
        loss = self.loss(batch)
        (loss * self.group.world_size if self.group.distributed else loss).backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (torch.nn.utils.get_total_norm(grads, foreach=True) if grads
                else loss.new_zeros(()))
        stats = all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]), self.group)
        if self.clip_grad is not None and grads:  # a non-finite norm: the step is skipped
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in self.params if p.grad is not None], self.clip_grad, norm,
                foreach=True)
        self.optimizer.found_inf = (~torch.isfinite(stats).all()).float()
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    @staticmethod
    def check(queued: Sequence[Tensor]) -> list[float]:
        """The losses of steps run with :meth:`queue`, read in one transfer.

        Args:
            queued: the tensors :meth:`queue` returned, in step order.

        Raises:
            NonFiniteError: for the first step whose loss or gradient norm is not finite
                (``index``: its position in ``queued``); that step changed no parameter.
        """
        if not queued:
            return []
        rows = torch.stack(list(queued)).tolist()
        for i, (total, norm) in enumerate(rows):
            if not math.isfinite(total):
                raise NonFiniteError(f"the loss became {total}; that step did not change "
                                     "the parameters", index=i)
            if not math.isfinite(norm):
                raise NonFiniteError(f"the gradient became non-finite (norm {norm}, loss "
                                     f"{total:.6g}); that step did not change the "
                                     "parameters", index=i)
        return [total for total, _ in rows]

    def non_finite_parameters(self) -> list[str]:
        """Names of the parameters that hold NaN or inf."""
        return [self.names.get(id(p), "?") for p in self.params
                if not bool(torch.isfinite(p.detach()).all())]

    def non_finite_gradients(self) -> list[str]:
        """Names of the parameters whose gradient holds NaN or inf."""
        return [self.names.get(id(p), "?") for p in self.params
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
