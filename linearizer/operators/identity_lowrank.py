"""`IdentityPlusLowRank`: `A = b I + P Q^T`, the form of every exact sampler step.

Each Euler or RK4 step of the latent ODE `dz/dt = (A(t) - I) z / (1 - t)` with a low-rank `A(t)`
is a matrix `M_k = a_k I + (low rank)`, and the form is closed under products and sums:

    (a I + P Q^T)(b I + R S^T) = ab I + [b P, a R + P (Q^T R)] [Q, S]^T

so T steps collapse into one `B = b I + P Q^T` of rank at most the sum of the step ranks, built
in O(d k1 k2) per product and applied in O(d k). Its inverse is again of this form (Woodbury),
and `compress` brings the factors back to the minimal rank.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_tol
from .algebra import as_scalar, check_composable, check_same_shape, is_fixed
from .base import LinearOperator, check_batch, is_scalar
from .lowrank import LowRank, check_factors, factored_svd


class IdentityPlusLowRank(LinearOperator):
    """`A = b I + P Q^T` on R^d.

    The factors are buffers by default: the operator is data (a collapsed sampler), saved with
    the model, converted by `.to(dtype)`, and never updated by an optimizer. Buffers keep the
    tensors as given, so gradients still flow to whatever they were computed from. Products and
    sums of such operators stay in this form; with `trainable=True` they compose lazily instead
    (see algebra.py).

    Args:
        b: the identity coefficient, a float or a 0-dim tensor.
        P: `[d, k]`.
        Q: `[d, k]`.
        trainable: hold `b`, `P`, `Q` as parameters instead of buffers.

    Example:
        >>> B = IdentityPlusLowRank.identity(64)
        >>> for M in steps:                  # each an IdentityPlusLowRank
        ...     B = M @ B                    # stays b I + P Q^T, rank adds up
        >>> B = B.compress()                 # minimal rank, same operator
        >>> x0 = B.inverse().apply(z1)       # Woodbury, O(d k^2)
    """

    def __init__(self, b: float | Tensor, P: Tensor, Q: Tensor, trainable: bool = False):
        super().__init__()
        check_factors("IdentityPlusLowRank", P, Q, "P", "Q")
        if P.shape != Q.shape:
            raise ValueError(f"IdentityPlusLowRank expects P and Q of the same shape [d, k], got "
                             f"{tuple(P.shape)} and {tuple(Q.shape)}")
        b = as_scalar(b, P)
        if trainable:
            self.b, self.P, self.Q = nn.Parameter(b), nn.Parameter(P), nn.Parameter(Q)
        else:
            self.register_buffer("b", b)
            self.register_buffer("P", P)
            self.register_buffer("Q", Q)

    @classmethod
    def identity(cls, d: int, b: float = 1.0, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> "IdentityPlusLowRank":
        """`b I_d` with rank-0 factors: the start of a product chain."""
        if not (isinstance(d, int) and d > 0):
            raise ValueError(f"identity expects a positive dimension d, got {d!r}")
        empty = torch.zeros(d, 0, dtype=dtype, device=device)
        return cls(b, empty, empty.clone())

    @property
    def shape(self) -> tuple[int, int]:
        d = self.P.shape[0]
        return (d, d)

    @property
    def rank(self) -> int:
        """k, the number of columns of P and Q (the rank of the low-rank part is at most k)."""
        return self.P.shape[1]

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self, dtype=self.P.dtype)
        return self.b * z + (z @ self.Q) @ self.P.T

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input", self.P.dtype)
        return self.b * y + (y @ self.P) @ self.Q.T

    def materialize(self) -> Tensor:
        return self.b * torch.eye(self.shape[0], dtype=self.P.dtype, device=self.P.device) + self.P @ self.Q.T

    # ----- inverse, pseudo-inverse, compression -----

    def _core(self) -> Tensor:
        """`C = b I_k + Q^T P`: A is invertible iff b != 0 and C is (det A = b^(d-k) det C)."""
        return self.b * torch.eye(self.rank, dtype=self.P.dtype, device=self.P.device) + self.Q.T @ self.P

    def _invertible_core(self) -> Tensor | None:
        """The core C when b != 0 and C is numerically non-singular, else None."""
        if self.b.item() == 0.0:
            return None
        C = self._core()
        if self.rank:
            # Forming Q^T P loses about eps * |P| |Q|, so C is numerically singular when its smallest
            # singular value is within a few of those errors of zero.
            P, Q = self.P.detach(), self.Q.detach()
            scale = abs(self.b.item()) + (torch.linalg.norm(P) * torch.linalg.norm(Q)).item()
            if torch.linalg.svdvals(C.detach())[-1].item() <= self.shape[0] * torch.finfo(C.dtype).eps * scale:
                return None
        return C

    def inverse(self) -> "IdentityPlusLowRank":
        """`A^-1 = (1/b) I - (1/b) P C^-1 Q^T` with `C = b I_k + Q^T P` (Woodbury), in O(d k^2).

        Raises:
            ValueError: when b == 0 or C is singular (then A is singular: use `pinv()`).
        """
        if self.b.item() == 0.0:
            raise ValueError(f"IdentityPlusLowRank with b = 0 (rank {self.rank} <= d = {self.shape[0]}) "
                             "is not invertible by Woodbury; use pinv()")
        C = self._invertible_core()
        if C is None:
            raise ValueError(f"IdentityPlusLowRank of shape {self.shape} is singular: its core b I + Q^T P "
                             f"({self.rank} x {self.rank}) is singular; use pinv()")
        return self._woodbury(C)

    def _woodbury(self, C: Tensor) -> "IdentityPlusLowRank":
        # P C^-1 = (C^-T P^T)^T, by a solve rather than an explicit inverse.
        P_Cinv = torch.linalg.solve(C.T, self.P.T).T
        return IdentityPlusLowRank(1.0 / self.b, -P_Cinv / self.b, self.Q)

    def pinv(self, rtol: float | None = None) -> "IdentityPlusLowRank":
        """Moore-Penrose pseudo-inverse, again of the form `b' I + P' Q'^T`.

        The Woodbury inverse when A is invertible. Otherwise, with W an orthonormal basis of
        span[P, Q], A = b (I - W W^T) + W M W^T where M = b I + (W^T P)(Q^T W): the two terms act
        on orthogonal subspaces, so A^+ = (1/b)(I - W W^T) + W M^+ W^T (the first term dropped
        when b = 0), computed with a `2k x 2k` SVD.

        Args:
            rtol: relative cut-off for the singular values of A in the singular case (default
                `d * eps`); >= 0.

        Raises:
            ValueError: a negative `rtol`.
        """
        if rtol is not None:
            check_tol(rtol)
        C = self._invertible_core()
        if C is not None:
            return self._woodbury(C)
        if self.rank == 0:  # b = 0 and no low-rank part: the zero map
            return IdentityPlusLowRank(0.0, self.P, self.Q)
        W, _ = torch.linalg.qr(torch.cat([self.P, self.Q], 1))
        b = self.b.item()
        M = self.b * torch.eye(W.shape[1], dtype=W.dtype, device=W.device) + (W.T @ self.P) @ (self.Q.T @ W)
        L, S, Rh = torch.linalg.svd(M)
        top = max(abs(b), S[0].item() if S.numel() else 0.0)
        rtol = self.shape[0] * torch.finfo(S.dtype).eps if rtol is None else rtol
        s = int((S > rtol * top).sum())
        M_pinv = (Rh[:s].T / S[:s]) @ L[:, :s].T
        if b == 0.0:
            return IdentityPlusLowRank(0.0, W @ M_pinv, W)
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        return IdentityPlusLowRank(1.0 / self.b, W @ (M_pinv - eye / self.b), W)

    def compress(self, rtol: float = 1e-12) -> "IdentityPlusLowRank":
        """The same operator with factors of minimal rank.

        `P Q^T = Q_P (R_P R_Q^T) Q_Q^T` (thin QRs), and the SVD of the small core keeps the
        singular values above `rtol` times the largest. The new `Q` has orthonormal columns.

        Args:
            rtol: relative cut-off; the dropped part has spectral norm <= rtol * ||P Q^T||, or is
                round-off of the factors (below d * eps * ||P||_F ||Q||_F).

        Returns:
            An IdentityPlusLowRank with the same b and rank <= min(d, k).

        Raises:
            ValueError: a negative `rtol` (which would keep everything, round-off included).
        """
        check_tol(rtol)
        dtype = self.P.dtype
        # The small SVD runs in float64 whatever the storage dtype: a float32 factorisation would
        # itself add errors of ~1e-4 relative at d in the thousands.
        L, S, R = factored_svd(self.P.double(), self.Q.double())
        # Also drop what is round-off of the factors (e.g. the 1e-16 left of X - X): singular values
        # within eps * |P| |Q| of zero (eps of the storage dtype) carry no information.
        factor_norms = (torch.linalg.norm(self.P.double()) * torch.linalg.norm(self.Q.double())).item()
        noise = torch.finfo(dtype).eps * factor_norms
        s = int((S > max(rtol * S[0].item(), noise)).sum()) if S.numel() else 0
        return IdentityPlusLowRank(self.b, (L[:, :s] * S[:s]).to(dtype), R[:, :s].to(dtype))

    def low_rank_part(self) -> LowRank:
        """`P Q^T` as a (fixed) LowRank."""
        return LowRank(self.P, self.Q, trainable=False)

    # ----- algebra: fixed operands (see algebra.py) stay in this form -----

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not is_fixed(self, other):
            return super().__matmul__(other)
        a, P, Q = self.b, self.P, self.Q
        if isinstance(other, IdentityPlusLowRank):
            check_composable(self, other)
            b, R, S = other.b, other.P, other.Q
            left = torch.cat([b * P, a * R + P @ (Q.T @ R)], 1)
            return IdentityPlusLowRank(a * b, left, torch.cat([Q, S], 1))
        if isinstance(other, LowRank):
            check_composable(self, other)
            # (a I + P Q^T) U V^T = (a U + P (Q^T U)) V^T
            return LowRank(a * other.U + P @ (Q.T @ other.U), other.V, trainable=False)
        return super().__matmul__(other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not is_fixed(self, other):
            return super().__add__(other)
        if isinstance(other, IdentityPlusLowRank):
            check_same_shape(self, other)
            return IdentityPlusLowRank(self.b + other.b, torch.cat([self.P, other.P], 1),
                                       torch.cat([self.Q, other.Q], 1))
        if isinstance(other, LowRank):
            check_same_shape(self, other)
            return IdentityPlusLowRank(self.b, torch.cat([self.P, other.U], 1), torch.cat([self.Q, other.V], 1))
        return super().__add__(other)

    # `LowRank` does not import this class; it asks its right operand for these two forms.

    def _structured_rmatmul(self, left: LinearOperator) -> LinearOperator | None:
        if not isinstance(left, LowRank):
            return None
        check_composable(left, self)
        # U V^T (b I + P Q^T) = U (b V + Q (P^T V))^T
        return LowRank(left.U, self.b * left.V + self.Q @ (self.P.T @ left.V), trainable=False)

    def _structured_radd(self, left: LinearOperator) -> LinearOperator | None:
        return self + left if isinstance(left, LowRank) else None  # the sum commutes

    def __mul__(self, scalar: float | Tensor) -> LinearOperator:
        if not is_scalar(scalar) or not is_fixed(self):
            return super().__mul__(scalar)
        c = as_scalar(scalar, self.P)
        return IdentityPlusLowRank(c * self.b, c * self.P, self.Q)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, b={self.b.item():.6g}, rank={self.rank}"
