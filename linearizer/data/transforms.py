"""Conversions between the image forms the loaders meet and the library's `[C, H, W]` floats.

Decoded files (PIL images), arrays (uint8 `H x W` or `H x W x C`) and tensors all end up as
float32 `[C, H, W]` in [0, 1]. Resizing to a square side centre-crops first, so that the aspect
ratio is never distorted.

Example:
    >>> from PIL import Image
    >>> to_image_tensor(Image.new("RGB", (40, 30)), size=16, channels=3).shape
    torch.Size([3, 16, 16])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: PIL mode for each supported channel count.
MODES: dict[int, str] = {1: "L", 3: "RGB", 4: "RGBA"}


def _check_channels(channels: int) -> str:
    if channels not in MODES:
        raise ValueError(f"channels must be one of {sorted(MODES)}, got {channels!r}")
    return MODES[channels]


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop `image` to a square and resize it to `size x size` (bicubic; PIL
    antialiases when shrinking)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.Resampling.BICUBIC)


def array_to_pil(array: np.ndarray) -> Image.Image:
    """A uint8 `H x W` or `H x W x C` (C in 1, 3, 4) array as a PIL image."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(array)
    raise ValueError(f"expected an image array of shape [H, W] or [H, W, C] with C in 1, 3, 4, got {array.shape}")


def pil_to_tensor(image: Image.Image, channels: int) -> Tensor:
    """A PIL image as float32 `[channels, H, W]` in [0, 1] (converted to L / RGB / RGBA)."""
    image = image.convert(_check_channels(channels))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_image_tensor(image: Image.Image | np.ndarray | Tensor, size: int | None, channels: int) -> Tensor:
    """Convert any supported image form to float32 `[channels, size, size]` in [0, 1].

    Args:
        image: a PIL image, a uint8 array `[H, W]` / `[H, W, C]`, or a float tensor `[C, H, W]`
            in [0, 1] (which must already have `channels` channels).
        size: output side (centre crop + resize), or None to keep the native size.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA).

    Returns:
        A float32 tensor `[channels, H, W]` in [0, 1].
    """
    mode = _check_channels(channels)
    if isinstance(image, Tensor):
        return _resize_tensor(image, size, channels)
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, a uint8 array or a tensor, got {type(image).__name__}")
    image = image.convert(mode)
    if size is not None:
        image = center_square(image, size)
    return pil_to_tensor(image, channels)


def _resize_tensor(image: Tensor, size: int | None, channels: int) -> Tensor:
    """Tensors are cropped and resized in float, so they are not quantised to 8 bits on the way."""
    if image.dim() != 3 or image.shape[0] != channels or not image.is_floating_point():
        raise ValueError(f"expected a float [{channels}, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
    image = image.detach().float()
    if size is None:
        return image.clone()
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    h, w = image.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[:, top:top + side, left:left + side]
    if side == size:
        return square.clone()
    resized = F.interpolate(square[None], size=(size, size), mode="bicubic", align_corners=False, antialias=size < side)
    return resized[0].clamp_(0.0, 1.0)


def tensor_to_uint8(image: Tensor) -> np.ndarray:
    """A `[C, H, W]` tensor (float in [0, 1], or uint8) as a uint8 `H x W x C` array (rounded, clipped)."""
    if image.dim() != 3 or not (image.is_floating_point() or image.dtype == torch.uint8):
        raise ValueError(f"expected a float or uint8 [C, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
    if image.is_floating_point():
        image = (image.detach().float().clamp(0.0, 1.0) * 255.0).round()
    return image.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
