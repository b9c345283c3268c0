"""TensorBoard logs of a training run (``--tensorboard``).

The prior samples of each epoch are drawn from generators of their own
(:func:`~pyro_mmvae.engine.rng.isolated_rng`, the same seed every epoch, so the grids show
the model changing on fixed noise): a run trains to the same parameters with and without
``--tensorboard``, and resumes exactly with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_mmvae.engine.rng import isolated_rng


class TensorBoardLog:
    """Losses per step and epoch, and prior-sample grids per epoch (rank 0 only).

    Args:
        folder: the folder of the event files (``<run>/tensorboard``); created if absent.
        sample_seed: the seed of the prior samples' own generators, the same every epoch.

    Raises:
        ValueError: when the ``tensorboard`` package is not installed.
    """

    def __init__(self, folder: Path, sample_seed: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("--tensorboard needs the tensorboard package: pip install "
                             "'pyro_mmvae[tensorboard]'") from exc
        self.writer = SummaryWriter(str(folder))
        self.sample_seed = sample_seed

    def step(self, step: int, loss: float, lr: float) -> None:
        """Log the loss per data point and the learning rate of optimiser step ``step``.

        Args:
            step: the global optimiser step, counted from 1 over the whole run.
            loss: the batch's loss per data point (nats).
            lr: the learning rate the step used.
        """
        self.writer.add_scalar("loss/train_step", loss, step)
        self.writer.add_scalar("lr", lr, step)

    def epoch(self, epoch: int, record: dict[str, Any], vae: Any) -> None:
        """Log an epoch's train and test loss and a grid of 16 prior samples per image
        modality (when the model has ``sample``).

        Args:
            epoch: the epoch number (1-based), the x axis of the plots.
            record: the epoch's metrics record, with ``"train_loss"`` and ``"test_loss"``
                (nats per data point).
            vae: the model; its ``sample(n)`` (dict of modality name -> ``(n, C, H, W)``)
                gives the grids of 1- and 3-channel image modalities.
        """
        self.writer.add_scalar("loss/train", record["train_loss"], epoch)
        self.writer.add_scalar("loss/test", record["test_loss"], epoch)
        sample = getattr(vae, "sample", None)
        if sample is not None:
            from torchvision.utils import make_grid

            training = vae.training
            vae.eval()
            try:
                with torch.no_grad(), isolated_rng(self.sample_seed):
                    generated = sample(16)
            finally:
                vae.train(training)
            for name, images in generated.items():
                if images.dim() == 4 and images.size(1) in (1, 3):
                    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=8)
                    self.writer.add_image(f"prior_samples/{name}", grid, epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the log files."""
        self.writer.close()
