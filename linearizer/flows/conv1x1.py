"""Invertible 1x1 convolution in LU form (Glow).

The channel-mixing matrix is kept factored, `W = P L (U + diag(sign_s * exp(log_s)))`, with `P`
a fixed permutation, `L` unit lower-triangular and `U` strictly upper-triangular. The factored
form gives the log-determinant for free (`sum(log_s)` per pixel) and the inverse by two
triangular solves: no dense inverse is ever formed, so it stays cheap and stable as training
moves `W`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import InvertibleModule, Role, check_channels


class InvConv1x1(InvertibleModule):
    """Invertible channel mixing: a 1x1 convolution on `[B, C, H, W]`, a linear layer on `[B, C]`.

    Initialised from a random orthogonal matrix (drawn from torch's global RNG, so
    `torch.manual_seed` makes it reproducible). The role flag is accepted and ignored.

    Args:
        num_channels: C.

    Example:
        >>> conv = InvConv1x1(4)
        >>> y, logdet = conv(torch.randn(2, 4, 8, 8))
        >>> x = conv.inverse(y)
    """

    def __init__(self, num_channels: int):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"InvConv1x1 needs num_channels >= 1, got {num_channels}")
        self.num_channels = num_channels
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        # perm[j] is the row of P's one in column j, so P^T y == y[perm].
        self.register_buffer("perm", p.argmax(dim=0))
        self.register_buffer("sign_s", torch.sign(s).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def factors(self) -> tuple[Tensor, Tensor]:
        """(L, U): unit lower and upper triangular factors, with `W = P L U`."""
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        """The dense `[C, C]` matrix W (`y = W x` per pixel)."""
        lower, upper = self.factors()
        # P M permutes rows: row perm[j] of P M is row j of M.
        return (lower @ upper)[torch.argsort(self.perm)]

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.num_channels, "InvConv1x1")
        w = self.weight()
        y = torch.einsum("ij,bj...->bi...", w, x)
        logdet = math.prod(x.shape[2:]) * self.log_s.sum()
        return y, logdet.to(x.dtype).expand(x.shape[0])

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        check_channels(y, self.num_channels, "InvConv1x1")
        lower, upper = self.factors()
        # Channels as rows, every pixel of every sample a column: x = U^-1 L^-1 P^T y.
        cols = y.movedim(1, 0).reshape(self.num_channels, -1)[self.perm]
        cols = torch.linalg.solve_triangular(lower, cols, upper=False, unitriangular=True)
        cols = torch.linalg.solve_triangular(upper, cols, upper=True)
        return cols.reshape(y.movedim(1, 0).shape).movedim(0, 1)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, parametrisation=LU"
