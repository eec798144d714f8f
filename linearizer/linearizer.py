"""The Linearizer `f(x) = g_y^-1(A g_x(x))` and the linear algebra it inherits from `A`.

`f` is exactly linear from the space induced by `g_x` to the space induced by `g_y`
(`linearizer.spaces`), so every operation on `A` transfers:

    f^T  = g_x^-1 A^T g_y        f^+ = g_x^-1 A^+ g_y        f^k = g^-1 A^k g   (g_x = g_y = g)
    svd: left vectors g_y^-1(u_i), right vectors g_x^-1(v_i), singular values s_i
    compose: L(g_y, g_z, A2) o L(g_x, g_y, A1) = L(g_x, g_z, A2 A1)

Example:
    >>> g_x, g_y = build_maps((1, 8, 8), FlowConfig(depth=2, hidden=8))
    >>> L = Linearizer(g_x, LowRank.random(64, 64, 4), g_y, x_shape=(1, 8, 8))
    >>> y = L(x)
    >>> x_hat = L.pinv()(y)                 # least-squares pre-image in the induced spaces
    >>> u, s, v = L.svd(k=4)                # singular vectors as images
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .checks import check_k, check_tol
from .flows.base import InvertibleMap
from .operators.base import LinearOperator
from .spaces import InducedSpace


def _significant(S: Tensor, rtol: float) -> Tensor:
    """Mask of the singular values `S` above `rtol` times the largest (all False for an empty S)."""
    if S.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=S.device)
    return S > rtol * S.max().clamp_min(torch.finfo(S.dtype).tiny)


@dataclass
class InducedSVD:
    """Top singular triplets of a Linearizer.

    Attributes:
        u: left singular vectors as elements of Y, `[k, *y_shape]` (`g_y^-1(u_i)`).
        s: singular values `[k]`, descending.
        v: right singular vectors as elements of X, `[k, *x_shape]` (`g_x^-1(v_i)`).
        U, V: the same vectors as flat codes, `[m, k]` and `[n, k]` (orthonormal columns).
    """

    u: Tensor
    s: Tensor
    v: Tensor
    U: Tensor
    V: Tensor


class Linearizer(nn.Module):
    """`f(x) = g_y^-1(A g_x(x))`.

    Args:
        g_x: invertible map of the input space X.
        A: linear operator of shape `(prod(y_shape), prod(x_shape))`.
        g_y: invertible map of the output space Y.
        x_shape: shape of one input, `(C, H, W)` or `(d,)`.
        y_shape: shape of one output (default: `x_shape`).
    """

    def __init__(self, g_x: InvertibleMap, A: LinearOperator, g_y: InvertibleMap,
                 x_shape: Sequence[int], y_shape: Sequence[int] | None = None):
        super().__init__()
        self.g_x, self.A, self.g_y = g_x, A, g_y
        self.X = InducedSpace(g_x, x_shape)
        self.Y = InducedSpace(g_y, x_shape if y_shape is None else y_shape)
        if tuple(A.shape) != (self.Y.dim, self.X.dim):
            raise ValueError(f"A has shape {tuple(A.shape)}, but X has dimension {self.X.dim} and Y "
                             f"{self.Y.dim}: expected A of shape ({self.Y.dim}, {self.X.dim})")

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.X.shape

    @property
    def y_shape(self) -> tuple[int, ...]:
        return self.Y.shape

    def forward(self, x: Tensor) -> Tensor:
        return self.Y.decode(self.A.apply(self.X.encode(x)))

    def _with(self, A: LinearOperator, swap: bool) -> "Linearizer":
        if swap:
            return Linearizer(self.g_y, A, self.g_x, self.y_shape, self.x_shape)
        return Linearizer(self.g_x, A, self.g_y, self.x_shape, self.y_shape)

    # ----- transpose and pseudo-inverse -----

    def transpose(self) -> "Linearizer":
        """The adjoint `f^T = g_x^-1 A^T g_y`: `<f(x), y>_Y = <x, f^T(y)>_X`."""
        return self._with(self.A.transpose(), swap=True)

    @property
    def T(self) -> "Linearizer":
        return self.transpose()

    def pinv(self) -> "Linearizer":
        """The Moore-Penrose pseudo-inverse `f^+ = g_x^-1 A^+ g_y` (structured when A is)."""
        return self._with(self.A.pinv(), swap=True)

    # ----- spectral structure -----

    def svd(self, k: int | None = None) -> InducedSVD:
        """Top-`k` singular triplets, structured when `A` is low-rank.

        Args:
            k: how many (None: all that `A.svd` gives; more than there are gives all of them).

        Returns:
            InducedSVD with `f(x) = (+)_i s_i <x, v_i>_X (.) u_i`.

        Raises:
            ValueError: `k` negative or not an integer.
        """
        U, S, V = self.A.svd(k)
        return InducedSVD(u=self.Y.decode(U.T.contiguous()), s=S, v=self.X.decode(V.T.contiguous()), U=U, V=V)

    def _require_endomorphism(self, what: str) -> None:
        if self.X.dim != self.Y.dim:
            raise ValueError(f"{what} needs a square operator, but A has shape {tuple(self.A.shape)}")
        if not self.g_x.same_map(self.g_y):
            raise ValueError(f"{what} needs g_x and g_y to be the same map (same network and role); "
                             f"this Linearizer has two different maps, so f is not an endomorphism of one space")

    def eig(self, k: int | None = None, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
        """Real eigenpairs of `f` (requires `g_x` and `g_y` to be the same map).

        `A v = l v` gives `f(g^-1(v)) = l (.) g^-1(v)`. Complex pairs cannot be decoded through a
        real network and are dropped.

        Args:
            k: keep the `k` eigenvalues of largest magnitude.
            tol: imaginary parts below `tol * max|l|` count as real.

        Returns:
            (values `[k']`, vectors as elements of X `[k', *x_shape]`), by decreasing |value|.

        Raises:
            ValueError: `k` or `tol` negative, or `f` not an endomorphism of one space.
        """
        check_k(k, 0)  # refused before the O(d^3) eigendecomposition, capped after it
        check_tol(tol, "tol")
        self._require_endomorphism("eig")
        M = self.A.materialize()
        if torch.allclose(M, M.T, atol=1e-12 * M.abs().max().item()):
            vals, vecs = torch.linalg.eigh(M)
        else:
            vals_c, vecs_c = torch.linalg.eig(M)
            scale = vals_c.abs().max().clamp_min(torch.finfo(M.dtype).tiny)
            real = vals_c.imag.abs() <= tol * scale
            vals, vecs = vals_c.real[real], vecs_c.real[:, real]
            vecs = vecs / vecs.norm(dim=0, keepdim=True)
        order = vals.abs().argsort(descending=True)[:check_k(k, vals.numel())]
        vals, vecs = vals[order], vecs[:, order]
        return vals, self.X.decode(vecs.T.contiguous())

    def range_basis(self, k: int | None = None, rtol: float = 1e-10) -> Tensor:
        """Elements of Y whose codes are an orthonormal basis of `range A` (`range f = g_y^-1(range A)`).

        Args:
            k: look at the top `k` singular directions only (None: all).
            rtol: keep the directions whose singular value exceeds `rtol` times the largest (>= 0).

        Raises:
            ValueError: `k` or `rtol` negative.
        """
        check_tol(rtol)
        U, S, _ = self.A.svd(k)
        return self.Y.decode(U[:, _significant(S, rtol)].T.contiguous())

    def kernel_basis(self, rtol: float = 1e-10) -> Tensor:
        """Elements of X whose codes are an orthonormal basis of `ker A` (dense SVD: small d only).

        Args:
            rtol: singular values up to `rtol` times the largest count as zero (>= 0).

        Raises:
            ValueError: `rtol` negative (it would count nothing as zero and return no basis).
        """
        check_tol(rtol)
        M = self.A.materialize()
        _, S, Vh = torch.linalg.svd(M, full_matrices=True)
        rank = int(_significant(S, rtol).sum())
        return self.X.decode(Vh[rank:].contiguous())

    def project(self, y: Tensor, rtol: float = 1e-10) -> Tensor:
        """Orthogonal projection of `y` onto `range f` in the inner product induced by `g_y`.

        Args:
            y: elements of Y, `[B, *y_shape]` (finite, of the model's dtype).
            rtol: directions of `range A` with singular value up to `rtol` times the largest are
                left out (>= 0).

        Raises:
            ValueError: a malformed or non-finite `y`, or a negative `rtol`.
        """
        check_tol(rtol)
        self.Y.check(y, "y")
        U, S, _ = self.A.svd()
        U = U[:, _significant(S, rtol)]
        z = self.Y.encode(y)
        return self.Y.decode((z @ U) @ U.T)

    # ----- composition and powers -----

    def compose(self, inner: "Linearizer") -> "Linearizer":
        """`self o inner`: `L(g_y, g_z, A2) o L(g_x, g_y, A1) = L(g_x, g_z, A2 A1)`.

        Raises:
            ValueError: unless `inner`'s output map is the same map as `self`'s input map; with two
                different middle networks the composition is not a Linearizer.
        """
        if not inner.g_y.same_map(self.g_x):
            raise ValueError("compose needs the middle networks to be the same map: inner.g_y must be "
                             "self.g_x (same network object and role); otherwise g_x o g_y^-1 does not cancel "
                             "and the composition is not a Linearizer")
        if inner.y_shape != self.x_shape:
            raise ValueError(f"compose: inner maps to shape {inner.y_shape}, but self expects {self.x_shape}")
        return Linearizer(inner.g_x, self.A @ inner.A, self.g_y, inner.x_shape, self.y_shape)

    def __matmul__(self, inner: "Linearizer") -> "Linearizer":
        return self.compose(inner)

    def power(self, k: int) -> "Linearizer":
        """`f^k = g^-1 A^k g` for `k >= 1` (requires `g_x` and `g_y` to be the same map)."""
        self._require_endomorphism("power")
        if k < 1:
            raise ValueError(f"power needs k >= 1, got {k}")
        A = self.A
        for _ in range(k - 1):
            A = self.A @ A
        return self._with(A, swap=False)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}"
