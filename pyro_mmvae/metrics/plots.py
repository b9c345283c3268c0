"""Figures of the evaluation: labelled image grids (PIL) and plots (matplotlib, Agg canvas).

Image grids of cross-modal and unconditional generations are drawn with torchvision's
``make_grid`` (every tile clamped to [0, 1], 2-pixel white padding), enlarged by an integer
factor (nearest neighbour, so each tile stays exact) and framed by row and column labels
written with PIL's scalable default font. A grid of R rows and C columns of HxW tiles at
scale f is ``(C * (W + 2) + 2) * f`` x ``(R * (H + 2) + 2) * f`` pixels, placed at
``(left, top)`` = the label margins reported by :func:`grid_layout`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor
from torchvision.utils import make_grid

from pyro_mmvae.metrics.common import evaluation_mode

GRID_PADDING = 2
#: Tiles are enlarged until they are at least this many pixels tall.
MIN_TILE = 56
FONT_SIZE = 14
#: Space between a row label and the grid, and between blocks of rows.
LABEL_GAP = 6


def _as_rgb_images(x: Tensor, name: str) -> Tensor:
    """(N, C, H, W) with C in {1, 3} -> float (N, 3, H, W) in [0, 1] on the CPU."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"modality {name!r} has shape {tuple(x.shape)}; image grids need (N, 1 or 3, H, W)."
        )
    x = x.detach().float().clamp(0.0, 1.0).cpu()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def grid_layout(row_labels: Sequence[str], tile: int, scale: int | None = None
                ) -> dict[str, int]:
    """Scale factor and label margins (pixels) of a labelled grid with ``tile``-pixel tiles.

    Args:
        row_labels: the row labels; the widest sets the left margin.
        tile: the side of one tile in pixels (the larger of height and width).
        scale: integer upscaling of the tiles (``None`` or 0: the smallest that makes a tile
            at least ``MIN_TILE`` = 56 pixels).

    Returns:
        ``{"scale", "left", "top"}``: the factor and the left and top margins in pixels.
    """
    font = _font()
    factor = scale or max(1, math.ceil(MIN_TILE / tile))
    left = max(_text_width(font, label) for label in row_labels) + 2 * LABEL_GAP
    return {"scale": factor, "left": left, "top": FONT_SIZE + 3 * LABEL_GAP}


def _save_labelled_grid(rows: list[Tensor], row_labels: Sequence[str],
                        column_labels: Sequence[str], path: str | Path,
                        title: str | None = None, block: int | None = None) -> Path:
    """One row of tiles per entry of ``rows``, labelled; a line after every ``block`` rows."""
    from PIL import Image, ImageDraw

    sizes = {tuple(r.shape[2:]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"all modalities must have the same image size to share a grid: {sizes}.")
    columns = len(column_labels)
    height, width = next(iter(sizes))
    grid = make_grid(torch.cat(rows), nrow=columns, padding=GRID_PADDING, pad_value=1.0)
    layout = grid_layout(row_labels, max(height, width))
    factor, left, top = layout["scale"], layout["left"], layout["top"]
    grid = grid.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    pixels = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    font = _font()
    title_space = FONT_SIZE + 2 * LABEL_GAP if title else 0
    canvas = Image.new("RGB", (left + pixels.shape[1] + LABEL_GAP,
                               title_space + top + pixels.shape[0] + LABEL_GAP), "white")
    canvas.paste(Image.fromarray(pixels), (left, title_space + top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((LABEL_GAP, LABEL_GAP), title, fill="black", font=font)
    step_x, step_y = (width + GRID_PADDING) * factor, (height + GRID_PADDING) * factor
    y0 = title_space + top + GRID_PADDING * factor
    for i, label in enumerate(column_labels):
        x = left + GRID_PADDING * factor + i * step_x + (width * factor) // 2
        draw.text((x, title_space + top - LABEL_GAP), label, fill="black", font=font,
                  anchor="ms")
    for j, label in enumerate(row_labels):
        y = y0 + j * step_y + (height * factor) // 2
        draw.text((left - LABEL_GAP, y), label, fill="black", font=font, anchor="rm")
        if block and j % block == 0 and j:
            line_y = y0 + j * step_y - (GRID_PADDING * factor) // 2 - 1
            draw.line([(LABEL_GAP, line_y), (canvas.width - LABEL_GAP, line_y)], fill="black",
                      width=1)
    return _write_png(path, lambda handle: canvas.save(handle, format="PNG"))


def _column_labels(labels: Tensor | Sequence[int] | None, n: int) -> list[str]:
    if labels is None:
        return [f"#{i + 1}" for i in range(n)]
    return [f"digit {int(y)}" for y in list(labels)[:n]]


def save_cross_generation_grid(
    vae: Any,
    batch: Mapping[str, Tensor],
    path: str | Path,
    num_examples: int = 8,
    labels: Tensor | Sequence[int] | None = None,
) -> Path:
    """Save a labelled PNG with one block of rows per source modality s.

    Block of s: a row ``input s`` (the first ``num_examples`` inputs x_s), then for each
    modality t (model order) a row ``from s: t``: the decoder mean of x_t generated from x_s
    alone (``vae.generate(..., sources=[s])``; t = s is the reconstruction). Columns are
    data points, labelled with their digit class when ``labels`` are given (else #1, #2...),
    so a column reads as one tuple translated into every modality. M * (M + 1) rows.

    Args:
        vae: the model (with ``names`` and ``generate``); run in eval mode.
        batch: a full multimodal batch, dict of modality name -> images ``(B, 1 or 3, H, W)``
            in [0, 1], every modality present and of one image size.
        path: the PNG file to write (atomically).
        num_examples: columns, at most the batch size (default 8).
        labels: class labels ``(B,)`` for the column headers (``None``: #1, #2, ...).

    Returns:
        The path written.
    """
    names = tuple(getattr(vae, "names", None) or batch.keys())
    missing = [n for n in names if batch.get(n) is None]
    if missing:
        raise ValueError(f"the batch lacks modalities {missing}; pass a full multimodal batch.")
    n = min(num_examples, *(len(batch[m]) for m in names))
    if n < 1:
        raise ValueError("need at least one example (num_examples >= 1, non-empty batch).")
    rows: list[Tensor] = []
    row_labels: list[str] = []
    with evaluation_mode(vae):
        for source in names:
            inputs = batch[source][:n]
            generated = vae.generate({source: inputs}, sources=[source], targets=list(names))
            rows.append(_as_rgb_images(inputs, source))
            row_labels.append(f"input {source}")
            for t in names:
                rows.append(_as_rgb_images(generated[t][:n], t))
                row_labels.append(f"from {source}: {t}" + (" (recon.)" if t == source else ""))
    return _save_labelled_grid(rows, row_labels, _column_labels(labels, n), path,
                               title="Cross-modal generation from one input modality",
                               block=len(names) + 1)


def save_unconditional_grid(vae: Any, path: str | Path, num_samples: int = 16) -> Path:
    """Save a labelled PNG of ``vae.sample(num_samples)``: one row per modality, one
    column per prior draw z (shared by the modalities of a column).

    Args:
        vae: the model (with ``sample``); run in eval mode.
        path: the PNG file to write (atomically).
        num_samples: columns, i.e. prior draws z (>= 1; default 16).

    Returns:
        The path written.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    with evaluation_mode(vae):
        samples = vae.sample(num_samples)
    names = tuple(getattr(vae, "names", None) or samples.keys())
    rows = [_as_rgb_images(samples[m][:num_samples], m) for m in names]
    columns = [f"z{i + 1}" for i in range(num_samples)]
    return _save_labelled_grid(rows, list(names), columns, path,
                               title="Unconditional generation: z ~ p(z), one column per z")


# ---------------------------------------------------------------------- figures (matplotlib)
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn with the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _write_png(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a PNG atomically (:func:`~pyro_mmvae.checkpoint.atomic_write`): a full disk or
    an unwritable folder is a one-line :class:`~pyro_mmvae.checkpoint.CheckpointWriteError`
    naming ``path``, and never leaves a truncated image behind."""
    from pyro_mmvae.checkpoint import atomic_write

    return atomic_write(path, write)


def _save_figure(figure: Any, path: str | Path) -> Path:
    return _write_png(path, lambda handle: figure.savefig(handle, format="png"))


def save_coherence_plot(
    coherence: Mapping[str, Any],
    path: str | Path,
    unconditional: float | None = None,
    probe: Mapping[Any, float] | None = None,
    num_classes: int | None = 10,
) -> Path:
    """Line plot: conditional coherence against the number of inputs :math:`|S|`.

    ``coherence`` is the result of :func:`conditional_coherence`: its ``by_subset_size``
    gives the line and ``by_subset`` the individual (S, t) pairs (grey dots). Dashed lines:
    the mean accuracy of the classifiers on real test images (the ceiling a perfect
    generator reaches), chance 1/``num_classes``, and the unconditional coherence if given.
    ``probe`` (``{|S|: accuracy}``) adds the linear-probe accuracy of E[z|X_S]. Figures that
    are not measurable (``None``) are left out.

    Args:
        coherence: the dict :func:`conditional_coherence` returns (``by_subset_size``
            required, ``by_subset`` and ``classifier_accuracy`` optional).
        path: the PNG file to write.
        unconditional: the unconditional coherence in [0, 1], drawn as a dotted line
            (``None``: left out).
        probe: ``{|S|: accuracy}`` of :func:`~pyro_mmvae.metrics.probe.latent_probe`
            (``None``: left out).
        num_classes: the number of classes for the chance line (default 10; ``None`` or 0:
            no chance line).

    Returns:
        The path written.
    """
    by_size = {int(k): float(v) for k, v in coherence["by_subset_size"].items()
               if v is not None}
    if not by_size:
        raise ValueError("coherence has no measurable by_subset_size figures to plot")
    figure = _new_figure(5.5, 4.0)
    ax = figure.add_subplot()
    for key, targets in coherence.get("by_subset", {}).items():
        size = len(key.split("+"))
        values = [v for v in targets.values() if v is not None]
        ax.scatter([size] * len(values), values, s=12, color="0.7", zorder=1)
    sizes = sorted(by_size)
    ax.plot(sizes, [by_size[k] for k in sizes], "o-", color="C0", label="conditional coherence",
            zorder=3)
    probe = {k: v for k, v in (probe or {}).items() if v is not None}
    if probe:
        probe_sizes = sorted(int(k) for k in probe)
        values = {int(k): float(v) for k, v in probe.items()}
        ax.plot(probe_sizes, [values[k] for k in probe_sizes], "s-", color="C2",
                label="linear probe of E[z|X_S]", zorder=3)
    accuracy = {k: v for k, v in (coherence.get("classifier_accuracy") or {}).items()
                if v is not None}
    if accuracy:
        ceiling = sum(accuracy.values()) / len(accuracy)
        ax.axhline(ceiling, ls="--", color="C1", label=f"classifier accuracy ({ceiling:.2f})")
    if unconditional is not None:
        ax.axhline(unconditional, ls=":", color="C3",
                   label=f"unconditional coherence ({unconditional:.2f})")
    if num_classes:
        ax.axhline(1 / num_classes, ls="-.", color="0.5", label="chance")
    ax.set_xlabel("number of input modalities |S|")
    ax.set_ylabel("accuracy")
    ax.set_xticks(sorted(set(sizes) | {int(k) for k in (probe or {})}))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Coherence by number of inputs")
    return _save_figure(figure, path)


def save_pareto_k_histogram(
    diagnostics: Mapping[str, tuple[Tensor, Tensor, int]],
    path: str | Path,
) -> Path:
    r"""Histograms of the PSIS Pareto :math:`\hat k` and of ESS / K per data point.

    ``diagnostics`` maps an estimate's name (e.g. ``"log p(X)"``) to ``(k_hat, ess, K)``
    with per-datapoint tensors. Vertical lines at :math:`\hat k` = 0.5 (good below) and 0.7
    (unreliable above).

    Args:
        diagnostics: estimate name -> ``(k_hat, ess, K)``, per-datapoint tensors ``(B,)`` and
            the number of importance samples; at least one entry.
        path: the PNG file to write.

    Returns:
        The path written.
    """
    if not diagnostics:
        raise ValueError("no importance-sampling diagnostics to plot")
    figure = _new_figure(9.0, 3.6)
    ax_k, ax_ess = figure.subplots(1, 2)
    finite = {label: k.detach().double().cpu()[torch.isfinite(k.detach().cpu())]
              for label, (k, _, _) in diagnostics.items()}
    pooled = torch.cat(list(finite.values()))
    low = min(float(pooled.min()), 0.0) if pooled.numel() else 0.0
    high = max(float(pooled.max()), 1.0) if pooled.numel() else 1.0
    k_bins = torch.linspace(low, high, 41).tolist()
    largest = max(num for _, _, num in diagnostics.values())
    ess_bins = torch.logspace(-math.log10(largest), 0, 41).tolist()
    for label, (_, ess, num) in diagnostics.items():
        k = finite[label]
        if k.numel():
            above = float((k > 0.7).double().mean())
            ax_k.hist(k.numpy(), bins=k_bins, alpha=0.6, label=f"{label} ({above:.0%} > 0.7)")
        fraction = (ess.detach().double().cpu() / num).clamp(1 / largest, 1)
        ax_ess.hist(fraction.numpy(), bins=ess_bins, alpha=0.6, label=f"{label} (K = {num})")
    for value, style in ((0.5, ":"), (0.7, "--")):
        ax_k.axvline(value, color="k", ls=style)
    ax_k.set_xlabel(r"Pareto $\hat{k}$ (PSIS) per data point")
    ax_k.set_ylabel("data points")
    ax_k.legend(fontsize=8)
    ax_k.set_title(r"$\hat{k}$ < 0.5 good, > 0.7 unreliable")
    ax_ess.set_xscale("log")
    ax_ess.set_xlabel("effective sample size / K (log scale; 1/K: one sample counts)")
    ax_ess.set_xlim(1 / largest, 1)
    ax_ess.legend(fontsize=8)
    ax_ess.set_title("Importance-sampling efficiency")
    return _save_figure(figure, path)
