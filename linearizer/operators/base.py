"""The contract every linear operator `A` obeys.

Operators act on flat batches: `apply` maps `[B, n] -> [B, m]` (row-vector convention: the
result is `z @ A.T` for the matrix `A` of shape `[m, n]`), `apply_transpose` maps `[B, m] -> [B, n]`.
The Linearizer flattens latents before calling them; an operator that needs the image layout
(a convolution) keeps its own `(C, H, W)` and reshapes inside.

Structured results (a pseudo-inverse, a product, an SVD) stay structured where the structure
allows; `materialize()` gives the dense `[m, n]` matrix for small sizes and tests.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor, nn

from ..checks import check_k


def is_scalar(c: object) -> bool:
    """True for a real number or a 0-dim tensor: what `c * A` accepts as `c`."""
    if isinstance(c, Tensor):
        return c.dim() == 0
    return isinstance(c, Real) and not isinstance(c, bool)


def check_batch(z: Tensor, n: int, owner: "LinearOperator", what: str = "input",
                dtype: torch.dtype | None = None) -> None:
    """Raise a ValueError unless `z` is a `[B, n]` batch of row vectors (of `dtype`, when given).

    Operators whose `apply` multiplies `z` by their own tensors pass their dtype, so that a
    mismatch is named here rather than raised by the matmul as a bare RuntimeError. Under
    autocast (bf16 training) mixed dtypes are intended and the matmul casts: no dtype check then.
    """
    if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != n:
        given = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{type(owner).__name__} of shape {tuple(owner.shape)} expects its {what} as a "
                         f"[B, {n}] tensor, got {given}")
    if dtype is not None and z.dtype != dtype and not torch.is_autocast_enabled(z.device.type):
        raise ValueError(f"{type(owner).__name__} is {dtype} and expects its {what} in that dtype, got {z.dtype}: "
                         f"convert one of them (z.to({dtype}) or A.to({z.dtype}))")


#: Classes this module's fallbacks return (the lazy algebra, the dense pseudo-inverse), registered
#: by `algebra.py` and `dense.py` (which import this module) with `register_form`. The package's
#: `__init__` imports both, so they are registered before any operator exists, and this module
#: imports neither: the contract does not depend on its implementations.
_FORMS: dict[str, type] = {}


def register_form(name: str):
    """Class decorator: make the class the operator form `name` ("transposed", "product", "sum",
    "scaled", "dense") that `LinearOperator`'s generic methods build."""

    def register(cls: type) -> type:
        _FORMS[name] = cls
        return cls

    return register


def _form(name: str) -> type:
    return _FORMS[name]


class LinearOperator(nn.Module):
    """Base class of linear operators.

    Subclasses must implement `shape`, `apply`, `apply_transpose`; they should override
    `materialize`, `pinv` and `svd` where structure makes them cheaper than the dense fallback.
    """

    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover
        """(m, n): output and input dimension."""
        raise NotImplementedError

    def apply(self, z: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def apply_transpose(self, y: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.apply(z)

    # ----- dense fallbacks (subclasses override with structured versions) -----

    def _reference_tensor(self) -> Tensor:
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t
        return torch.empty(0)

    def materialize(self) -> Tensor:
        """The dense `[m, n]` matrix (columns are images of the basis vectors)."""
        ref = self._reference_tensor()
        eye = torch.eye(self.shape[1], dtype=ref.dtype, device=ref.device)
        return self.apply(eye).T

    def transpose(self) -> "LinearOperator":
        return _form("transposed")(self)

    @property
    def T(self) -> "LinearOperator":
        return self.transpose()

    def pinv(self) -> "LinearOperator":
        """Moore-Penrose pseudo-inverse (dense fallback)."""
        return _form("dense")(torch.linalg.pinv(self.materialize()), trainable=False)

    def svd(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k singular triplets: `U [m, k]`, `S [k]` (descending), `V [n, k]` with `A ~ U diag(S) V^T`.

        Args:
            k: how many: None for all `min(m, n)`, else an int >= 0 (capped at `min(m, n)`).

        Raises:
            ValueError: `k` negative or not an integer.
        """
        k = check_k(k, min(self.shape))
        U, S, Vh = torch.linalg.svd(self.materialize(), full_matrices=False)
        return U[:, :k], S[:k], Vh[:k].T

    # ----- algebra -----

    def _structured_rmatmul(self, left: "LinearOperator") -> "LinearOperator | None":
        """`left @ self` in a structured form, when this class knows one for `left`, else None.

        Double dispatch without imports: a class (`LowRank`) asks its right operand, so a class
        defined later (`IdentityPlusLowRank`) extends the products of an earlier one.
        """
        return None

    def _structured_radd(self, left: "LinearOperator") -> "LinearOperator | None":
        """`left + self` in a structured form, when this class knows one for `left`, else None."""
        return None

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _form("product")(self, other)

    def __add__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _form("sum")(self, other)

    def __mul__(self, scalar: float | Tensor) -> "LinearOperator":
        if not is_scalar(scalar):
            return NotImplemented
        return _form("scaled")(self, scalar)

    def __rmul__(self, scalar: float | Tensor) -> "LinearOperator":
        return self.__mul__(scalar)

    def __neg__(self) -> "LinearOperator":
        return self.__mul__(-1.0)

    def __sub__(self, other: "LinearOperator") -> "LinearOperator":
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return self + (-other)

    def extra_repr(self) -> str:
        m, n = self.shape
        return f"shape=({m}, {n})"
