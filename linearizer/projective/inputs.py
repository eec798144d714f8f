"""Named input sets to project: noise, corrupted digits, and images of other kinds.

Used by `linearizer projective project` and the figure script, so both show the same things. Each set
comes with the clean images and mask it was made from, when there are some, so restorations
can be scored.

| name | inputs | clean | mask |
|---|---|---|---|
| `noise` | `N(0, I)` (what `sample` takes) | - | - |
| `uniform` | `U[0, 1]` per pixel | - | - |
| `mnist` | MNIST test digits | the same | - |
| `noisy` | MNIST test digits + `sigma * N(0, I)` | digits | - |
| `masked` | MNIST test digits with a central square set to 0 | digits | the mask |
| `digits` | scikit-learn's 8x8 digits, upscaled (another digit dataset) | - | - |
| `photos` | patches of scikit-image photos, grey or colour to fit the model | - | - |

Example:
    >>> probe = make_inputs("masked", 16, (1, 32, 32), torch.Generator().manual_seed(0))
    >>> probe.inputs.shape, probe.mask.shape
    (torch.Size([16, 1, 32, 32]), torch.Size([16, 1, 32, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .uses import add_noise, apply_mask, box_mask

INPUTS = ("noise", "uniform", "mnist", "noisy", "masked", "digits", "photos")
#: grey scikit-image photos with texture at every scale (text, coins, a camera man, the moon).
GREY_PHOTOS = ("camera", "coins", "moon", "page", "text")
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass
class Probe:
    """A batch to project.

    Attributes:
        inputs: `[N, C, H, W]` float32 images (or noise).
        clean: the uncorrupted images the inputs were made from, or None.
        mask: 1 = known pixel, 0 = missing (inpainting sets), or None.
    """

    inputs: Tensor
    clean: Tensor | None = None
    mask: Tensor | None = None


def mask_box(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(top, left, size) of the central missing square: 3/8 of the side (12 of 32 pixels)."""
    H, W = image_shape[1:]
    size = max(1, 3 * min(H, W) // 8)
    return (H - size) // 2, (W - size) // 2, size


def _digits_like(image_shape: tuple[int, int, int], what: str) -> None:
    C, H, W = image_shape
    if C != 1 or H != W:
        raise ValueError(f"input set {what!r} holds square grey digits and needs a model of shape (1, S, S), "
                         f"got {image_shape}")


def _mnist(n: int, image_shape: tuple[int, int, int], generator: torch.Generator | None) -> Tensor:
    from ..data.mnist import load_mnist

    _digits_like(image_shape, "mnist")
    images, _ = load_mnist("test", size=image_shape[1])
    return images[torch.randperm(images.shape[0], generator=generator)[:n]]


def _photos(n: int, image_shape: tuple[int, int, int], generator: torch.Generator | None) -> Tensor:
    from ..data.samples import random_patches, skimage_photos

    C, H, W = image_shape
    if C not in (1, 3):
        raise ValueError(f"input set 'photos' needs 1 or 3 channels, got image_shape {image_shape}")
    photos = skimage_photos(list(GREY_PHOTOS if C == 1 else COLOUR_PHOTOS))
    grey = [p.mean(axis=2, keepdims=True).astype("uint8") if C == 1 else p for p in photos.values()]
    # Crop 3x larger than the model sees, then shrink: a 32-pixel crop of a 512-pixel photo is flat.
    side = 3 * max(H, W)
    patches = random_patches(grey, size=side, n=n, generator=generator)
    return F.interpolate(patches, size=(H, W), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def make_inputs(name: str, n: int, image_shape: tuple[int, int, int] = (1, 32, 32),
                generator: torch.Generator | None = None, sigma: float = 0.3) -> Probe:
    """`n` inputs of the named set for a model of `image_shape` (see the module docstring).

    Args:
        name: one of `INPUTS`.
        n: batch size.
        image_shape: (C, H, W) of the model.
        generator: seeds noise, the choice of digits and of patches (CPU generator).
        sigma: noise level of the `noisy` set.

    Returns:
        A `Probe` of float32 tensors.

    Raises:
        ValueError: an unknown name, n < 1, or a set that does not fit `image_shape`.
    """
    if name not in INPUTS:
        raise ValueError(f"input set must be one of {list(INPUTS)}, got {name!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    image_shape = tuple(int(s) for s in image_shape)
    shape = (n, *image_shape)
    if name == "noise":
        return Probe(torch.randn(shape, generator=generator))
    if name == "uniform":
        return Probe(torch.rand(shape, generator=generator))
    if name == "digits":
        from ..data.samples import sklearn_digits

        _digits_like(image_shape, name)
        images, _ = sklearn_digits(size=image_shape[1])
        return Probe(images[torch.randperm(images.shape[0], generator=generator)[:n]])
    if name == "photos":
        return Probe(_photos(n, image_shape, generator))
    clean = _mnist(n, image_shape, generator)
    if name == "mnist":
        return Probe(clean, clean)
    if name == "noisy":
        return Probe(add_noise(clean, sigma, generator), clean)
    mask = box_mask(clean.shape, *mask_box(image_shape))
    return Probe(apply_mask(clean, mask), clean, mask)
