"""Sample images that ship with scikit-learn and scikit-image: data for offline tests and demos.

Nothing here downloads: scikit-learn bundles 1,797 8x8 handwritten digits and scikit-image a
handful of photos. Both packages are imported inside the functions (they are optional extras).

Example:
    >>> x, y = sklearn_digits(size=32)                   # [1797, 1, 32, 32], labels 0..9
    >>> photos = skimage_photos(["astronaut", "coffee"])  # name -> uint8 [H, W, 3]
    >>> patches = random_patches(list(photos.values()), size=64, n=16, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: photos bundled with scikit-image (no download); grey ones come back as [H, W, 1].
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "coins", "moon", "page", "text",
)
DEFAULT_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                   "immunohistochemistry")


def sklearn_digits(size: int = 32) -> tuple[Tensor, Tensor]:
    """The 1,797 scikit-learn digits, upscaled bilinearly from 8x8.

    Args:
        size: output side (8 keeps the originals).

    Returns:
        (images, labels): float32 `[1797, 1, size, size]` in [0, 1] and long `[1797]` in 0..9.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap): 16 means fully inked.
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16.0)[:, None]
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[-1]).clamp_(0.0, 1.0)
    return images.contiguous(), torch.tensor(digits.target, dtype=torch.long)


def skimage_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Photos bundled with scikit-image.

    Args:
        names: which photos (see `SKIMAGE_PHOTOS`); None gives the colour ones of `DEFAULT_PHOTOS`.

    Returns:
        name -> uint8 array `[H, W, C]` (C = 3 for colour, 1 for grey; an alpha channel is dropped).
    """
    names = list(DEFAULT_PHOTOS if names is None else names)
    unknown = [n for n in names if n not in SKIMAGE_PHOTOS]
    if unknown:
        raise ValueError(f"unknown photo names {unknown}; available: {list(SKIMAGE_PHOTOS)}")
    from skimage import data

    photos = {}
    for name in names:
        array = np.asarray(getattr(data, name)())
        if array.dtype != np.uint8:
            raise ValueError(f"skimage photo {name!r} has dtype {array.dtype}, expected uint8")
        if array.ndim == 2:
            array = array[:, :, None]
        photos[name] = np.ascontiguousarray(array[:, :, :3])
    return photos


def _as_chw_float(image: Tensor | np.ndarray, i: int) -> Tensor:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"images[{i}]: expected a uint8 [H, W, C] array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"images[{i}]: expected a float [C, H, W] tensor, got {getattr(image, 'shape', type(image))}")
    return image


def random_patches(images: Tensor | Sequence[Tensor | np.ndarray], size: int, n: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """Crop `n` random `size x size` patches, each from a uniformly chosen image at a uniformly
    chosen position.

    Args:
        images: a float `[N, C, H, W]` tensor in [0, 1], or a sequence of float `[C, H, W]`
            tensors / uint8 `[H, W, C]` arrays of any sizes (all with the same C).
        size: patch side; every image must be at least this large.
        n: number of patches.
        generator: seeds the draw (reproducible when given).

    Returns:
        float32 `[n, C, size, size]` in [0, 1].
    """
    if not isinstance(size, int) or size < 1 or not isinstance(n, int) or n < 1:
        raise ValueError(f"size and n must be positive ints, got size={size!r}, n={n!r}")
    pool = [_as_chw_float(im, i) for i, im in enumerate(images)]
    if not pool:
        raise ValueError("images is empty")
    channels = {im.shape[0] for im in pool}
    if len(channels) != 1:
        raise ValueError(f"all images must have the same channel count, got {sorted(channels)}")
    for i, im in enumerate(pool):
        if min(im.shape[1:]) < size:
            raise ValueError(f"images[{i}] is {tuple(im.shape[1:])}, smaller than the patch size {size}")
    which = torch.randint(len(pool), (n,), generator=generator)
    patches = []
    for k in which.tolist():
        h, w = pool[k].shape[1:]
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        patches.append(pool[k][:, top:top + size, left:left + size])
    return torch.stack(patches).float().contiguous()
