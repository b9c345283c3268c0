"""Image grids of cross-modal and unconditional generations (torchvision ``save_image``).

Every tile is clamped to [0, 1]; grids use torchvision's default 2-pixel padding, so a grid
of R rows and C columns of HxW images is (R * (H + 2) + 2) x (C * (W + 2) + 2) pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pyro_mmvae.metrics.coherence import evaluation_mode

GRID_PADDING = 2


def _as_rgb_images(x: Tensor, name: str) -> Tensor:
    """(N, C, H, W) with C in {1, 3} -> float (N, 3, H, W) in [0, 1] on the CPU."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"modality {name!r} has shape {tuple(x.shape)}; image grids need (N, 1 or 3, H, W)."
        )
    x = x.detach().float().clamp(0.0, 1.0).cpu()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _save_rows(rows: list[Tensor], path: str | Path, columns: int) -> Path:
    sizes = {tuple(r.shape[2:]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"all modalities must have the same image size to share a grid: {sizes}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(torch.cat(rows), nrow=columns, padding=GRID_PADDING, pad_value=1.0)
    save_image(grid, path)
    return path


def save_cross_generation_grid(
    vae: Any,
    batch: Mapping[str, Tensor],
    path: str | Path,
    num_examples: int = 8,
) -> Path:
    """Save a PNG with one block of rows per source modality s.

    Block of s: the first ``num_examples`` inputs x_s, then for each modality t (model
    order, t = s being the reconstruction) the decoder mean of x_t generated from x_s alone
    (``vae.generate(..., sources=[s])``). Columns are data points, so a column reads as one
    tuple translated into every modality. Grid: M * (M + 1) rows x ``num_examples`` columns.
    """
    names = tuple(getattr(vae, "names", None) or batch.keys())
    missing = [n for n in names if batch.get(n) is None]
    if missing:
        raise ValueError(f"the batch lacks modalities {missing}; pass a full multimodal batch.")
    n = min(num_examples, *(len(batch[m]) for m in names))
    if n < 1:
        raise ValueError("need at least one example (num_examples >= 1, non-empty batch).")
    rows: list[Tensor] = []
    with evaluation_mode(vae):
        for source in names:
            inputs = batch[source][:n]
            generated = vae.generate({source: inputs}, sources=[source], targets=list(names))
            rows.append(_as_rgb_images(inputs, source))
            rows.extend(_as_rgb_images(generated[t][:n], t) for t in names)
    return _save_rows(rows, path, columns=n)


def save_unconditional_grid(vae: Any, path: str | Path, num_samples: int = 8) -> Path:
    """Save a PNG of ``vae.sample(num_samples)``: one row per modality, one column per z."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    with evaluation_mode(vae):
        samples = vae.sample(num_samples)
    names = tuple(getattr(vae, "names", None) or samples.keys())
    rows = [_as_rgb_images(samples[m][:num_samples], m) for m in names]
    return _save_rows(rows, path, columns=num_samples)
