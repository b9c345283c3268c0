"""The training engine: one torch optimiser step around ``elbo.differentiable_loss``, network
mixed precision, ``torch.compile``, learning-rate schedules and data-parallel training.

The Pyro programs and the objectives know nothing of it: the engine wraps
``elbo.differentiable_loss(vae.model, vae.guide, batch)``, so a user's own model/guide pair
and ``pyro.infer.SVI`` work as before.
"""

from pyro_mmvae.engine.device import configure_backends, enable_deterministic
from pyro_mmvae.engine.distributed import ProcessGroup, init_process_group
from pyro_mmvae.engine.networks import (
    PRECISIONS,
    bf16_supported,
    check_precision,
    compile_networks,
    network_precision,
    resolve_precision,
    run_network,
    warn_if_emulated,
)
from pyro_mmvae.engine.optim import LR_SCHEDULES, build_lr_schedule, build_optimizer
from pyro_mmvae.engine.step import NonFiniteError, TrainStep

__all__ = [
    "LR_SCHEDULES",
    "PRECISIONS",
    "NonFiniteError",
    "ProcessGroup",
    "TrainStep",
    "bf16_supported",
    "build_lr_schedule",
    "build_optimizer",
    "check_precision",
    "compile_networks",
    "configure_backends",
    "enable_deterministic",
    "init_process_group",
    "network_precision",
    "resolve_precision",
    "run_network",
    "warn_if_emulated",
]
