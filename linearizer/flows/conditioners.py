"""The networks inside an affine coupling that read one half and emit the other half's scale and shift.

They need not be invertible, but they must be deterministic functions of their input: no
BatchNorm or dropout, whose train/eval switch would make the inverse computed in eval mode miss
the forward computed in training mode. Their last layer starts at zero, so a fresh coupling is
the identity.

On GPUs, cuDNN's TF32 convolutions (PyTorch's default for convolutions) round the
conditioners' inputs to 10 mantissa bits, so a tiny reconstruction error can flip a rounding and
shift a scale: a float32 round trip through a depth-4 flow measured 5e-6 relative error on an
H100 with TF32, 3e-7 without. Set `torch.backends.cudnn.allow_tf32 = False` where exactness
matters more than speed.

When the network serves several roles (one `g` for `g_x` and `g_y`), the role enters as a
one-hot code: constant planes appended to an image, features appended to a vector.

`precision="bfloat16"` runs a U-Net conditioner's convolutions in bfloat16 (autocast, channels-last
activations) and hands its output back in float32. The coupling's affine map stays in the input's
dtype, and forward and inverse feed the conditioner the same bits (`y_cond == x_cond`), so the
inverse is still exact to float32 round-off: bfloat16 changes which function `g` is, not whether
it inverts. Convolutions are three quarters of a training step on CPU, and bfloat16 ones run about
three times faster on CPUs with AMX or AVX512-BF16 (and on GPUs); elsewhere they can be slower.
float64 inputs are never autocast, so float64 checks see the float64 function.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Role, role_index

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")


def _one_hot(role: Role, batch: int, num_roles: int, like: Tensor) -> Tensor:
    """`[B, num_roles]` one-hot role codes in the dtype and device of `like`."""
    index = role_index(role, batch, num_roles, like.device)
    return F.one_hot(index, num_roles).to(like.dtype)


class UNetConditioner(nn.Module):
    """A small two-level U-Net: `[B, in_ch, H, W] -> [B, out_ch, H, W]`, any H and W.

    conv -> stride-2 conv (down) -> conv (mid) -> upsample to the skip's size -> concat skip ->
    conv -> zero-initialised conv. Upsampling to the skip's exact size makes odd H or W work.

    Args:
        in_ch: channels of the conditioning half.
        out_ch: channels emitted (2x the transformed half: log-scale and shift).
        hidden: channels of the first level (the second level has 2 * hidden).
        num_roles: roles told apart by one-hot planes appended to the input; 1 adds none.
        precision: "float32", or "bfloat16" to run the convolutions of float32 inputs in
            bfloat16 (see the module docstring); the output is float32 either way.

    Example:
        >>> net = UNetConditioner(2, 4, hidden=16, num_roles=2)
        >>> net(torch.randn(3, 2, 7, 9), role=1).shape
        torch.Size([3, 4, 7, 9])
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, num_roles: int = 1, precision: Precision = "float32"):
        super().__init__()
        if min(in_ch, out_ch, hidden, num_roles) < 1:
            raise ValueError(f"UNetConditioner sizes must be >= 1, got in_ch={in_ch}, out_ch={out_ch}, "
                             f"hidden={hidden}, num_roles={num_roles}")
        if precision not in PRECISIONS:
            raise ValueError(f"UNetConditioner precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.in_ch, self.out_ch, self.hidden, self.num_roles = in_ch, out_ch, hidden, num_roles
        self.precision = precision
        role_ch = num_roles if num_roles > 1 else 0
        self.enc = nn.Conv2d(in_ch + role_ch, hidden, 3, padding=1)
        self.down = nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1)
        self.dec = nn.Conv2d(3 * hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, out_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, role: Role = None) -> Tensor:
        if self.num_roles > 1:
            planes = _one_hot(role, x.shape[0], self.num_roles, x)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        if self.precision == "float32" or x.dtype != torch.float32:
            return self._net(x)
        # oneDNN's bfloat16 kernels want channels-last; autocast leaves the output in bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self._net(x.contiguous(memory_format=torch.channels_last))
        return out.float().contiguous()

    def _net(self, x: Tensor) -> Tensor:
        skip = F.silu(self.enc(x))
        h = F.silu(self.mid(F.silu(self.down(skip))))
        h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
        h = F.silu(self.dec(torch.cat([h, skip], dim=1)))
        return self.out(h)

    def extra_repr(self) -> str:
        return (f"in_ch={self.in_ch}, out_ch={self.out_ch}, hidden={self.hidden}, num_roles={self.num_roles}, "
                f"precision={self.precision}")


class MLPConditioner(nn.Module):
    """A two-hidden-layer MLP: `[B, in_dim] -> [B, out_dim]`.

    Args:
        in_dim: features of the conditioning half.
        out_dim: features emitted (2x the transformed half: log-scale and shift).
        hidden: hidden units.
        num_roles: roles told apart by a one-hot code appended to the input; 1 adds none.

    Example:
        >>> net = MLPConditioner(3, 6, hidden=32, num_roles=2)
        >>> net(torch.randn(5, 3), role=0).shape
        torch.Size([5, 6])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, num_roles: int = 1):
        super().__init__()
        if min(in_dim, out_dim, hidden, num_roles) < 1:
            raise ValueError(f"MLPConditioner sizes must be >= 1, got in_dim={in_dim}, out_dim={out_dim}, "
                             f"hidden={hidden}, num_roles={num_roles}")
        self.in_dim, self.out_dim, self.hidden, self.num_roles = in_dim, out_dim, hidden, num_roles
        role_dim = num_roles if num_roles > 1 else 0
        self.fc1 = nn.Linear(in_dim + role_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, role: Role = None) -> Tensor:
        if self.num_roles > 1:
            x = torch.cat([x, _one_hot(role, x.shape[0], self.num_roles, x)], dim=1)
        return self.out(F.silu(self.fc2(F.silu(self.fc1(x)))))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden={self.hidden}, num_roles={self.num_roles}"
