"""``pyro-mmvae`` with one extra dataset for smoke tests, for ``torchrun`` and check.sh.

``mini-small`` is the first 512 training and 128 test tuples of ``polymnist-mini``
(``MINI_SMALL=TRAIN,TEST`` changes the sizes, e.g. for check.sh's CPU dry run)::

    torchrun --nproc-per-node 2 benchmarks/gpu/launch.py train --dataset mini-small ...

Under torchrun every rank prints the process group it joined (rank, backend, device), so
the log shows that a real group was formed: NCCL with one GPU per rank, gloo with CUDA
tensors when two ranks share one GPU.
"""

from __future__ import annotations

import os
import sys

import torch

from pyro_mmvae import train as train_module
from pyro_mmvae.cli import main
from pyro_mmvae.data import polymnist_mini, register_dataset

SIZES = dict(zip(("train", "test"), (int(n) for n in os.environ.get(
    "MINI_SMALL", "512,128").split(",")), strict=True))

register_dataset("mini-small", lambda _root, split: polymnist_mini(split).subset(
    torch.arange(SIZES[split])))

_join = train_module.init_process_group


def _reporting_join(device: torch.device):
    group = _join(device)
    if group.distributed:
        print(f"process group: rank {group.rank} of {group.world_size}, backend "
              f"{group.backend}, device {group.device}", flush=True)
    return group


train_module.init_process_group = _reporting_join

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
