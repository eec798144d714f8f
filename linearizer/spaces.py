"""Vector spaces induced by an invertible network.

An invertible `g` turns its domain into a real Hilbert space whose operations are pulled back
from the codes `z = g(x)`:

    x1 (+) x2 = g^-1(g(x1) + g(x2))      a (.) x = g^-1(a g(x))      0 = g^-1(0)
    <x1, x2> = <g(x1), g(x2)>            ||x|| = ||g(x)||            d(x1, x2) = ||g(x1) - g(x2)||

Every Linearizer is exactly linear between two such spaces.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .checks import check_finite, check_input
from .flows.base import InvertibleMap


def _model_tensor(g: InvertibleMap) -> Tensor | None:
    for t in list(g.parameters()) + list(g.buffers()):
        if t.is_floating_point():
            return t
    return None


class InducedSpace:
    """The vector space `(X, (+), (.))` induced on inputs of shape `shape` by the map `g`.

    Elements are ordinary batched tensors `[B, *shape]`; operations act row by row.

    Args:
        g: the invertible map (e.g. a Linearizer's `g_x`).
        shape: the shape of one element, `(C, H, W)` or `(d,)`.

    Example:
        >>> X = InducedSpace(g_x, (1, 32, 32))
        >>> mid = X.lincomb([0.5, 0.5], [x1, x2])     # induced-space midpoint
        >>> X.inner(x1, x2)                           # [B] inner products
    """

    def __init__(self, g: InvertibleMap, shape: Sequence[int]):
        self.g = g
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(torch.Size(self.shape).numel())

    # ----- coordinates -----

    def check(self, x: Tensor, what: str = "input") -> Tensor:
        """Raise a ValueError unless `x` is a finite `[B, *shape]` tensor of the model's dtype and device.

        Every operation of the space (and so `Linearizer.forward` and `project`) runs it once on
        its inputs: a NaN or an infinity would otherwise come out as NaN images with no word of where.
        """
        return check_finite(check_input(x, self.shape, what, like=_model_tensor(self.g)), what)

    def encode(self, x: Tensor) -> Tensor:
        """Coordinates `g(x)` flattened to `[B, dim]`."""
        return self.g(self.check(x)).reshape(x.shape[0], self.dim)

    def decode(self, z: Tensor) -> Tensor:
        """The element with flat coordinates `z [B, dim]`."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"codes must have shape [B, {self.dim}], got {list(z.shape)}")
        return self.g.inverse(z.reshape(z.shape[0], *self.shape))

    # ----- vector-space operations -----

    def add(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.decode(self.encode(x1) + self.encode(x2))

    def sub(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.decode(self.encode(x1) - self.encode(x2))

    def scale(self, a: float | Tensor, x: Tensor) -> Tensor:
        """`a (.) x`; `a` is a scalar or a `[B]` tensor of per-row scalars."""
        z = self.encode(x)
        a = torch.as_tensor(a, dtype=z.dtype, device=z.device)
        return self.decode(a.reshape(-1, 1) * z if a.dim() == 1 else a * z)

    def neg(self, x: Tensor) -> Tensor:
        return self.decode(-self.encode(x))

    def zero(self, batch: int = 1) -> Tensor:
        """The induced zero vector `g^-1(0)`, repeated `batch` times."""
        ref = _model_tensor(self.g)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else None
        return self.decode(torch.zeros(batch, self.dim, dtype=dtype, device=device))

    def lincomb(self, coeffs: Sequence[float] | Tensor, xs: Sequence[Tensor]) -> Tensor:
        """`(+)_i c_i (.) x_i` computed with one decode."""
        if len(coeffs) != len(xs):
            raise ValueError(f"lincomb needs one coefficient per element, got {len(coeffs)} and {len(xs)}")
        z = sum(float(c) * self.encode(x) for c, x in zip(coeffs, xs))
        return self.decode(z)

    # ----- Hilbert-space structure -----

    def inner(self, x1: Tensor, x2: Tensor) -> Tensor:
        """`[B]` induced inner products `<g(x1), g(x2)>`."""
        return (self.encode(x1) * self.encode(x2)).sum(dim=1)

    def norm(self, x: Tensor) -> Tensor:
        return self.encode(x).norm(dim=1)

    def dist(self, x1: Tensor, x2: Tensor) -> Tensor:
        return (self.encode(x1) - self.encode(x2)).norm(dim=1)

    def __repr__(self) -> str:
        return f"InducedSpace(shape={self.shape}, g={self.g.__class__.__name__}(role={getattr(self.g, 'role', '?')}))"
