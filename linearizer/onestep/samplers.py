"""Multi-step samplers of the latent ODE `dz/dt = G(t) z`, `G(t) = (A(t) - I) / (1 - t)`.

The ODE starts at `z = g_y(x0)` (t = 0) and its end point is decoded by `g_x^{-1}`. It is linear
in `z`, so these samplers are also the definition that `collapse.py` turns into one matrix `B`:
both read the same `TimeGrid` and the same factors of `A(t)`, so the collapsed operator and the
stepped trajectory differ by float round-off only.

Grid (method.md, trap 3): `t_k = k * t_end / T` for `k = 0..T`, `T = steps`, and `t_end`
defaults to `1 - 1/T`. `steps=T` performs exactly `T` steps (the reference loops `range(T - 1)`,
so its `steps=1` integrates nothing). `t_end < 1` keeps RK4 away from the `1/(1 - t)` singularity.

`A(t)` is shared by the whole batch (trap 4): the factors of every distinct time point are
computed by ONE call of `TimeLowRank.factors`: `T` points for Euler, `2T + 1` for RK4
(`t_k`, `t_k + h/2`, `t_{k+1}`, with the ends of consecutive steps shared).

Example:
    >>> z1 = integrate(model.A, z0, "rk4", steps=100)        # z0: [B, d] noise codes
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_finite

METHODS = ("euler", "rk4")


def resolve_t_end(steps: int, t_end: float | None = None) -> float:
    """The end time of a `steps`-step path: `t_end`, or `1 - 1/steps` when None.

    Raises:
        ValueError: steps < 1, or an end time outside (0, 1) (with `steps=1` the default end
            time is 0, a path of length zero: pass `t_end` explicitly).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    end = 1.0 - 1.0 / steps if t_end is None else float(t_end)
    if not 0.0 < end < 1.0:
        hint = " (steps=1 with the default t_end = 1 - 1/steps = 0: pass t_end in (0, 1))" if t_end is None else ""
        raise ValueError(f"t_end must lie in (0, 1), got {end}{hint}")
    return end


@dataclass(frozen=True)
class TimeGrid:
    """The time points a sampler evaluates `A(t)` at.

    Attributes:
        method: "euler" or "rk4".
        steps: number of steps T.
        t_end: end time of the path.
    """

    method: str
    steps: int
    t_end: float

    @property
    def h(self) -> float:
        """The step size `t_end / T`."""
        return self.t_end / self.steps

    @property
    def times(self) -> Tensor:
        """The distinct evaluation times, float64: `[T]` for Euler, `[2T + 1]` for RK4.

        RK4 uses the half grid `j * t_end / (2T)`: its even points are exactly `t_k` (doubling
        numerator and denominator is exact in binary floating point), its odd points `t_k + h/2`.
        """
        if self.method == "euler":
            return torch.arange(self.steps, dtype=torch.float64) * self.t_end / self.steps
        return torch.arange(2 * self.steps + 1, dtype=torch.float64) * self.t_end / (2 * self.steps)

    def stages(self, k: int) -> tuple[int, ...]:
        """Indices into `times` of the `G(t)` that step `k` uses: `(k,)` for Euler, and for RK4
        `(t_k, t_k + h/2, t_{k+1})`."""
        return (k,) if self.method == "euler" else (2 * k, 2 * k + 1, 2 * k + 2)

    def gammas(self) -> list[float]:
        """`1 / (1 - t)` at every evaluation time, as Python floats (float64)."""
        return [1.0 / (1.0 - t) for t in self.times.tolist()]


def make_grid(method: str, steps: int, t_end: float | None = None) -> TimeGrid:
    """Validate the sampler settings and return their grid.

    Raises:
        ValueError: an unknown method, steps < 1 or t_end outside (0, 1).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return TimeGrid(method, steps, resolve_t_end(steps, t_end))


def grid_factors(A, grid: TimeGrid, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """`U(t), V(t)` of `A(t) = U V^T` at every time of `grid`, with ONE call of the factor MLP.

    Args:
        A: a `TimeLowRank` operator (`factors(t [K]) -> (U [K, d, r], V [K, d, r])`).
        grid: the sampler's time grid.
        dtype: dtype of the returned factors (default: the operator's).

    Returns:
        `(U, V)`, each `[K, d, r]` with `K = len(grid.times)`.
    """
    ref = next(A.parameters())
    U, V = A.factors(grid.times.to(dtype=ref.dtype, device=ref.device))
    return U.to(dtype or ref.dtype), V.to(dtype or ref.dtype)


def apply_G(z: Tensor, U: Tensor, V: Tensor, gamma: float) -> Tensor:
    """`G(t) z = (A(t) z - z) / (1 - t)` on rows `z [B, d]`, with `A(t) = U V^T` and
    `gamma = 1 / (1 - t)`."""
    return gamma * ((z @ V) @ U.T - z)


def integrate(A, z0: Tensor, method: str = "rk4", steps: int = 100, t_end: float | None = None) -> Tensor:
    """Integrate the latent ODE from `t = 0` to `t_end` with `steps` explicit steps.

    Args:
        A: the `TimeLowRank` operator `A(t)`.
        z0: `[B, d]` start codes (noise codes `g_y(x0)`, flattened).
        method: "euler" or "rk4" (classical, with the nested stages).
        steps: number of steps T (T = 1 performs exactly one step).
        t_end: end time in (0, 1); None means `1 - 1/T`.

    Returns:
        `[B, d]` codes at `t_end`, in the dtype of `z0`.

    Example:
        >>> z1 = integrate(model.A, z0, "euler", steps=10, t_end=0.9)
    """
    if z0.dim() != 2:
        raise ValueError(f"z0 must be [B, d] flat codes, got shape {tuple(z0.shape)}")
    grid = make_grid(method, steps, t_end)
    check_finite(z0, "z0")
    U, V = grid_factors(A, grid, z0.dtype)
    if U.shape[1] != z0.shape[1]:
        raise ValueError(f"z0 has {z0.shape[1]} features but A(t) acts on d = {U.shape[1]}")
    gamma, h = grid.gammas(), grid.h
    z = z0
    for k in range(steps):
        if method == "euler":
            (i,) = grid.stages(k)
            z = z + h * apply_G(z, U[i], V[i], gamma[i])
        else:
            i0, i1, i2 = grid.stages(k)
            k1 = apply_G(z, U[i0], V[i0], gamma[i0])
            k2 = apply_G(z + (h / 2) * k1, U[i1], V[i1], gamma[i1])
            k3 = apply_G(z + (h / 2) * k2, U[i1], V[i1], gamma[i1])
            k4 = apply_G(z + h * k3, U[i2], V[i2], gamma[i2])
            z = z + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return z
