"""Glow's multi-scale split: an inner flow on the first channels, the rest passed through.

In Glow the passed-through half is "factored out" into the latent early, and the inner flow
squeezes the kept half to half the resolution, so later blocks see a wider field of view at a
quarter of the cost per channel. A Linearizer's latent must keep the data's dimension (`A` acts
on all of it), so here the factored-out channels stay in place, unchanged: the split is one
invertible block whose log-determinant is the inner flow's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import InvertibleModule, Role


class Split(InvertibleModule):
    """`[x_a, x_b] -> [inner(x_a), x_b]` along channels, where `x_a` is the first `channels`.

    Args:
        inner: the flow applied to the kept channels (its roles are this block's roles).
        channels: how many leading channels `inner` transforms; the others pass through.

    Example:
        >>> inner = Flow([Squeeze(), InvConv1x1(8), Unsqueeze()])
        >>> y, logdet = Split(inner, channels=2)(torch.randn(3, 4, 8, 8))
    """

    def __init__(self, inner: InvertibleModule, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"Split needs channels >= 1 to transform, got {channels}")
        self.inner, self.channels = inner, channels

    def _check(self, x: Tensor, what: str) -> None:
        if x.dim() < 2 or x.shape[1] <= self.channels:
            raise ValueError(f"Split.{what} transforms the first {self.channels} channels and passes the rest "
                             f"through, so it needs input [B, C > {self.channels}, ...]; got {tuple(x.shape)}")

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        self._check(x, "forward")
        y_a, logdet = self.inner(x[:, :self.channels], role)
        return torch.cat([y_a, x[:, self.channels:]], dim=1), logdet

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        self._check(y, "inverse")
        return torch.cat([self.inner.inverse(y[:, :self.channels], role), y[:, self.channels:]], dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels} transformed, the rest passed through"
