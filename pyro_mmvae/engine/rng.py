"""Random number generators of a run: seeding, per-rank streams, batch order, and their
states in a form that ``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyro
import pyro.util
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch (CPU and CUDA) via :func:`pyro.set_rng_seed`.

    Args:
        seed: the seed, a non-negative integer (the run's ``--seed``).
    """
    pyro.set_rng_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of data-parallel process ``rank`` (rank 0 keeps ``seed``).

    Args:
        seed: the run's seed.
        rank: the process's rank in the data-parallel group, ``0 <= rank < world_size``.

    Returns:
        ``seed`` for rank 0, else a seed in ``[0, 2**32)`` derived from ``seed`` and ``rank``.
    """
    return seed if rank == 0 else (seed * 1_000_003 + 7919 * rank) % (2**32)


def get_rng_state() -> dict[str, Any]:
    """The states of the Python, NumPy, torch and CUDA generators, in a torch.load-safe form
    (:func:`pyro.util.get_rng_state` with NumPy's state as tensors)."""
    state = pyro.util.get_rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "python": state["random"],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": state["torch"],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`get_rng_state` (CUDA only when GPUs are present).

    Args:
        state: a dict returned by :func:`get_rng_state` (e.g. read back from a checkpoint);
            its CUDA states beyond the visible GPUs are ignored.
    """
    version, internal, gauss = state["python"]
    np_state = state["numpy"]
    pyro.util.set_rng_state({
        "random": (version, tuple(internal), gauss),
        "numpy": (np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                  np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]),
        "torch": state["torch"],
    })
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for the batch order of ``epoch``, independent of global RNG state.

    Args:
        seed: the run's seed.
        epoch: the epoch number (1-based in training), so that every epoch shuffles
            differently and a resumed run reproduces the order of the epoch it restarts.

    Returns:
        A fresh :class:`torch.Generator` seeded from ``seed`` and ``epoch``.
    """
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return generator


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block on generators seeded with ``seed``, then give Python's, NumPy's, torch's
    and CUDA's generators back the state they had (:func:`torch.random.fork_rng` for all of
    them). Side work inside — TensorBoard's prior samples — leaves the training stream, and
    so the run's parameters and its exact resume, untouched.

    Args:
        seed: the seed of the generators inside the block.
    """
    state = get_rng_state()
    try:
        pyro.set_rng_seed(seed)
        yield
    finally:
        set_rng_state(state)
