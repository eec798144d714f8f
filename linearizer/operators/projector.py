"""`Projector`: a rank-k operator with `P @ P == P` exactly, for every parameter value.

Idempotency is built into the parametrisation rather than encouraged by a loss, so a projective
Linearizer `g^-1 P g` is idempotent on every input, trained or not:

- symmetric (orthogonal projector): `P = Q Q^T` with `Q = qr(W).Q` orthonormal, `W [d, k]` free;
- oblique: `P = U (V^T U)^-1 V^T` with `U, V [d, k]` free (range U, kernel V^perp).

`apply` works in float64 whatever the parameters' dtype and rounds once at the end. In a
float32 projective Linearizer the projector's own round-off (a QR and two length-d reductions)
was the largest single term of the idempotency error `f(f(x)) - f(x)`, about half of it; in
float64 it is gone, at `O(d k)` flops per row, a sliver of the invertible network's cost.
(Devices without float64, such as Apple's MPS, cannot run it.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_k
from .base import LinearOperator, check_batch
from .lowrank import LowRank


class Projector(LinearOperator):
    """An idempotent `d x d` operator of rank k.

    Symmetric: `P = Q Q^T`, applied as `(z Q) Q^T`; its pseudo-inverse is itself and its SVD
    is `(Q, ones, Q)`. Oblique: `P = U C^-1 V^T` with `C = V^T U`, applied with a `k x k`
    solve; it starts with `V = U` (an orthogonal projector) so that C is well conditioned.

    Args:
        d: the dimension.
        k: the rank, 1 <= k <= d.
        symmetric: orthogonal (True) or oblique (False) projector.

    Example:
        >>> P = Projector(16, 4).double()
        >>> M = P.materialize()
        >>> torch.allclose(M @ M, M)
        True
    """

    def __init__(self, d: int, k: int, symmetric: bool = True):
        super().__init__()
        if not (isinstance(d, int) and isinstance(k, int) and 1 <= k <= d):
            raise ValueError(f"Projector expects ints with 1 <= k <= d, got d={d!r}, k={k!r}")
        self.d, self.k, self.symmetric = d, k, bool(symmetric)
        W = torch.randn(d, k) / d**0.5
        if self.symmetric:
            self.W = nn.Parameter(W)
        else:
            self.U, self.V = nn.Parameter(W), nn.Parameter(W.clone())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.d)

    @property
    def rank(self) -> int:
        return self.k

    def _basis64(self) -> Tensor:
        return torch.linalg.qr((self.W if self.symmetric else self.U).to(torch.float64))[0]

    def basis(self) -> Tensor:
        """An orthonormal basis `[d, k]` of the range of P (for the symmetric kind, the Q of P = Q Q^T),
        computed in float64 and returned in the parameters' dtype."""
        W = self.W if self.symmetric else self.U
        return self._basis64().to(W.dtype)

    def _core(self) -> Tensor:
        """`C = V^T U` (oblique only)."""
        return self.V.T @ self.U

    def apply(self, z: Tensor) -> Tensor:
        """`z P^T` for rows `z [B, d]`, computed in float64 (see the module docstring), returned in z's dtype."""
        check_batch(z, self.d, self)
        z64 = z.to(torch.float64)
        if self.symmetric:
            Q = self._basis64()
            return ((z64 @ Q) @ Q.T).to(z.dtype)
        U, V = self.U.to(torch.float64), self.V.to(torch.float64)
        # z P^T = (z V) C^-T U^T, and (z V) C^-T = (C^-1 (z V)^T)^T
        return (torch.linalg.solve(V.T @ U, (z64 @ V).T).T @ U.T).to(z.dtype)

    def apply_transpose(self, y: Tensor) -> Tensor:
        """`y P` for rows `y [B, d]`, in float64 like `apply`."""
        check_batch(y, self.d, self, "transpose input")
        if self.symmetric:
            return self.apply(y)
        y64 = y.to(torch.float64)
        U, V = self.U.to(torch.float64), self.V.to(torch.float64)
        # y P = (y U) C^-1 V^T, and (y U) C^-1 = (C^-T (y U)^T)^T
        return (torch.linalg.solve((V.T @ U).T, (y64 @ U).T).T @ V.T).to(y.dtype)

    def low_rank(self) -> LowRank:
        """P as a (fixed) LowRank: `Q Q^T`, or `(U C^-1) V^T`."""
        if self.symmetric:
            Q = self.basis()
            return LowRank(Q, Q, trainable=False)
        U_Cinv = torch.linalg.solve(self._core().T, self.U.T).T
        return LowRank(U_Cinv, self.V, trainable=False)

    def materialize(self) -> Tensor:
        return self.low_rank().materialize()

    def pinv(self) -> LinearOperator:
        """Symmetric: P itself (an orthogonal projector is its own pseudo-inverse); oblique: a LowRank."""
        return self if self.symmetric else self.low_rank().pinv()

    def svd(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if not self.symmetric:
            return self.low_rank().svd(k)
        k = check_k(k, self.k)
        Q = self.basis()
        return Q[:, :k], torch.ones(k, dtype=Q.dtype, device=Q.device), Q[:, :k]

    def extra_repr(self) -> str:
        return f"shape=({self.d}, {self.d}), rank={self.k}, symmetric={self.symmetric}"
