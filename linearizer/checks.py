"""Checks of what the public entry points accept, shared so that every one refuses alike.

Bad input raises a `ValueError` whose message names the argument, what was expected and what was
given. The checks are meant for the entry points (`Linearizer.forward`, `OneStepLinearizer.sample`,
`invert`, `ProjectiveModel.forward`, ...), once per call, never inside a loop over blocks or
steps: `check_finite` and `check_unit_range` read one reduction back to the host, which is O(numel)
but a device synchronisation.

Example:
    >>> x = check_input(x, (1, 32, 32), "x", like=next(model.parameters()))
    >>> x = check_finite(x, "x")
    >>> k = check_k(k, limit=S.numel())        # None -> limit, k > limit -> limit, k < 0 raises
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import torch
from torch import Tensor


def _shape_text(shape: Sequence[int]) -> str:
    return f"[B, {', '.join(map(str, shape))}]"


def check_input(x: Any, shape: Sequence[int], name: str = "input", like: Tensor | None = None) -> Tensor:
    """Raise a ValueError unless `x` is a `[B, *shape]` tensor of `like`'s dtype and device.

    Args:
        x: the candidate batch.
        shape: the shape of one element, e.g. `(C, H, W)` or `(d,)`.
        name: how to call `x` in the message.
        like: a tensor of the model (a parameter or buffer) whose dtype and device `x` must have;
            None checks the shape only.

    Returns:
        `x` unchanged.
    """
    shape = tuple(int(s) for s in shape)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {_shape_text(shape)}, got {type(x).__name__}")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {list(x.shape)}")
    if like is not None:
        if x.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {x.dtype}, but the model is {like.dtype}: "
                             f"convert one of them ({name}.to({like.dtype}) or model.to({x.dtype}))")
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device}, but the model is on {like.device}")
    return x


def check_finite(x: Tensor, name: str = "input") -> Tensor:
    """Raise a ValueError when `x` holds a NaN or an infinity (one reduction, one host read).

    Returns:
        `x` unchanged.
    """
    if not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or infinite) of {x.numel()}")
    return x


def check_unit_range(x: Tensor, name: str = "images") -> Tensor:
    """Raise a ValueError unless every value of `x` lies in [0, 1] (images).

    Returns:
        `x` unchanged.
    """
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         f"(clamp with x.clamp(0, 1) if that is what you mean)")
    return x


def check_images(x: Any, shape: Sequence[int], name: str = "images", like: Tensor | None = None,
                 unit_range: bool = False) -> Tensor:
    """`check_input`, then finite values, then (with `unit_range`) values in [0, 1].

    Returns:
        `x` unchanged.
    """
    check_finite(check_input(x, shape, name, like), name)
    return check_unit_range(x, name) if unit_range else x


def check_time(t: float | Tensor, name: str = "t") -> None:
    """Raise a ValueError unless the time(s) `t` are finite."""
    finite = math.isfinite(t) if isinstance(t, Real) else bool(torch.isfinite(torch.as_tensor(t)).all())
    if not finite:
        raise ValueError(f"{name} must be finite, got {t!r}")


def check_k(k: int | None, limit: int, name: str = "k") -> int:
    """How many of `limit` available items (singular triplets, eigenpairs) to return.

    Args:
        k: the requested count: None for all, else an int >= 0 (0 returns nothing; more than
            `limit` returns `limit`).
        limit: how many there are.
        name: how to call `k` in the message.

    Returns:
        `min(k, limit)`, or `limit` for None.

    Raises:
        ValueError: `k` is negative, a bool or not an integer (a negative slice bound would
            silently drop items from the end).
    """
    if k is None:
        return limit
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 0:
        raise ValueError(f"{name} must be None or an integer >= 0, got {k!r}")
    return min(int(k), limit)


def check_tol(tol: float, name: str = "rtol") -> float:
    """Raise a ValueError unless `tol` is a finite real number >= 0.

    A negative relative tolerance would keep everything (as 0 does) and hide the typo.

    Returns:
        `tol` as a float.
    """
    if isinstance(tol, bool) or not isinstance(tol, Real) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
    return float(tol)
