"""What a projector is for: project anything, denoise, inpaint, and measure how exact it is.

Every use is the one map `f = g^-1 P g` applied to some input: noise (sampling), a noisy image
(denoising), an image with missing pixels (inpainting), an image of another kind (projection
onto the learnt set). None needs training on that corruption: the model was only taught that
data are fixed points and what projected noise should look like.

Example:
    >>> noisy = add_noise(x, sigma=0.3, generator=g)
    >>> restored = denoise(model, noisy)
    >>> mask = box_mask(x.shape, top=10, left=10, size=12)
    >>> filled = inpaint(model, apply_mask(x, mask), mask, iterations=10)
    >>> idempotency_error(model, torch.rand(8, 1, 32, 32)).max()    # ~1e-6 in float32, ~1e-15 in float64
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..checks import check_finite
from .model import ProjectiveModel


def check_images(model: ProjectiveModel, x: Any, what: str = "inputs") -> Tensor:
    """Validate a batch for `model` and bring it to the model's dtype and device.

    Args:
        model: the projective model.
        x: the candidate batch.
        what: how to call it in error messages.

    Returns:
        `x` as a `[N, C, H, W]` tensor of the model's floating dtype, on its device.

    Raises:
        ValueError: not a tensor, not floating point, wrong shape, N = 0, or NaN / inf values.
    """
    shape = ", ".join(map(str, model.image_shape))
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, {shape}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor (images in [0, 1] or noise), got {x.dtype}; "
                         f"convert uint8 images with x.float() / 255")
    if x.dim() != 4 or tuple(x.shape[1:]) != model.image_shape or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape [N, {shape}] with N >= 1, got {list(x.shape)}")
    ref = model.code_scale
    return check_finite(x, what).to(dtype=ref.dtype, device=ref.device)


# ----- corruptions -----


def add_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """`x + sigma * n` with `n ~ N(0, I)`, not clamped (the projector sees the raw corruption)."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    device = generator.device if generator is not None else x.device
    n = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    return x + sigma * n


def box_mask(shape: torch.Size | tuple[int, ...], top: int, left: int, size: int,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """A mask of `shape` `[N, C, H, W]`: 1 where pixels are known, 0 in a `size x size` box at (top, left)."""
    if len(shape) != 4:
        raise ValueError(f"shape must be [N, C, H, W], got {tuple(shape)}")
    H, W = shape[2], shape[3]
    if not (0 <= top and 0 <= left and size >= 1 and top + size <= H and left + size <= W):
        raise ValueError(f"the box top={top}, left={left}, size={size} must lie inside the {H}x{W} image")
    mask = torch.ones(tuple(shape), dtype=dtype)
    mask[:, :, top:top + size, left:left + size] = 0
    return mask


def random_mask(shape: torch.Size | tuple[int, ...], p_missing: float, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """A mask of `shape` with each pixel missing (0) independently with probability `p_missing`."""
    if not 0 <= p_missing <= 1:
        raise ValueError(f"p_missing must lie in [0, 1], got {p_missing}")
    device = generator.device if generator is not None else None
    return (torch.rand(tuple(shape), generator=generator, device=device) >= p_missing).to(dtype)


def apply_mask(x: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """Known pixels of `x` where `mask` is 1, the constant `fill` where it is 0."""
    if mask.shape != x.shape and (mask.dim() != x.dim() or mask.shape[0] != 1 or mask.shape[1:] != x.shape[1:]):
        raise ValueError(f"mask must have the images' shape {tuple(x.shape)} (or a batch of 1), got {tuple(mask.shape)}")
    mask = mask.to(dtype=x.dtype, device=x.device)
    return mask * x + (1 - mask) * fill


# ----- restorations -----


@torch.no_grad()
def project(model: ProjectiveModel, x: Tensor) -> Tensor:
    """`f(x)` for any images `x [N, C, H, W]` (validated); not clamped, so `project(project(x)) == project(x)`."""
    return model(check_images(model, x))


def denoise(model: ProjectiveModel, noisy: Tensor) -> Tensor:
    """Denoise `noisy = x + sigma n` by one projection, `f(noisy)`: the nearest point of the
    learnt set in the induced distance. The model never saw noisy data in training."""
    return project(model, noisy)


@torch.no_grad()
def inpaint(model: ProjectiveModel, masked: Tensor, mask: Tensor, iterations: int = 1,
            reimpose: bool = False) -> Tensor:
    """Fill the missing pixels of `masked` by projecting, optionally alternating with the known pixels.

    `y_1 = f(masked)`; each further iteration re-imposes the known pixels and projects again,
    `y_{t+1} = f(mask * masked + (1 - mask) * y_t)`: alternating projections between the learnt
    set and the images that agree with the known pixels.

    Args:
        model: the projective model.
        masked: images `[N, C, H, W]`; their missing pixels hold any finite value (e.g. 0).
        mask: 1 for known pixels, 0 for missing ones; the images' shape or a batch of 1.
        iterations: projections made (>= 1).
        reimpose: False (default) returns the last projection `y_T`, a fixed point of `f`;
            True pastes the known pixels over it (exact on them, but then no longer on the set).

    Returns:
        The inpainted images `[N, C, H, W]` (not clamped).
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    masked = check_images(model, masked, "masked images")
    mask = mask.to(dtype=masked.dtype, device=masked.device)
    known = apply_mask(masked, mask)
    y = model(masked)
    for _ in range(iterations - 1):
        y = model(known + (1 - mask) * y)
    return known + (1 - mask) * y if reimpose else y


# ----- measurements -----


def _flat_norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1)


@torch.no_grad()
def idempotency_error(model: ProjectiveModel, x: Tensor) -> Tensor:
    """Per-image relative idempotency error `||f(f(x)) - f(x)|| / ||f(x)||`, `[N]` (pixel norms)."""
    y = project(model, x)
    return _flat_norm(model(y) - y) / _flat_norm(y).clamp_min(torch.finfo(y.dtype).tiny)


@torch.no_grad()
def fixed_point_error(model: ProjectiveModel, x: Tensor) -> Tensor:
    """Per-image relative fixed-point error `||f(x) - x|| / ||x||`, `[N]`: how far data are from the set."""
    x = check_images(model, x)
    return _flat_norm(model(x) - x) / _flat_norm(x).clamp_min(torch.finfo(x.dtype).tiny)


def idempotency_bound(model: ProjectiveModel, x: Tensor) -> Tensor:
    """Per-image bound `eps * ||I - P|| * kappa(J_g(f(x)))` on `idempotency_error(model, x)`, `[N]`.

    Why this bound: `f(x)` is returned in the model's dtype, rounded by `d` with
    `||d|| <= eps/2 ||f(x)||`, and that rounded point is not exactly on the set `f` projects onto.
    Applying `f` to it moves it by `(J_f - I) d` to first order, where
    `J_f - I = J_g^-1 (P - I) J_g` has norm at most `||I - P|| kappa(J_g)`, `kappa` the condition
    number of g's Jacobian at `f(x)`. The evaluation of the second pass adds round-off of the
    same order, hence `eps` rather than `eps / 2`. The bound holds for any finite input; it is
    small (`kappa` of a few) at the scale the ActNorms were initialised on and grows where the
    couplings saturate (docs/projective.md, "Idempotency in float32").
    `||I - P|| = ||P||` is 1 for the orthogonal projector and `1 / cos` of the angle between
    range and kernel for an oblique one.

    Cost: one dense `d x d` Jacobian of g per image (d backward passes, in float64) and its
    singular values: a diagnostic for small images and a few inputs, not for batches.

    Args:
        model: the projective model (any dtype; the bound uses that dtype's eps).
        x: inputs `[N, C, H, W]`.

    Returns:
        `[N]` bounds in the model's dtype.
    """
    x = check_images(model, x)
    with torch.no_grad():
        y = model(x)
        g64 = copy.deepcopy(model.g).double().eval()
        # ||I - P||_2 = ||P||_2 for an idempotent P other than 0 and I; max(1, .) covers P = I
        spread = 1.0 if model.P.symmetric else max(1.0, float(copy.deepcopy(model.P).double().svd(1)[1].max()))
    kappas = []
    for yi in y.double():
        with torch.enable_grad():
            J = torch.autograd.functional.jacobian(lambda v: g64(v.view(1, *model.image_shape)).flatten(),
                                                   yi.flatten(), vectorize=True)
        s = torch.linalg.svdvals(J)
        kappas.append(s[0] / s[-1])
    eps = torch.finfo(y.dtype).eps
    return (eps * spread * torch.stack(kappas)).to(y.dtype)
