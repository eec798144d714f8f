"""The exact propagator `B` of a multi-step sampler, as ONE structured operator.

The latent ODE `dz/dt = G(t) z` is linear in `z`, so every Euler or RK4 step is a matrix `M_k`
and `T` steps are the single matrix `B = M_{T-1} ... M_0` (column-vector convention):
generation becomes `x = g_x^{-1}(B g_y(x0))`, identical to stepping up to round-off.

Two things make this exact and cheap where the reference is approximate and dense
(method.md §2, traps 1-2):

1. The RK4 stages are nested:
   `K1 = G(t); K2 = G(t+h/2)(I + h/2 K1); K3 = G(t+h/2)(I + h/2 K2); K4 = G(t+h)(I + h K3);
   M = I + h/6 (K1 + 2 K2 + 2 K3 + K4)`. (The reference sums the un-nested `G`s.)
2. `G(t) = (U V^T - I) / (1 - t)` is "scalar times I plus low rank", a form closed under sums
   and products. Within one step every factor is spanned by the bases `W_U = [U_0, U_1, ...]`,
   `W_V = [V_0, V_1, ...]` of the step's distinct times, so the whole stage algebra runs on small
   cores: `(aI + W_U X W_V^T)(bI + W_U Y W_V^T) = ab I + W_U (bX + aY + X S Y) W_V^T` with
   `S = W_V^T W_U`. A step is then `a I + P Q^T` of rank r (Euler) or 3r (RK4), and the
   product over steps, by `IdentityPlusLowRank @`, has rank <= 3 r T.

Cost: O(d r^2 T^2) to build, O(d * rank) to apply, against O(T d^3) and O(d^2) dense. When the
rank would pass d/2 (a dense matrix is then smaller and faster) and d is small enough, the steps
are accumulated into a dense `[d, d]` matrix instead, at O(T d^2 r).

Example:
    >>> B = collapse(model, "rk4", steps=100)            # IdentityPlusLowRank or Dense, float64
    >>> z1 = B.apply(z0.double())                         # == integrate(model.A, z0, "rk4", 100)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..checks import check_tol
from ..operators.dense import Dense
from ..operators.identity_lowrank import IdentityPlusLowRank
from .samplers import TimeGrid, grid_factors, make_grid

#: largest d for which the automatic choice may build a dense `[d, d]` B (128 MiB in float64).
MAX_DENSE_DIM = 4096


class Core:
    """An element `a I + W_U X W_V^T` of the algebra over fixed bases `W_U, W_V [d, m]`.

    Only the scalar `a` and the core `X [m, m]` are stored; `S = W_V^T W_U` carries everything
    products need to know about the bases, so the algebra never touches d.

    Args:
        a: the multiple of the identity.
        X: the `[m, m]` core.
        S: the `[m, m]` Gram matrix `W_V^T W_U` (shared by all elements of one algebra).
    """

    __slots__ = ("a", "X", "S")

    def __init__(self, a: float, X: Tensor, S: Tensor):
        self.a, self.X, self.S = float(a), X, S

    @classmethod
    def identity(cls, S: Tensor) -> "Core":
        return cls(1.0, torch.zeros_like(S), S)

    def __matmul__(self, other: "Core") -> "Core":
        return Core(self.a * other.a, other.a * self.X + self.a * other.X + self.X @ self.S @ other.X, self.S)

    def __add__(self, other: "Core") -> "Core":
        return Core(self.a + other.a, self.X + other.X, self.S)

    def __mul__(self, c: float) -> "Core":
        return Core(c * self.a, c * self.X, self.S)

    __rmul__ = __mul__


def euler_step(G0, I, h: float):
    """The Euler step matrix `I + h G(t_k)`; works on any algebra with `@`, `+` and scalar `*`."""
    return I + h * G0


def rk4_step(G0, G_half, G1, I, h: float):
    """The exact classical RK4 step matrix of `dz/dt = G(t) z`, with the stages nested.

    Args:
        G0, G_half, G1: `G` at `t`, `t + h/2`, `t + h`.
        I: the identity of the algebra (a `Core`, or `torch.eye(d)` for dense matrices).
        h: the step size.

    Returns:
        `M` with `z_{k+1} = M z_k`, identical to the vector RK4 step.
    """
    K1 = G0
    K2 = G_half @ (I + (h / 2) * K1)
    K3 = G_half @ (I + (h / 2) * K2)
    K4 = G1 @ (I + h * K3)
    return I + (h / 6) * (K1 + 2 * K2 + 2 * K3 + K4)


def reference_rk4_step(G0, G_half, G1, I, h: float):
    """The reference implementation's collapsed "RK4" step, kept only to measure its error.

    It sums `G(t) + 2 G(t+h/2) + 2 G(t+h/2) + G(t+h)` as if the stages were not nested, which
    is a first-order scheme, not the RK4 map (for a constant G it is the Euler step `I + hG`).
    """
    return I + (h / 6) * (G0 + 4 * G_half + G1)


def step_operators(A, grid: TimeGrid, dtype: torch.dtype = torch.float64,
                   rk4: Callable = rk4_step) -> list[IdentityPlusLowRank]:
    """The step matrices `M_0, ..., M_{T-1}` as `a I + P Q^T`, rank r (Euler) or 3r (RK4).

    Args:
        A: the `TimeLowRank` operator.
        grid: the sampler's grid (the same one `samplers.integrate` steps on).
        dtype: dtype the steps are built in (float64 for an exact collapse).
        rk4: the RK4 step-matrix rule (`reference_rk4_step` reproduces the reference's error).
    """
    U, V = grid_factors(A, grid, dtype)
    gamma, h, r = grid.gammas(), grid.h, U.shape[-1]
    steps = []
    for k in range(grid.steps):
        idx = grid.stages(k)
        W_U = torch.cat([U[i] for i in idx], dim=1)
        W_V = torch.cat([V[i] for i in idx], dim=1)
        S = W_V.T @ W_U
        G = []
        for j, i in enumerate(idx):
            # G(t_i) = -gamma_i I + gamma_i U_i V_i^T: the identity block of basis j in the core.
            X = torch.zeros_like(S)
            X[j * r:(j + 1) * r, j * r:(j + 1) * r] = gamma[i] * torch.eye(r, dtype=dtype, device=S.device)
            G.append(Core(-gamma[i], X, S))
        I = Core.identity(S)
        M = euler_step(G[0], I, h) if grid.method == "euler" else rk4(G[0], G[1], G[2], I, h)
        steps.append(IdentityPlusLowRank(M.a, W_U @ M.X, W_V))
    return steps


def _dense_product(steps: Sequence[IdentityPlusLowRank], d: int, dtype: torch.dtype, device) -> Tensor:
    """`M_{T-1} ... M_0` as a dense `[d, d]` matrix, one `a W + P (Q^T W)` update per step."""
    W = torch.eye(d, dtype=dtype, device=device)
    for M in steps:
        # in place (beta scales W before the low-rank term is added): the out-of-place update
        # allocates three fresh d x d buffers per step, whose page faults cost 6x the arithmetic
        # at d = 12288. The right-hand side is evaluated from W before the call modifies it.
        W.addmm_(M.P, M.Q.T @ W, beta=M.b)
    return W


def collapse(model, method: str = "rk4", steps: int = 100, t_end: float | None = None,
             dtype: torch.dtype = torch.float64, compress_tol: float = 0.0,
             dense: bool | None = None) -> IdentityPlusLowRank | Dense:
    """The exact propagator `B` of the `steps`-step sampler, as one operator.

    Args:
        model: a `OneStepLinearizer` (its `A` is used) or a `TimeLowRank` operator itself.
        method: "euler" or "rk4".
        steps: number of steps T.
        t_end: end time in (0, 1); None means `1 - 1/T`.
        dtype: dtype of the build and of the result (float64 keeps it exact to ~1e-15).
        compress_tol: > 0 re-compresses the low-rank form by a rank-revealing QR + SVD with this
            relative tolerance (no longer exact: errors of that relative size); 0 keeps it exact;
            negative raises a ValueError.
        dense: True builds a dense `[d, d]` B, False the `b I + P Q^T` form; None chooses dense
            exactly when the exact rank would reach d/2 and d <= `MAX_DENSE_DIM`.

    Returns:
        `IdentityPlusLowRank(b, P [d, k], Q [d, k])` with k <= 3 r T (RK4) or r T (Euler), or
        `Dense([d, d])`. `B.apply(z)` equals `samplers.integrate(A, z, method, steps, t_end)`.

    Example:
        >>> B = collapse(model, "euler", steps=10, t_end=0.9)
        >>> x1 = model.decode_data(B.apply(model.encode_noise(x0).flatten(1)).view_as(x0))
    """
    grid = make_grid(method, steps, t_end)
    check_tol(compress_tol, "compress_tol")
    with torch.no_grad():
        return product(step_operators(getattr(model, "A", model), grid, dtype), compress_tol, dense)


def reference_collapse(model, steps: int = 100, t_end: float | None = None,
                       dtype: torch.dtype = torch.float64) -> IdentityPlusLowRank | Dense:
    """The reference implementation's collapsed RK4 matrix (un-nested stages), for comparison
    with the exact `collapse(model, "rk4", ...)` only."""
    grid = make_grid("rk4", steps, t_end)
    with torch.no_grad():
        return product(step_operators(getattr(model, "A", model), grid, dtype, rk4=reference_rk4_step))


def product(Ms: Sequence[IdentityPlusLowRank], compress_tol: float = 0.0,
            dense: bool | None = None) -> IdentityPlusLowRank | Dense:
    """`M_{T-1} ... M_0` in the cheaper form (see `collapse` for the arguments)."""
    d = Ms[0].P.shape[0]
    rank = sum(M.rank for M in Ms)
    if dense is None:
        dense = 2 * rank >= d and d <= MAX_DENSE_DIM
    if dense:
        return Dense(_dense_product(Ms, d, Ms[0].P.dtype, Ms[0].P.device), trainable=False)
    B, compressed_rank = Ms[0], Ms[0].rank
    for M in Ms[1:]:
        B = M @ B
        # re-compress whenever the rank doubled: amortised, and it keeps long paths small
        if compress_tol > 0 and B.rank > 2 * compressed_rank:
            B = B.compress(compress_tol)
            compressed_rank = max(B.rank, 1)
    return B.compress(compress_tol) if compress_tol > 0 else B
