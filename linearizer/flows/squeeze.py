"""2x2 space-to-depth and back: `[B, C, H, W] <-> [B, 4C, H/2, W/2]`.

A coupling needs at least two channels to split; squeezing a one-channel (or any odd-channel)
image first gives it `4C` channels, and unsqueezing at the end gives the latent the image's
shape again. Both are permutations of the entries: log-determinant 0.
"""

from __future__ import annotations

from torch import Tensor

from .base import InvertibleModule, Role


def _space_to_depth(x: Tensor, block: str) -> Tensor:
    if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"{block} expects [B, C, H, W] input with H and W even, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    # Channel index = c * 4 + 2 * row_offset + col_offset.
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def _depth_to_space(y: Tensor, block: str) -> Tensor:
    if y.dim() != 4 or y.shape[1] % 4:
        raise ValueError(f"{block} expects [B, 4k, H, W] input (channels divisible by 4), got shape {tuple(y.shape)}")
    b, c4, h, w = y.shape
    y = y.reshape(b, c4 // 4, 2, 2, h, w)
    return y.permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)


class Squeeze(InvertibleModule):
    """2x2 space-to-depth: `[B, C, H, W] -> [B, 4C, H/2, W/2]`; odd H or W raises ValueError.

    Example:
        >>> y, logdet = Squeeze()(torch.randn(2, 1, 8, 8))  # y: [2, 4, 4, 4], logdet: zeros
    """

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        y = _space_to_depth(x, "Squeeze")
        return y, y.new_zeros(y.shape[0])

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        return _depth_to_space(y, "Squeeze.inverse")

    def extra_repr(self) -> str:
        return "factor=2, [B, C, H, W] -> [B, 4C, H/2, W/2]"


class Unsqueeze(InvertibleModule):
    """2x2 depth-to-space, the inverse of `Squeeze`: `[B, 4C, H, W] -> [B, C, 2H, 2W]`.

    Example:
        >>> x, logdet = Unsqueeze()(torch.randn(2, 4, 4, 4))  # x: [2, 1, 8, 8]
    """

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        y = _depth_to_space(x, "Unsqueeze")
        return y, y.new_zeros(y.shape[0])

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        return _space_to_depth(y, "Unsqueeze.inverse")

    def extra_repr(self) -> str:
        return "factor=2, [B, 4C, H, W] -> [B, C, 2H, 2W]"
