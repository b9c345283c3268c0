"""TensorBoard logs of a training run (``--tensorboard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class TensorBoardLog:
    """Losses per step and epoch, and prior-sample grids per epoch (rank 0 only)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("--tensorboard needs the tensorboard package: pip install "
                             "'pyro_mmvae[tensorboard]'") from exc
        self.writer = SummaryWriter(str(folder))

    def step(self, step: int, loss: float, lr: float) -> None:
        """Log the loss per data point and the learning rate of optimiser step ``step``."""
        self.writer.add_scalar("loss/train_step", loss, step)
        self.writer.add_scalar("lr", lr, step)

    def epoch(self, epoch: int, record: dict[str, Any], vae: Any) -> None:
        """Log an epoch's train and test loss and a grid of 16 prior samples per image
        modality (when the model has ``sample``)."""
        self.writer.add_scalar("loss/train", record["train_loss"], epoch)
        self.writer.add_scalar("loss/test", record["test_loss"], epoch)
        sample = getattr(vae, "sample", None)
        if sample is not None:
            from torchvision.utils import make_grid

            vae.eval()
            with torch.no_grad():
                generated = sample(16)
            vae.train()
            for name, images in generated.items():
                if images.dim() == 4 and images.size(1) in (1, 3):
                    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=8)
                    self.writer.add_image(f"prior_samples/{name}", grid, epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the log files."""
        self.writer.close()
