"""A standard flow-matching model: the multi-step baseline the one-step Linearizer is measured against.

A U-Net `v(x, t)` learns the velocity of the straight path from noise to data (conditional flow
matching with the optimal-transport path):

    x_t = (1 - t) x0 + t x1,   target  x1 - x0,   L = mse(v(x_t, t), x1 - x0)

with `x0 ~ N(0, I)`, `t ~ U[0, 1]` per sample, and data `x1` mapped from [0, 1] to [-1, 1] (the
noise's scale). Samples integrate `dx/dt = v(x, t)` from t = 0 to 1 with T Euler or classical RK4
steps: T (Euler) or 4T (RK4) network evaluations, against the Linearizer's two `g` passes.

Config mapping (`ModelConfig` fields; the baseline shares the Linearizer's config tree so that
both are built, trained and budgeted alike):

| field | meaning here |
|---|---|
| `image_shape` | (C, H, W) of the images |
| `flow.hidden` | base width c of the U-Net: level i has `c * WIDTH_MULTS[i]` channels |
| `flow.depth` | number of resolution levels L (L - 1 stride-2 downsamplings); at most `len(WIDTH_MULTS)` |
| `operator.time_embed_dim` | width of the sinusoidal embedding of t (an MLP lifts it to `4 c`) |
| `sampler.method`, `sampler.steps` | the default sampler; `sampler.t_end` None means t = 1 |

With the defaults (1x32x32, c = 32, L = 4) the U-Net has about as many parameters as the default
one-step Linearizer (`tests/test_baseline.py` checks the two counts agree within 20%).

Example:
    >>> model = FlowMatchingBaseline(ModelConfig(kind="fm_baseline"))
    >>> loss, terms = flow_matching_loss(model, images, torch.Generator().manual_seed(0))
    >>> x = model.sample(torch.randn(16, 1, 32, 32), method="euler", steps=100)   # in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from ..kinds import ImageKind, KindSpec, Mode, Param, register_kind
from ..operators.time_lowrank import sinusoidal_embedding

METHODS = ("euler", "rk4")
#: channel multiplier of each resolution level (level i has `hidden * WIDTH_MULTS[i]` channels).
WIDTH_MULTS = (1, 2, 4, 4, 8, 8)
#: GroupNorm uses up to this many groups (the largest divisor of the channel count not above it).
MAX_GROUPS = 8

Velocity = Callable[[Tensor, Tensor], Tensor]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus a per-channel shift from the time embedding, twice, with a
    residual connection (a 1x1 conv when the width changes).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        emb_dim: width of the time embedding.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # a fresh block is the identity on its residual path: deep stacks start well-conditioned
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class VelocityUNet(nn.Module):
    """The velocity field `v(x, t)`: `[B, C, H, W]` and times `[B]` -> `[B, C, H, W]`.

    Levels 0..L-1 each hold one ResBlock on the way down and one on the way up (fed the level's
    skip); a stride-2 conv halves the resolution between levels and nearest upsampling + conv
    restores it (to the skip's exact size, so odd sizes work); two ResBlocks sit in the middle.

    Args:
        image_shape: (C, H, W).
        hidden: base width c.
        levels: number of resolution levels L, 1 <= L <= len(WIDTH_MULTS).
        time_embed_dim: width of the sinusoidal embedding of t.

    Example:
        >>> net = VelocityUNet((1, 32, 32), hidden=32, levels=4, time_embed_dim=64)
        >>> net(torch.randn(8, 1, 32, 32), torch.rand(8)).shape
        torch.Size([8, 1, 32, 32])
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, levels: int, time_embed_dim: int):
        super().__init__()
        if not 1 <= levels <= len(WIDTH_MULTS):
            raise ConfigError(f"flow.depth sets the U-Net's resolution levels and must lie in "
                              f"[1, {len(WIDTH_MULTS)}], got {levels}")
        C = image_shape[0]
        widths = [hidden * m for m in WIDTH_MULTS[:levels]]
        self.image_shape, self.widths, self.time_embed_dim = tuple(image_shape), widths, time_embed_dim
        emb_dim = 4 * hidden
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(C, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(prev, w, emb_dim))
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            prev = w
        self.mid = nn.ModuleList([ResBlock(prev, prev, emb_dim), ResBlock(prev, prev, emb_dim)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up.append(ResBlock(prev + widths[i], widths[i], emb_dim))
            if i > 0:
                self.upsample.append(nn.Conv2d(widths[i], widths[i], 3, padding=1))
            prev = widths[i]
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], C, 3, padding=1)
        # zero output: the untrained field is v = 0, a neutral start for the regression
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Args:
            x: `[B, C, H, W]` points of the path.
            t: `[B]` times in [0, 1].

        Returns:
            The velocity `[B, C, H, W]`.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.image_shape))}], got {tuple(x.shape)}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be a [B] = [{x.shape[0]}] tensor of times, got shape {tuple(t.shape)}")
        emb = self.time_mlp(sinusoidal_embedding(t.to(x.dtype), self.time_embed_dim))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = F.interpolate(h, size=skips[-1].shape[2:], mode="nearest")
                h = self.upsample[j](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def integrate_velocity(v: Velocity, x0: Tensor, method: str = "rk4", steps: int = 100,
                       t_end: float = 1.0) -> Tensor:
    """Integrate `dx/dt = v(x, t)` from t = 0 to `t_end` with `steps` explicit steps.

    The grid is `t_k = k * t_end / T`, k = 0..T, and exactly T steps are taken (Euler: T
    evaluations of v; classical RK4: 4T). The time is shared by the batch and passed to `v` as a
    `[B]` tensor.

    Args:
        v: the velocity field, `v(x [B, ...], t [B]) -> [B, ...]`.
        x0: the start points `[B, ...]`.
        method: "euler" or "rk4".
        steps: number of steps T >= 1.
        t_end: end time in (0, 1].

    Returns:
        The end points, shaped like `x0`.

    Example:
        >>> integrate_velocity(lambda x, t: -x, torch.ones(1, 3), "euler", steps=10)   # (1 - 0.1)^10
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 < float(t_end) <= 1.0:
        raise ValueError(f"t_end must lie in (0, 1], got {t_end}")
    h = float(t_end) / steps

    def at(t: float) -> Tensor:
        return torch.full((x0.shape[0],), t, dtype=x0.dtype, device=x0.device)

    x = x0
    for k in range(steps):
        t = k * float(t_end) / steps
        if method == "euler":
            x = x + h * v(x, at(t))
        else:
            k1 = v(x, at(t))
            k2 = v(x + (h / 2) * k1, at(t + h / 2))
            k3 = v(x + (h / 2) * k2, at(t + h / 2))
            k4 = v(x + h * k3, at(t + h))
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


class FlowMatchingBaseline(nn.Module):
    """Flow matching with a velocity U-Net (see the module docstring for the config mapping).

    Args:
        cfg: the model config; `cfg.kind` is not checked, so any `ModelConfig` builds.

    Attributes:
        v: the `VelocityUNet`.

    Example:
        >>> model = FlowMatchingBaseline(ModelConfig(kind="fm_baseline"))
        >>> x = model.sample(torch.randn(4, 1, 32, 32), "rk4", steps=10)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.chw()
        self.v = VelocityUNet(self.image_shape, cfg.flow.hidden, cfg.flow.depth, cfg.operator.time_embed_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The velocity `v(x, t)` at path points `x [B, C, H, W]` (data scale [-1, 1]), times `t [B]`."""
        return self.v(x, t)

    def sample(self, x0: Tensor, method: str | None = None, steps: int | None = None,
               t_end: float | None = None) -> Tensor:
        """Images from noise by integrating the learned velocity from t = 0 to `t_end`.

        Args:
            x0: noise `[B, C, H, W]`.
            method, steps: default to `cfg.sampler`.
            t_end: defaults to `cfg.sampler.t_end`, and to 1 when that is None (the velocity
                has no singularity at t = 1, unlike the Linearizer's latent ODE).

        Returns:
            Images `[B, C, H, W]` on the [0, 1] scale (not clamped).
        """
        if x0.dim() != 4 or tuple(x0.shape[1:]) != self.image_shape:
            raise ValueError(f"x0 must be noise [B, {', '.join(map(str, self.image_shape))}], got {tuple(x0.shape)}")
        s = self.cfg.sampler
        t_end = (s.t_end if s.t_end is not None else 1.0) if t_end is None else t_end
        x1 = integrate_velocity(self.v, x0, s.method if method is None else method,
                                s.steps if steps is None else steps, t_end)
        return (x1 + 1) / 2


def flow_matching_loss(model: FlowMatchingBaseline, x1: Tensor, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, dict[str, float]]:
    """The conditional flow-matching loss of one batch on straight paths.

    Args:
        model: the baseline.
        x1: data `[B, C, H, W]` in [0, 1] (mapped to [-1, 1] here).
        generator: source of `x0` and `t` (None: torch's global generator).

    Returns:
        `(loss, {"fm": ..., "loss": ...})`: the mean squared velocity error.
    """
    if x1.dim() != 4 or tuple(x1.shape[1:]) != model.image_shape:
        raise ValueError(f"x1 must be images [B, {', '.join(map(str, model.image_shape))}], got {tuple(x1.shape)}")
    device = generator.device if generator is not None else x1.device
    x1 = 2 * x1 - 1
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=device).to(x1.device)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype, device=device).to(x1.device)
    tb = t[:, None, None, None]
    xt = (1 - tb) * x0 + tb * x1
    loss = F.mse_loss(model(xt, t), x1 - x0)
    value = float(loss.detach())
    return loss, {"fm": value, "loss": value}


SPEC = KindSpec(
    name="fm_baseline",
    modes=(Mode("sample", "noise", (
        Param("steps", int, None, "integration steps (None: cfg.sampler.steps)", low=1),
        Param("method", str, None, "integrator (None: cfg.sampler.method)", choices=METHODS),
        Param("t_end", float, None, "end time (None: cfg.sampler.t_end, else 1)", low=0.0, high=1.0,
              low_open=True),
    ), doc="images by integrating the learned velocity"),),
    batch_keys=("image",),
    terms=("fm",),
)


class FlowMatchingKind(ImageKind):
    """Hooks of the flow-matching baseline (`linearizer.kinds`).

    predict: mode "sample" only, inputs noise `[N, C, H, W]`, optional params `steps`, `method`,
    `t_end` (default `cfg.sampler`); outputs images clamped to [0, 1].
    """

    spec = SPEC

    def build(self, cfg: ModelConfig) -> FlowMatchingBaseline:
        return FlowMatchingBaseline(cfg)

    def loss(self, model: FlowMatchingBaseline, batch: dict[str, Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        return flow_matching_loss(model, batch["image"], generator)

    @torch.no_grad()
    def samples(self, model: FlowMatchingBaseline, n: int, generator: torch.Generator | None = None) -> Tensor:
        ref = next(model.parameters())
        device = generator.device if generator is not None else ref.device
        x0 = torch.randn((n, *model.image_shape), generator=generator, dtype=ref.dtype, device=device)
        return model.sample(x0.to(ref.device)).clamp(0, 1)

    def finalize(self, model: FlowMatchingBaseline) -> None:
        """Nothing to precompute: every sample integrates the network anew."""

    def predict_sample(self, model: FlowMatchingBaseline, x0: Tensor, steps: int | None, method: str | None,
                       t_end: float | None) -> Tensor:
        return model.sample(x0, method, steps, t_end).clamp(0, 1)


KIND = register_kind(FlowMatchingKind())
