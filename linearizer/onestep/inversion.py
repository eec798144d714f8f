"""Real image -> noise, reconstruction, and interpolation between real images.

Generation is `x = g_x^{-1}(B g_y(x0))` with every map invertible, so a real image has an exact
noise pre-image `x0 = g_y^{-1}(B^{-1} g_x(x))`. `B = b I + P Q^T` is inverted by the Woodbury
identity in O(d k^2) (no dense pseudo-inverse, method.md trap 2); `solve="pinv"` gives the
Moore-Penrose pseudo-inverse instead (for a singular B). The inverse is built once in float64
and cached on the model until B changes.

Interpolation (trap 5): the generator is exactly linear between the induced noise space of
`g_y` and the induced data space of `g_x`, so the natural path between two real images is the
induced-space line `(1 - a) (.) x_a (+) a (.) x_b = g_x^{-1}((1 - a) g_x(x_a) + a g_x(x_b))`.
It equals generating from the induced-space line between their noise pre-images. The
reference interpolates the pre-images in pixel space instead (`space="noise"`), kept for
comparison.

Example:
    >>> x0 = invert(model, images)                    # images in [0, 1] -> noise
    >>> back = reconstruct(model, images)              # == images up to round-off
    >>> path = interpolate(model, images[0:1], images[1:2], n=8)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.dense import Dense
from ..operators.identity_lowrank import IdentityPlusLowRank
from ..spaces import InducedSpace
from .model import OneStepLinearizer

Solve = Literal["inverse", "pinv"]
SOLVES = ("inverse", "pinv")
SPACES = ("induced", "noise")


def _B_key(model: OneStepLinearizer, solve: str) -> tuple:
    # storage address + in-place version counter: changes when B is rebuilt, loaded or moved
    return (solve,) + tuple((t.data_ptr(), t._version, t.dtype, t.device)
                            for t in (model.B_b, model.B_P, model.B_Q, model.B_W, model.B_spec))


def inverse_B(model: OneStepLinearizer, solve: Solve = "inverse") -> LinearOperator:
    """`B^{-1}` (Woodbury, or a dense LU inverse for a dense B) or `B^+`, in float64, cached.

    Args:
        model: a model whose B is built.
        solve: "inverse" or "pinv".

    Raises:
        ValueError: an unknown `solve`, or `solve="inverse"` on a singular B.
        RuntimeError: B is not built.
    """
    if solve not in SOLVES:
        raise ValueError(f"solve must be one of {list(SOLVES)}, got {solve!r}")
    key = _B_key(model, solve)
    cache = model.__dict__.setdefault("_inverse_cache", {})
    if key not in cache:
        B = model.B_operator()
        with torch.no_grad():
            if isinstance(B, Dense):
                W = B.W.double()
                inv = torch.linalg.inv(W) if solve == "inverse" else torch.linalg.pinv(W)
                op: LinearOperator = Dense(inv, trainable=False)
            else:
                B64 = IdentityPlusLowRank(B.b.double(), B.P.double(), B.Q.double())
                op = B64.inverse() if solve == "inverse" else B64.pinv()
        cache.clear()  # only the current B's inverse is worth keeping
        cache[key] = op
    return cache[key]


def invert(model: OneStepLinearizer, x1: Tensor, solve: Solve = "inverse") -> Tensor:
    """The noise `x0 = g_y^{-1}(B^{-1} g_x(x1))` that generates the images `x1`.

    Args:
        model: a model whose B is built.
        x1: images `[N, C, H, W]` in [0, 1].
        solve: "inverse" (Woodbury) or "pinv".

    Returns:
        Noise `[N, C, H, W]` in the dtype of `x1`.

    Raises:
        ValueError: `x1` malformed, not finite or outside [0, 1] (`g_x` was fitted to images in
            [0, 1]; far outside, its float32 round trip is no longer exact), or an unknown `solve`.
        RuntimeError: B is not built.
    """
    model.check_data(x1)
    z1 = model.flat(model.encode_data(x1))
    z0 = inverse_B(model, solve).apply(z1.double()).to(z1.dtype)
    return model.decode_noise(model.unflat(z0))


def reconstruct(model: OneStepLinearizer, x1: Tensor, solve: Solve = "inverse") -> Tensor:
    """`sample(invert(x1))`: the round trip image -> noise -> image (exact up to round-off when
    B is invertible)."""
    return model.sample(invert(model, x1, solve))


def interpolate(model: OneStepLinearizer, x_a: Tensor, x_b: Tensor, n: int = 8,
                space: Literal["induced", "noise"] = "induced", solve: Solve = "inverse") -> Tensor:
    """`n` images on the path from `x_a` to `x_b` (both ends included).

    Args:
        model: the one-step model (B needed for `space="noise"` only).
        x_a, x_b: one image each, `[1, C, H, W]` in [0, 1].
        n: number of points, >= 2.
        space: "induced": the line in the induced data space of `g_x`;
            "noise": the reference's line between the pixel-space noise pre-images, then
            one-step generation.
        solve: how B is inverted for `space="noise"`.

    Returns:
        `[n, C, H, W]`; row 0 is `x_a`, row n-1 is `x_b` (up to round-off).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {list(SPACES)}, got {space!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (both ends are included), got {n!r}")
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"{name} must be one image [1, C, H, W], got shape {tuple(x.shape)}")
        model.check_data(x, name)
    a = torch.linspace(0, 1, n, dtype=x_a.dtype, device=x_a.device)[:, None]
    if space == "induced":
        X = InducedSpace(model.g_x, model.image_shape)
        return X.decode((1 - a) * X.encode(x_a) + a * X.encode(x_b))
    x0 = invert(model, torch.cat([x_a, x_b]), solve)
    noise = (1 - a[:, :, None, None]) * x0[0:1] + a[:, :, None, None] * x0[1:2]
    return model.sample(noise)
