"""Image grids and strips as PNG files (PIL only).

Example:
    >>> save_grid(samples, "samples.png", nrow=8)        # [N, C, H, W] in [0, 1]
    >>> save_strip(path_images, "interpolation.png")     # one row
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile `[N, C, H, W]` images into one `[C, H', W']` image, row by row.

    Args:
        images: `[N, C, H, W]`, values clamped to [0, 1].
        nrow: images per row (default: about sqrt(N), so the grid is near square).
        padding: pixels between images and around the border.
        pad_value: the value of the padding pixels (1.0: white).

    Returns:
        The grid, `[C, rows * (H + p) + p, nrow * (W + p) + p]`.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty [N, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    n, c, h, w = images.shape
    nrow = max(1, math.ceil(math.sqrt(n))) if nrow is None else nrow
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), float(pad_value))
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = image
    return grid


def to_pil(image: Tensor) -> Image.Image:
    """A `[C, H, W]` image in [0, 1] (C = 1 or 3) as an 8-bit PIL image."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"to_pil expects a [1 or 3, H, W] image, got shape {tuple(image.shape)}")
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array[0].numpy() if image.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    return Image.fromarray(array)  # uint8 [H, W] -> "L", [H, W, 3] -> "RGB"


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Write `[N, C, H, W]` images in [0, 1] as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, nrow, padding)).save(path)
    return path


def save_strip(images: Tensor, path: str | Path, padding: int = 2) -> Path:
    """Write `[N, C, H, W]` images in [0, 1] as one PNG row (an interpolation path)."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [N, C, H, W] tensor, got {getattr(images, 'shape', type(images).__name__)}")
    return save_grid(images, path, nrow=images.shape[0], padding=padding)
