"""Small helpers every metric uses: eval mode without gradients, dataset heads, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["evaluation_mode", "head", "progress_bar"]


@contextlib.contextmanager
def evaluation_mode(vae: Any) -> Iterator[None]:
    """``torch.no_grad()`` with ``vae`` in eval mode; restores its previous train/eval mode.

    Args:
        vae: the model (an ``nn.Module``; objects without ``eval``/``train`` are left as
            they are, only gradients are turned off).
    """
    was_training = getattr(vae, "training", None)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training is not None and hasattr(vae, "train"):
            vae.train(was_training)


def head(dataset: Any, size: int | None) -> Any:
    """The first ``size`` points of ``dataset`` (all of it for ``None`` or a larger size).

    Args:
        dataset: a multimodal dataset with ``len`` and ``subset(indices)`` (e.g.
            :class:`~pyro_mmvae.data.base.MultimodalTensorDataset`).
        size: the number of leading points to keep; ``None`` keeps them all.
    """
    if size is None or len(dataset) <= size:
        return dataset
    return dataset.subset(torch.arange(size))


def progress_bar(total: int | None, desc: str, enabled: bool = False, unit: str = "it") -> Any:
    """A tqdm bar on stderr (a silent one when ``enabled`` is False); use as a context.

    Args:
        total: the number of steps (``None``: unknown, no percentage).
        desc: the label shown before the bar.
        enabled: show the bar; default False (disabled, nothing printed).
        unit: the name of one step (default ``"it"``).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, leave=False,
                dynamic_ncols=True)
