"""A flow: invertible blocks in sequence, and the builders of the networks `g_x`, `g_y`.

`build_flow` assembles the paper's architecture: `depth` blocks of
ActNorm -> coupling -> coupling(swap) -> 1x1 conv, with a 2x2 squeeze before the blocks (and an
unsqueeze after them) when the channel count is odd, so a coupling has channels to split and the
latent keeps the image's shape. With `scales` > 1 each further level runs `depth` blocks on half
the channels at half the resolution (`Split`). `build_maps` binds the result to the two roles of a Linearizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from ..config import ConfigError, FlowConfig
from .actnorm import ActNorm
from .base import InvertibleMap, InvertibleModule, Role
from .conv1x1 import InvConv1x1
from .coupling import AffineCoupling
from .split import Split
from .squeeze import Squeeze, Unsqueeze


class Flow(InvertibleModule):
    """Sequential composition of invertible blocks; log-determinants add up.

    Args:
        blocks: the blocks, applied in order by `forward` and in reverse by `inverse`.
        shape: the per-sample shape `(C, H, W)` or `(d,)` the flow was built for; when given,
            inputs of any other shape raise ValueError.

    Example:
        >>> flow = Flow([ActNorm(4), InvConv1x1(4)], shape=(4, 8, 8))
        >>> z, logdet = flow(torch.randn(2, 4, 8, 8))
        >>> x = flow.inverse(z)
    """

    def __init__(self, blocks: Iterable[InvertibleModule], shape: Sequence[int] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.shape = None if shape is None else tuple(int(s) for s in shape)

    def _check(self, x: Tensor, what: str) -> None:
        if self.shape is not None and tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"Flow.{what} expects input of shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {tuple(x.shape)}")

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        self._check(x, "forward")
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_logdet = block(x, role)
            logdet = logdet + block_logdet
        return x, logdet

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        self._check(y, "inverse")
        for block in reversed(self.blocks):
            y = block.inverse(y, role)
        return y

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_blocks={len(self.blocks)}"


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) not in (1, 3) or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be (C, H, W) or (d,) with positive integers, got {shape}")
    return shape


def build_flow(shape: Sequence[int], cfg: FlowConfig, num_roles: int = 2) -> Flow:
    """The invertible network `g` for data of one shape.

    Args:
        shape: `(C, H, W)` for images (U-Net conditioners) or `(d,)` for vectors (MLP
            conditioners, whatever `cfg.conditioner` says).
        cfg: depth, conditioner width and precision, clamp, scales.
        num_roles: roles the network serves (2: one network for `g_y` = role 0 and `g_x` = role 1).

    Returns:
        A `Flow` that checks its input shape; the latent has the input's shape.

    Raises:
        ValueError: a malformed shape, H or W that the squeezes cannot halve, fewer than 2 vector
            features; ConfigError: the "mlp" conditioner asked for images, `scales` > 1 for vectors.

    Example:
        >>> flow = build_flow((1, 32, 32), FlowConfig(depth=4, hidden=32))
        >>> z, logdet = flow(torch.rand(8, 1, 32, 32), role=1)
    """
    shape = _check_shape(shape)
    if len(shape) == 1:
        channels, conditioner = shape[0], "mlp"
        if channels < 2:
            raise ValueError(f"a vector flow needs d >= 2 features to split in its couplings, got shape {shape}")
    else:
        if cfg.conditioner != "unet":
            raise ConfigError(f"flow.conditioner must be 'unet' for image shape {shape}, got {cfg.conditioner!r} "
                              f"('mlp' is for flat (d,) data)")
        channels, conditioner = shape[0], "unet"
    if cfg.scales > 1 and len(shape) == 1:
        raise ConfigError(f"flow.scales > 1 needs image data (it halves H and W), got flat shape {shape}")
    squeeze = len(shape) == 3 and channels % 2 == 1
    halvings = int(squeeze) + cfg.scales - 1
    if len(shape) == 3 and (shape[1] % 2**halvings or shape[2] % 2**halvings):
        why = ["an image with an odd channel count is squeezed 2x2 first"] if squeeze else []
        why += [f"flow.scales={cfg.scales} halves them {cfg.scales - 1} more time(s)"] if cfg.scales > 1 else []
        need = "even" if halvings == 1 else f"divisible by {2**halvings}"
        raise ValueError(f"{' and '.join(why)}, so H and W must be {need}; got shape {shape}")
    if squeeze:
        channels *= 4

    blocks: list[InvertibleModule] = [Squeeze()] if squeeze else []
    blocks += _level(channels, cfg, conditioner, num_roles, cfg.scales)
    if squeeze:
        blocks.append(Unsqueeze())
    return Flow(blocks, shape=shape)


def _level(channels: int, cfg: FlowConfig, conditioner: str, num_roles: int, scales: int) -> list[InvertibleModule]:
    """`cfg.depth` blocks on `channels`, then (while `scales` > 1) the next level on half of them."""
    blocks: list[InvertibleModule] = []
    for _ in range(cfg.depth):
        blocks += [
            ActNorm(channels, num_roles),
            AffineCoupling(channels, cfg.hidden, conditioner, swap=False, clamp=cfg.clamp, num_roles=num_roles,
                           precision=cfg.conditioner_precision),
            AffineCoupling(channels, cfg.hidden, conditioner, swap=True, clamp=cfg.clamp, num_roles=num_roles,
                           precision=cfg.conditioner_precision),
            InvConv1x1(channels),
        ]
    if scales > 1:
        kept = channels // 2  # the 1x1 conv before the split mixes what is kept and what passes
        inner = Flow([Squeeze(), *_level(4 * kept, cfg, conditioner, num_roles, scales - 1), Unsqueeze()])
        blocks.append(Split(inner, kept))
    return blocks


def build_maps(shape: Sequence[int], cfg: FlowConfig) -> tuple[InvertibleMap, InvertibleMap]:
    """The two maps of a Linearizer, `(g_x, g_y)`.

    With `cfg.shared` one network serves both: `g_x` is role 1 (data), `g_y` role 0 (noise).
    Otherwise two independent single-role networks (they keep the same role numbers; a
    single-role network ignores the flag).

    Args:
        shape: per-sample data shape, `(C, H, W)` or `(d,)`.
        cfg: the flow configuration.

    Returns:
        `(g_x, g_y)`.

    Example:
        >>> g_x, g_y = build_maps((1, 32, 32), FlowConfig())
        >>> g_x.net is g_y.net
        True
    """
    if cfg.shared:
        net = build_flow(shape, cfg, num_roles=2)
        return InvertibleMap(net, role=1), InvertibleMap(net, role=0)
    g_x = InvertibleMap(build_flow(shape, cfg, num_roles=1), role=1)
    g_y = InvertibleMap(build_flow(shape, cfg, num_roles=1), role=0)
    return g_x, g_y
