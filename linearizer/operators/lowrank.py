"""`LowRank`: `A = U V^T` with thin factors, applied in O((m + n) r) per vector.

Its SVD and pseudo-inverse never form the `[m, n]` matrix: with thin QRs `U = Q_u R_u`,
`V = Q_v R_v`, the matrix is `Q_u (R_u R_v^T) Q_v^T`, so the SVD of the small `r x r` core
`R_u R_v^T = W S X^T` gives `A = (Q_u W) S (Q_v X)^T`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_k, check_tol
from .algebra import as_scalar, check_composable, check_same_shape, is_fixed
from .base import LinearOperator, check_batch, is_scalar


def check_factors(name: str, U: Tensor, V: Tensor, left: str = "U", right: str = "V") -> None:
    """Raise a ValueError unless `U [m, r]` and `V [n, r]` are matching floating-point factors."""
    if not (isinstance(U, Tensor) and isinstance(V, Tensor)) or U.dim() != 2 or V.dim() != 2:
        raise ValueError(f"{name} expects 2-D factors {left} [m, r] and {right} [n, r], got "
                         f"{getattr(U, 'shape', U)} and {getattr(V, 'shape', V)}")
    if U.shape[1] != V.shape[1]:
        raise ValueError(f"{name} factors must have the same number of columns (the rank), got "
                         f"{left} {tuple(U.shape)} and {right} {tuple(V.shape)}")
    if not U.is_floating_point() or U.dtype != V.dtype or U.device != V.device:
        raise ValueError(f"{name} factors must share one floating dtype and device, got {U.dtype} on {U.device} "
                         f"and {V.dtype} on {V.device}")


def factored_svd(U: Tensor, V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD of `U V^T` from its factors, in O((m + n) r^2).

    Args:
        U: `[m, r]`.
        V: `[n, r]`.

    Returns:
        `(L [m, s], S [s], R [n, s])` with `U V^T = L diag(S) R^T`, `S` descending, `L` and `R`
        with orthonormal columns, `s = min(m, n, r)` (zero singular values included).
    """
    m, n, r = U.shape[0], V.shape[0], U.shape[1]
    if min(m, n, r) == 0:
        return U.new_zeros(m, 0), U.new_zeros(0), U.new_zeros(n, 0)
    Q_u, R_u = torch.linalg.qr(U)
    Q_v, R_v = torch.linalg.qr(V)
    W, S, Xh = torch.linalg.svd(R_u @ R_v.T, full_matrices=False)
    return Q_u @ W, S, Q_v @ Xh.T


def numerical_rank(S: Tensor, shape: tuple[int, int], rtol: float | None = None) -> int:
    """How many of the descending singular values `S` exceed `rtol * S[0]`.

    The default `rtol = max(m, n) * eps` is the one `torch.linalg.pinv` and NumPy use.
    """
    if rtol is not None:
        check_tol(rtol)
    if S.numel() == 0:
        return 0
    if rtol is None:
        rtol = max(shape) * torch.finfo(S.dtype).eps
    return int((S > rtol * S[0]).sum())


class LowRank(LinearOperator):
    """`A = U V^T` with `U [m, r]`, `V [n, r]`.

    Args:
        U: left factor `[m, r]`.
        V: right factor `[n, r]`.
        trainable: hold the factors as parameters (True) or as buffers (False). Buffers keep the
            tensors as given, so gradients still flow to whatever they were computed from.

    Example:
        >>> A = LowRank.random(64, 32, 4, dtype=torch.float64)
        >>> A.pinv().shape, A.rank
        ((32, 64), 4)
    """

    def __init__(self, U: Tensor, V: Tensor, trainable: bool = True):
        super().__init__()
        check_factors("LowRank", U, V)
        if trainable:
            self.U, self.V = nn.Parameter(U), nn.Parameter(V)
        else:
            self.register_buffer("U", U)
            self.register_buffer("V", V)

    @classmethod
    def random(cls, m: int, n: int, r: int, dtype: torch.dtype | None = None,
               generator: torch.Generator | None = None, trainable: bool = True) -> "LowRank":
        """Gaussian factors scaled so that `A z` has entries of unit variance for `z ~ N(0, I_n)`.

        `U ~ N(0, 1/r)`, `V ~ N(0, 1/n)`: each `(V^T z)_j` has unit variance, and a sum of r of
        them weighted by `U` does too.
        """
        if min(m, n, r) < 1:
            raise ValueError(f"LowRank.random expects positive m, n, r, got m={m}, n={n}, r={r}")
        dtype = dtype or torch.get_default_dtype()
        U = torch.randn(m, r, dtype=dtype, generator=generator) / r**0.5
        V = torch.randn(n, r, dtype=dtype, generator=generator) / n**0.5
        return cls(U, V, trainable=trainable)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.V.shape[0])

    @property
    def rank(self) -> int:
        """The number of columns of the factors (an upper bound on the matrix rank)."""
        return self.U.shape[1]

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self, dtype=self.U.dtype)
        return (z @ self.V) @ self.U.T

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input", self.U.dtype)
        return (y @ self.U) @ self.V.T

    def materialize(self) -> Tensor:
        return self.U @ self.V.T

    def svd(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k singular triplets from the factors; at most `min(m, n, r)` of them.

        Raises:
            ValueError: `k` negative or not an integer.
        """
        check_k(k, 0)  # refused before the QRs, capped after them
        L, S, R = factored_svd(self.U, self.V)
        k = check_k(k, S.numel())
        return L[:, :k], S[:k], R[:, :k]

    def pinv(self, rtol: float | None = None) -> "LowRank":
        """`A^+ = R diag(1/S) L^T` over the singular values above `rtol * S_max`, as a LowRank.

        Args:
            rtol: relative cut-off for singular values (default `max(m, n) * eps`), which makes
                rank-deficient factors (dependent columns) safe; >= 0.

        Raises:
            ValueError: a negative `rtol`.
        """
        L, S, R = factored_svd(self.U, self.V)
        s = numerical_rank(S, self.shape, rtol)
        return LowRank(R[:, :s] / S[:s], L[:, :s], trainable=False)

    # Fixed operands (see algebra.py): (U1 V1^T)(U2 V2^T) = U1 (V2 (U2^T V1))^T keeps the smaller
    # rank; sums concatenate the factors.

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not is_fixed(self, other):
            return super().__matmul__(other)
        if isinstance(other, LowRank):
            check_composable(self, other)
            if self.rank <= other.rank:
                return LowRank(self.U, other.V @ (other.U.T @ self.V), trainable=False)
            return LowRank(self.U @ (self.V.T @ other.U), other.V, trainable=False)
        structured = other._structured_rmatmul(self) if isinstance(other, LinearOperator) else None
        return structured if structured is not None else super().__matmul__(other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if isinstance(other, LowRank) and is_fixed(self, other):
            check_same_shape(self, other)
            return LowRank(torch.cat([self.U, other.U], 1), torch.cat([self.V, other.V], 1), trainable=False)
        structured = other._structured_radd(self) if isinstance(other, LinearOperator) else None
        if structured is not None:
            return structured
        return super().__add__(other)

    def __mul__(self, scalar: float | Tensor) -> LinearOperator:
        if not is_scalar(scalar) or not is_fixed(self):
            return super().__mul__(scalar)
        return LowRank(as_scalar(scalar, self.U) * self.U, self.V, trainable=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
