"""Affine coupling (RealNVP / Glow): half of the channels rescale and shift the other half.

Split `x` along channels into `x_a = x[:, :C//2]` and `x_b = x[:, C//2:]`. The block transforms
one half given the other:

    log_s, t = NN(x_cond)
    log_s    = clamp * tanh(log_s / clamp)     # soft bound: |log_s| < clamp, smooth everywhere
    y_active = x_active * exp(log_s) + t       # y_cond = x_cond

By default `x_b` is transformed given `x_a`; `swap=True` transforms `x_a` given `x_b`, so two
couplings in a row touch every channel. The inverse re-reads `x_cond = y_cond` and undoes the
affine map exactly; the log-determinant is `sum(log_s)`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .base import InvertibleModule, Role, check_channels
from .conditioners import PRECISIONS, MLPConditioner, Precision, UNetConditioner


class AffineCoupling(InvertibleModule):
    """Affine coupling with a U-Net (images) or MLP (vectors) conditioner; identity at init.

    Args:
        num_channels: C (>= 2); odd C splits as `C//2 | C - C//2`.
        hidden: width of the conditioner.
        conditioner: "unet" for `[B, C, H, W]` input, "mlp" for `[B, C]` input.
        swap: transform the first half given the second instead of the reverse.
        clamp: bound on the log-scales (soft, via tanh).
        num_roles: roles the conditioner tells apart (one-hot input); 1 ignores the role flag.
        precision: "float32", or "bfloat16" for a U-Net conditioner's convolutions (its output,
            and the affine map, stay float32; see `linearizer.flows.conditioners`). MLP
            conditioners ignore it.

    Example:
        >>> block = AffineCoupling(4, hidden=16, conditioner="unet", num_roles=2)
        >>> y, logdet = block(torch.randn(2, 4, 8, 8), role=1)
        >>> x = block.inverse(y, role=1)
    """

    def __init__(
        self,
        num_channels: int,
        hidden: int,
        conditioner: Literal["unet", "mlp"] = "unet",
        swap: bool = False,
        clamp: float = 2.0,
        num_roles: int = 1,
        precision: Precision = "float32",
    ):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"AffineCoupling needs num_channels >= 2 to split, got {num_channels}")
        if conditioner not in ("unet", "mlp"):
            raise ValueError(f"conditioner must be 'unet' or 'mlp', got {conditioner!r}")
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.num_channels, self.hidden, self.kind = num_channels, hidden, conditioner
        self.swap, self.clamp, self.num_roles = bool(swap), float(clamp), num_roles
        split = num_channels // 2
        cond_ch, active_ch = (num_channels - split, split) if swap else (split, num_channels - split)
        self.split = split
        if conditioner == "unet":
            self.net: nn.Module = UNetConditioner(cond_ch, 2 * active_ch, hidden, num_roles, precision)
        else:
            self.net = MLPConditioner(cond_ch, 2 * active_ch, hidden, num_roles)

    def _check(self, x: Tensor) -> None:
        check_channels(x, self.num_channels, "AffineCoupling")
        want = 4 if self.kind == "unet" else 2
        if x.dim() != want:
            layout = "[B, C, H, W]" if want == 4 else "[B, C]"
            raise ValueError(f"AffineCoupling with a {self.kind} conditioner expects {layout} input, "
                             f"got shape {tuple(x.shape)}")

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning half, active half)."""
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        return (x_b, x_a) if self.swap else (x_a, x_b)

    def _join(self, cond: Tensor, active: Tensor) -> Tensor:
        return torch.cat([active, cond] if self.swap else [cond, active], dim=1)

    def _scale_shift(self, cond: Tensor, role: Role) -> tuple[Tensor, Tensor]:
        raw_log_s, t = self.net(cond, role).chunk(2, dim=1)
        return self.clamp * torch.tanh(raw_log_s / self.clamp), t

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        cond, active = self._halves(x)
        log_s, t = self._scale_shift(cond, role)
        y = self._join(cond, active * torch.exp(log_s) + t)
        return y, log_s.flatten(1).sum(dim=1)

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        self._check(y)
        cond, active = self._halves(y)
        log_s, t = self._scale_shift(cond, role)
        return self._join(cond, (active - t) * torch.exp(-log_s))

    def extra_repr(self) -> str:
        cond, active = ("x_b", "x_a") if self.swap else ("x_a", "x_b")
        return (f"num_channels={self.num_channels}, split={self.split}|{self.num_channels - self.split}, "
                f"transforms {active} given {cond}, conditioner={self.kind}, hidden={self.hidden}, "
                f"clamp={self.clamp}, num_roles={self.num_roles}")
