"""Pixel-space image metrics: MSE, PSNR, SSIM, and the agreement between two sample sets.

Images are `[B, C, H, W]` in `[0, data_range]`; MSE and PSNR also accept flat `[B, d]` data.
Every function works in float32 and float64 and computes in the promoted dtype of its inputs,
so a float64 comparison is not silently degraded to float32.

PSNR of two identical images is `+inf` (their MSE is exactly zero). Pass `cap_db` to clamp
per-image values instead, e.g. when averaging over a set that may contain exact copies.

Example:
    >>> x = torch.rand(4, 1, 32, 32)
    >>> psnr(x, (x + 0.01).clamp(0, 1))            # about 40 dB
    >>> ssim(x, x)                                   # tensor(1.)
    >>> agreement_db(one_step_samples, multi_step_samples)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]


def _pair(x: Tensor, y: Tensor, min_dim: int, what: str) -> tuple[Tensor, Tensor]:
    """Validate two batches of the same shape and bring them to one floating dtype."""
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise ValueError(f"{what} expects two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"{what} expects tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() < min_dim or x.shape[0] == 0:
        raise ValueError(f"{what} expects a non-empty batch with at least {min_dim} dims, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"{what} expects floating-point tensors, got {x.dtype} and {y.dtype}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _reduce(per_image: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_range(data_range: float) -> None:
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")


def mse(x: Tensor, y: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Mean squared error per image.

    Args:
        x, y: `[B, ...]` tensors of the same shape.
        reduction: "none" gives the `[B]` per-image MSEs, "mean" their mean.

    Returns:
        A `[B]` tensor or a scalar, in the promoted dtype of the inputs.

    Example:
        >>> mse(torch.zeros(2, 3), torch.ones(2, 3), reduction="none")
        tensor([1., 1.])
    """
    x, y = _pair(x, y, 2, "mse")
    return _reduce((x - y).square().flatten(1).mean(dim=1), reduction)


def psnr(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    reduction: Reduction = "mean",
    cap_db: float | None = None,
) -> Tensor:
    """Peak signal-to-noise ratio `10 log10(data_range^2 / MSE)` in dB, per image.

    Args:
        x, y: `[B, ...]` tensors of the same shape.
        data_range: the peak value (1.0 for images in [0, 1]).
        reduction: "none" gives the `[B]` per-image values, "mean" their mean.
        cap_db: if given, per-image values are clamped to at most this many dB before reducing.
            Without it an identical pair gives `+inf`, and so does a mean that includes one.

    Returns:
        A `[B]` tensor or a scalar in dB.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> psnr(x, x + 0.01)           # MSE 1e-4 -> 40 dB
        tensor(40.0000)
    """
    _check_range(data_range)
    err = mse(x, y, reduction="none")
    # log10 of an exact zero is -inf, so identical images come out as +inf dB, not a NaN.
    db = 20.0 * math.log10(data_range) - 10.0 * torch.log10(err)
    if cap_db is not None:
        db = db.clamp(max=cap_db)
    return _reduce(db, reduction)


def agreement_db(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """How closely two sample sets agree, as the PSNR of their pooled MSE, in dB.

    This is the "one-step vs multi-step agreement" number: `a[i]` and `b[i]` are the same sample
    produced two ways. Pooling the squared error over the whole set (rather than averaging
    per-image PSNRs) keeps the summary finite when a few pairs happen to be bit-identical, and it
    equals `psnr(a, b)` for a single image.

    Args:
        a, b: `[N, ...]` paired samples of the same shape.
        data_range: the peak value (1.0 for images in [0, 1]).

    Returns:
        The agreement in dB (`+inf` only if every pair is identical).

    Example:
        >>> agreement_db(x, x + 1e-2)   # pooled MSE 1e-4
        40.0
    """
    _check_range(data_range)
    err = mse(a, b, reduction="mean")
    return float(20.0 * math.log10(data_range) - 10.0 * torch.log10(err))


def gaussian_window(window: int, sigma: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The normalised 1-D Gaussian `[window]` that SSIM smooths with (separably in H and W)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    offsets = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    g = torch.exp(-offsets.square() / (2 * sigma**2))
    return g / g.sum()


def _smooth(x: Tensor, g: Tensor) -> Tensor:
    """Per-channel separable Gaussian filter without padding ("valid" positions only)."""
    channels = x.shape[1]
    gh = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    gw = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(x, gh, groups=channels), gw, groups=channels)


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Reduction = "none",
) -> Tensor:
    """Structural similarity with a Gaussian window (Wang et al. 2004), per image.

    Local statistics are Gaussian-weighted means over the positions where the window fits
    entirely inside the image (no padding), averaged over those positions and the channels.
    With `window = 2 * int(3.5 * sigma + 0.5) + 1` this equals scikit-image's
    `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`.
    Differentiable in both arguments (see `ssim_loss`).

    Args:
        x, y: `[B, C, H, W]` images of the same shape, any C (1 and 3 are the usual), H and W at
            least `window`.
        data_range: the peak value (1.0 for images in [0, 1]).
        window: odd side of the Gaussian window.
        sigma: standard deviation of the window, in pixels.
        k1, k2: the stabilising constants; `C1 = (k1 R)^2`, `C2 = (k2 R)^2`.
        reduction: "none" gives the `[B]` per-image values, "mean" their mean.

    Returns:
        SSIM in `[-1, 1]`, 1 for identical images.

    Example:
        >>> ssim(x, x)
        tensor([1., 1., 1., 1.])
    """
    x, y = _pair(x, y, 4, "ssim")
    _check_range(data_range)
    if x.dim() != 4:
        raise ValueError(f"ssim expects [B, C, H, W] images, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim needs images at least {window}x{window} (the window), got {tuple(x.shape[-2:])}")
    g = gaussian_window(window, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    mu_x, mu_y = _smooth(x, g), _smooth(y, g)
    var_x = _smooth(x * x, g) - mu_x.square()
    var_y = _smooth(y * y, g) - mu_y.square()
    cov_xy = _smooth(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    )
    return _reduce(ssim_map.flatten(1).mean(dim=1), reduction)


def ssim_loss(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """`1 - mean SSIM`: a differentiable reconstruction loss, 0 for identical batches.

    Example:
        >>> loss = ssim_loss(decoded, target); loss.backward()
    """
    return 1.0 - ssim(x, y, data_range=data_range, window=window, sigma=sigma, reduction="mean")
