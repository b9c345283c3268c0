"""Background images for PolyMNIST: made in code (licence-free) or read from a folder."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GOLDEN = 0.6180339887498949


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a random ``cells x cells`` grid upsampled bicubically to ``size x size``."""
    grid = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _wave_field(
    rng: np.random.Generator, size: int, angles: np.ndarray, frequencies: tuple[float, float]
) -> np.ndarray:
    """Sum of plane sinusoids ``a_k sin(2 pi f_k <u_k, p> + phi_k)``, one per angle in
    ``angles``, with log-uniform frequencies f_k in ``frequencies`` (periods per image side)."""
    coords = np.arange(size, dtype=np.float32) / size
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    field = np.zeros((size, size), dtype=np.float32)
    low, high = np.log(frequencies[0]), np.log(frequencies[1])
    for angle in angles:
        frequency = np.exp(rng.uniform(low, high))
        phase = rng.uniform(0.0, 2 * np.pi)
        amplitude = rng.uniform(0.5, 1.0)
        projection = xs * np.cos(angle) + ys * np.sin(angle)
        field += amplitude * np.sin(2 * np.pi * frequency * projection + phase)
    return field


def _normalise(field: np.ndarray) -> np.ndarray:
    low, high = field.min(), field.max()
    return (field - low) / max(float(high - low), 1e-8)


def _texture(rng: np.random.Generator, size: int, style: int) -> np.ndarray:
    """A texture field in [0, 1] of one of four styles: stripes, blobs, lattice, spots."""
    noise = _smooth_noise(rng, size, cells=int(rng.integers(4, 10)))
    if style == 0:  # stripes: waves of nearly one orientation, bent by noise
        angles = rng.uniform(0, np.pi) + rng.normal(0.0, 0.15, size=3)
        field = _wave_field(rng, size, angles, (6.0, 24.0)) + 3.0 * noise
    elif style == 1:  # blobs: multi-scale smooth noise
        fine = _smooth_noise(rng, size, cells=int(rng.integers(20, 40)))
        field = noise + 0.6 * fine
    elif style == 2:  # lattice: two crossing wave families
        angle = rng.uniform(0, np.pi)
        angles = np.array([angle, angle + np.pi / 2 + rng.normal(0.0, 0.2)])
        field = _wave_field(rng, size, angles, (10.0, 30.0)) + 1.5 * noise
    else:  # spots: thresholded fine noise over a smooth gradient
        fine = _smooth_noise(rng, size, cells=int(rng.integers(25, 50)))
        field = 0.5 * noise + (fine > 0.6).astype(np.float32)
    return _normalise(field)


def _palette(hue: float, rng: np.random.Generator) -> np.ndarray:
    """Three RGB colours (dark, main, accent) around ``hue``: a 3 x 3 array in [0, 1]."""
    dark = colorsys.hsv_to_rgb((hue + rng.uniform(-0.08, 0.08)) % 1.0, 0.8, rng.uniform(0.2, 0.4))
    main = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.9), rng.uniform(0.8, 1.0))
    accent_hue = (hue + rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.3)) % 1.0
    accent = colorsys.hsv_to_rgb(accent_hue, rng.uniform(0.3, 0.8), 1.0)
    return np.array([dark, main, accent], dtype=np.float32)


def _procedural_background(
    rng: np.random.Generator, size: int, hue: float, style: int
) -> np.ndarray:
    """One textured RGB image: a texture field t in [0, 1] coloured piecewise linearly
    dark -> main (t in [0, 0.6]) -> accent (t in [0.6, 1])."""
    t = _texture(rng, size, style)[..., None]
    dark, main, accent = _palette(hue, rng)
    low = dark + (main - dark) * np.clip(t / 0.6, 0.0, 1.0)
    image = low + (accent - main) * np.clip((t - 0.6) / 0.4, 0.0, 1.0)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def procedural_backgrounds(num: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Return ``num`` distinct, colourful, textured uint8 RGB images (size, size, 3).

    Image ``i`` depends only on ``(seed, i)`` (its own ``SeedSequence([seed, i])``), so the first
    k images are the same whatever ``num`` is. Image i uses texture style ``i mod 4`` (stripes,
    blobs, lattice, spots) and a palette around hue ``i * 0.618 mod 1`` (golden-ratio spacing), so
    neighbouring modalities look clearly different.

    Args:
        num: how many images, at least 1 (one per PolyMNIST modality).
        size: side of each square image in pixels, at least 28 (one 28x28 crop); default 256.
        seed: base seed of the images.
    """
    if num < 1 or size < 28:
        raise ValueError(f"need num >= 1 and size >= 28 (a 28x28 crop), got {num=} and {size=}.")
    images = []
    for index in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), index]))
        hue = (index * _GOLDEN + rng.uniform(0.0, 0.05)) % 1.0
        images.append(_procedural_background(rng, size, hue, style=index % 4))
    return images


def background_files(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` in sorted file-name order.

    Args:
        folder: a folder of images (suffixes in ``IMAGE_SUFFIXES``, any case; other files
            and subfolders are ignored). A missing folder or one without images raises
            ``FileNotFoundError``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist.")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in background folder {folder}."
        )
    return files


def load_backgrounds(folder: str | Path, num: int | None = None) -> list[np.ndarray]:
    """Read the images in ``folder`` (sorted by file name; the first ``num`` if given) as uint8
    RGB arrays (H, W, 3). An image that cannot be read (empty, truncated, not an image)
    raises ``ValueError`` naming it.

    Args:
        folder: a folder of images, listed as by :func:`background_files`.
        num: read only the first ``num`` images; None reads them all.
    """
    images = []
    for path in background_files(folder)[:num]:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        except Exception as error:  # PIL: UnidentifiedImageError, OSError (truncated), ...
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(
                f"cannot read background image {path}: {reason}; replace or remove it, or "
                "use --backgrounds procedural") from None
    return images
