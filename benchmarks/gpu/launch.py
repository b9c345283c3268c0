"""``pyro-mmvae`` with one extra dataset for smoke tests, for ``torchrun`` and check.sh.

``mini-small`` is the first 512 training and 128 test tuples of ``polymnist-mini``::

    torchrun --nproc-per-node 2 benchmarks/gpu/launch.py train --dataset mini-small ...
"""

from __future__ import annotations

import sys

import torch

from pyro_mmvae.cli import main
from pyro_mmvae.data import polymnist_mini, register_dataset

SIZES = {"train": 512, "test": 128}

register_dataset("mini-small", lambda _root, split: polymnist_mini(split).subset(
    torch.arange(SIZES[split])))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
