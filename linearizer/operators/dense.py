"""`Dense`: an explicit `[m, n]` matrix, the operator of small latent spaces."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .algebra import as_scalar, check_composable, check_same_shape, is_fixed
from .base import LinearOperator, check_batch, is_scalar, register_form


@register_form("dense")
class Dense(LinearOperator):
    """A dense matrix `W [m, n]`: `apply(z) = z @ W.T`.

    Given a shape instead of a matrix, `W` starts as `torch.eye(m, n)` (`init="eye"`: the
    Linearizer then begins as `g_y^-1 o g_x`) or as `randn(m, n) / sqrt(n)` (`init="randn"`:
    `A z` has entries of unit variance for `z ~ N(0, I)`).

    Args:
        W: the matrix, or its shape `(m, n)`.
        trainable: hold `W` as a parameter (True) or as a buffer (False). A buffer keeps the
            tensor as given, so gradients still flow to whatever `W` was computed from.
        init: `"eye"` or `"randn"`, used only when `W` is a shape.
        dtype: dtype of an initialised `W` (default: torch's default dtype).
        generator: random generator for `init="randn"`.

    Example:
        >>> A = Dense((3, 5))                     # 3 x 5 partial identity
        >>> A.apply(torch.randn(8, 5)).shape
        torch.Size([8, 3])
    """

    def __init__(self, W: Tensor | tuple[int, int], trainable: bool = True, *, init: str = "eye",
                 dtype: torch.dtype | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(W, Tensor):
            W = self._initial(W, init, dtype, generator)
        if W.dim() != 2 or not W.is_floating_point():
            raise ValueError(f"Dense expects a floating-point [m, n] matrix, got {W.dtype} of shape {tuple(W.shape)}")
        if trainable:
            self.W = nn.Parameter(W)
        else:
            self.register_buffer("W", W)

    @staticmethod
    def _initial(shape: tuple[int, int], init: str, dtype: torch.dtype | None,
                 generator: torch.Generator | None) -> Tensor:
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(isinstance(s, int) and s > 0 for s in shape)):
            raise ValueError(f"Dense expects a matrix or a shape (m, n) of positive ints, got {shape!r}")
        m, n = shape
        dtype = dtype or torch.get_default_dtype()
        if init == "eye":
            return torch.eye(m, n, dtype=dtype)
        if init == "randn":
            return torch.randn(m, n, dtype=dtype, generator=generator) / n**0.5
        raise ValueError(f"Dense init must be 'eye' or 'randn', got {init!r}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self, dtype=self.W.dtype)
        return z @ self.W.T

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input", self.W.dtype)
        return y @ self.W

    def materialize(self) -> Tensor:
        return self.W

    # Products, sums and multiples of fixed dense matrices (see algebra.py) are dense matrices.

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if isinstance(other, Dense) and is_fixed(self, other):
            check_composable(self, other)
            return Dense(self.W @ other.W, trainable=False)
        return super().__matmul__(other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if isinstance(other, Dense) and is_fixed(self, other):
            check_same_shape(self, other)
            return Dense(self.W + other.W, trainable=False)
        return super().__add__(other)

    def __mul__(self, scalar: float | Tensor) -> LinearOperator:
        if not is_scalar(scalar) or not is_fixed(self):
            return super().__mul__(scalar)
        return Dense(as_scalar(scalar, self.W) * self.W, trainable=False)
