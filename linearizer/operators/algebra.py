"""Lazy algebra of operators: `A.T`, `A @ B`, `A + B`, `c * A`.

These wrap their operands and never form a matrix, so they work for any operator size.
Operands are registered as submodules, so their parameters train and save through the composite.

Operators made only of buffers (fixed data: a pseudo-inverse, a collapsed sampler matrix, a
snapshot `A(t)`) return structured results instead where the structure is closed under the
operation (`LowRank @ LowRank`, `IdentityPlusLowRank + IdentityPlusLowRank`, ...). Such a result
is computed once from the operands' tensors, so an operand with parameters, which an optimizer
changes in place, always composes lazily: the composite must see its current values.

Example:
    >>> C = A @ B + 0.5 * A.T          # Sum(Product(A, B), Scaled(Transposed(A), 0.5))
    >>> C.apply(z) == A.apply(B.apply(z)) + 0.5 * A.apply_transpose(z)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LinearOperator, check_batch, is_scalar, register_form


def is_fixed(*ops: LinearOperator) -> bool:
    """True when none of `ops` holds parameters, so a structured (precomputed) result is safe."""
    return all(next(op.parameters(), None) is None for op in ops)


def check_composable(A: LinearOperator, B: LinearOperator) -> None:
    """Raise a ValueError unless `A @ B` is defined (A's input dimension is B's output dimension)."""
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"cannot compose A @ B: A has shape {tuple(A.shape)} and B has shape {tuple(B.shape)} "
                         f"(A needs {A.shape[1]} inputs, B gives {B.shape[0]} outputs)")


def check_same_shape(A: LinearOperator, B: LinearOperator) -> None:
    """Raise a ValueError unless `A + B` is defined (equal shapes)."""
    if tuple(A.shape) != tuple(B.shape):
        raise ValueError(f"cannot add operators of shapes {tuple(A.shape)} and {tuple(B.shape)}")


def as_scalar(c: float | Tensor, like: Tensor) -> Tensor:
    """`c` as a 0-dim tensor of `like`'s dtype and device (keeps the autograd graph of a tensor `c`)."""
    if not is_scalar(c):
        raise ValueError(f"expected a real number or a 0-dim tensor, got {c!r}")
    if isinstance(c, Tensor):
        return c.to(dtype=like.dtype, device=like.device)
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


@register_form("transposed")
class Transposed(LinearOperator):
    """`A^T`: apply and apply_transpose swapped. `Transposed(A).T` is `A` itself.

    Args:
        A: the operator to transpose.
    """

    def __init__(self, A: LinearOperator):
        super().__init__()
        self.A = A

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.A.shape
        return (n, m)

    def apply(self, z: Tensor) -> Tensor:
        return self.A.apply_transpose(z)

    def apply_transpose(self, y: Tensor) -> Tensor:
        return self.A.apply(y)

    def materialize(self) -> Tensor:
        return self.A.materialize().T

    def transpose(self) -> LinearOperator:
        return self.A

    def pinv(self) -> LinearOperator:
        # (A^T)^+ = (A^+)^T: keeps whatever structure A's pseudo-inverse has.
        return self.A.pinv().T

    def svd(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        U, S, V = self.A.svd(k)
        return V, S, U


@register_form("product")
class Product(LinearOperator):
    """`A @ B`: B first, then A (`apply(z) = A.apply(B.apply(z))`).

    Args:
        A: the outer operator, shape `[m, k]`.
        B: the inner operator, shape `[k, n]`.

    Raises:
        ValueError: when A's input dimension is not B's output dimension.
    """

    def __init__(self, A: LinearOperator, B: LinearOperator):
        super().__init__()
        check_composable(A, B)
        self.A, self.B = A, B

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0], self.B.shape[1])

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self)
        return self.A.apply(self.B.apply(z))

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input")
        return self.B.apply_transpose(self.A.apply_transpose(y))

    def materialize(self) -> Tensor:
        return self.A.materialize() @ self.B.materialize()

    def transpose(self) -> LinearOperator:
        return Product(self.B.T, self.A.T)


@register_form("sum")
class Sum(LinearOperator):
    """`A + B` for operators of equal shape.

    Raises:
        ValueError: when the shapes differ.
    """

    def __init__(self, A: LinearOperator, B: LinearOperator):
        super().__init__()
        check_same_shape(A, B)
        self.A, self.B = A, B

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.A.shape)

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self)
        return self.A.apply(z) + self.B.apply(z)

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input")
        return self.A.apply_transpose(y) + self.B.apply_transpose(y)

    def materialize(self) -> Tensor:
        return self.A.materialize() + self.B.materialize()

    def transpose(self) -> LinearOperator:
        return Sum(self.A.T, self.B.T)


@register_form("scaled")
class Scaled(LinearOperator):
    """`c * A` for a real scalar c (a float, or a 0-dim tensor that may carry gradients).

    `c` is kept as a buffer in A's dtype, so it follows `.to(dtype)` and is saved with the model.

    Args:
        A: the operator.
        c: the scale.
    """

    def __init__(self, A: LinearOperator, c: float | Tensor):
        super().__init__()
        self.A = A
        self.register_buffer("c", as_scalar(c, A._reference_tensor()))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.A.shape)

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self)
        return self.c * self.A.apply(z)

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input")
        return self.c * self.A.apply_transpose(y)

    def materialize(self) -> Tensor:
        return self.c * self.A.materialize()

    def transpose(self) -> LinearOperator:
        return Scaled(self.A.T, self.c)

    def pinv(self) -> LinearOperator:
        if self.c.item() == 0.0:
            return Scaled(self.A.T, 0.0)  # the pseudo-inverse of a zero map is the zero map back
        return Scaled(self.A.pinv(), 1.0 / self.c)

    def svd(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        U, S, V = self.A.svd(k)
        # |c| scales every singular value alike, so the order is kept; the sign goes to U.
        return (-U if self.c.item() < 0 else U), self.c.abs() * S, V

    def __mul__(self, scalar: float | Tensor) -> LinearOperator:
        if not is_scalar(scalar):
            return NotImplemented
        return Scaled(self.A, self.c * scalar)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c.item():.6g}"
