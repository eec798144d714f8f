"""`StyleModel`: one shared invertible network, one linear operator per style.

A style s is the Linearizer

    f_s(x) = g_y^-1(A_s g_x(x))

where `g_x = g(., role 1)` encodes content and `g_y = g(., role 0)` decodes styled images
(one network, two roles: method.md §4), and `A_s` is a depthwise `k x k` convolution on the
image-shaped latent, one kernel per latent channel (`C k^2` numbers per style: 48 for RGB with
k = 4). All the capacity that makes a style nonlinear lives in the shared `g`; a style itself is
a handful of numbers, and because every style maps through the same pair of networks, styles
add, scale and compose as matrices (`linearizer.style.algebra`).

Example:
    >>> cfg = ModelConfig(kind="style", image_shape=(3, 32, 32),
    ...                   operator=OperatorConfig(styles=["stylize", "grade"], kernel_size=4))
    >>> model = StyleModel(cfg)
    >>> model.initialize(content, styled)          # ActNorm init of both roles
    >>> f = model.linearizer("grade")              # a Linearizer: f(x), f.pinv(), f.svd(k) ...
    >>> y = model(content, torch.tensor([0, 1]))   # row i in style i
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from ..flows import build_maps
from ..linearizer import Linearizer
from ..operators.base import LinearOperator
from ..operators.depthwise import DepthwiseConv

#: style names become module keys and CLI arguments: keep them plain.
STYLE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_styles(styles: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate the style names of a config (non-empty, unique, `[A-Za-z0-9_-]+`)."""
    if not styles:
        raise ConfigError("operator.styles must name at least one style for a style model, got []")
    bad = [s for s in styles if not isinstance(s, str) or not STYLE_NAME.match(s)]
    if bad:
        raise ConfigError(f"operator.styles: names must match [A-Za-z0-9_-]+, got {bad}")
    if len(set(styles)) != len(styles):
        raise ConfigError(f"operator.styles has duplicates: {list(styles)}")
    return tuple(styles)


class StyleModel(nn.Module):
    """Shared role-conditioned flow `g` + one `DepthwiseConv` per style.

    Args:
        cfg: `image_shape` (C, H, W), `flow` (the shared network), `operator.styles` (one
            operator each, in index order) and `operator.kernel_size`.

    Attributes:
        g_x, g_y: the content (role 1) and styled (role 0) maps of one network.
        operators: `nn.ModuleDict` style name -> `DepthwiseConv` (identity at initialisation).
        styles: the style names; `style` indices in batches refer to this order.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.chw()
        self.d = math.prod(self.image_shape)
        self.styles = check_styles(cfg.operator.styles)
        self.g_x, self.g_y = build_maps(self.image_shape, cfg.flow)
        k = cfg.operator.kernel_size
        self.operators = nn.ModuleDict({s: DepthwiseConv(self.image_shape, kernel_size=k) for s in self.styles})

    # ----- styles by name -----

    def style_index(self, name: str) -> int:
        """The index of style `name` (the `style` value of its training pairs)."""
        if name not in self.styles:
            raise ValueError(f"unknown style {name!r}; this model knows: {', '.join(self.styles)}")
        return self.styles.index(name)

    def operator(self, name: str) -> LinearOperator:
        """`A_s`, the operator of style `name`."""
        return self.operators[self.styles[self.style_index(name)]]

    def linearizer(self, name: str) -> Linearizer:
        """`f_s = g_y^-1 A_s g_x` as a `Linearizer` (shares this model's weights)."""
        return self.linearizer_of(self.operator(name))

    def linearizer_of(self, A: LinearOperator) -> Linearizer:
        """The Linearizer `g_y^-1 A g_x` of any operator on the latent (an interpolated or composed style)."""
        return Linearizer(self.g_x, A, self.g_y, self.image_shape)

    # ----- codes -----

    def flat(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], self.d)

    def encode_content(self, x: Tensor) -> Tensor:
        """`g_x(x)` as flat rows `[B, d]`."""
        return self.flat(self.g_x(x))

    def encode_styled(self, y: Tensor) -> Tensor:
        """`g_y(y)` as flat rows `[B, d]`."""
        return self.flat(self.g_y(y))

    def decode_styled(self, z: Tensor) -> Tensor:
        """`g_y^-1(z)` for flat rows `[B, d]`: images `[B, C, H, W]` (not clamped)."""
        return self.g_y.inverse(z.reshape(z.shape[0], *self.image_shape))

    def apply_styles(self, z: Tensor, style: Tensor) -> Tensor:
        """`A_{style[i]} z[i]` for a batch of flat codes with one style index per row."""
        if style.shape != (z.shape[0],):
            raise ValueError(f"style must be a [B]={z.shape[0]} tensor of indices, got shape {tuple(style.shape)}")
        out = torch.empty_like(z)
        for s in style.unique().tolist():
            if not 0 <= s < len(self.styles):
                raise ValueError(f"style index {s} out of range: this model has {len(self.styles)} styles "
                                 f"({', '.join(self.styles)})")
            rows = style == s
            out[rows] = self.operators[self.styles[s]].apply(z[rows])
        return out

    def forward(self, x: Tensor, style: Tensor | str) -> Tensor:
        """`f_{style[i]}(x[i])`: content images `[B, C, H, W]` in their styles (a name applies one to all)."""
        if isinstance(style, str):
            style = torch.full((x.shape[0],), self.style_index(style), dtype=torch.long, device=x.device)
        return self.decode_styled(self.apply_styles(self.encode_content(x), style.to(x.device)))

    @torch.no_grad()
    def initialize(self, content: Tensor, styled: Tensor) -> None:
        """Data-dependent ActNorm init of both roles: `g_x` on content, `g_y` on styled images.

        Training does this on its first batch; call it before using an untrained model. Roles
        already initialised are left as they are.
        """
        was_training = self.training
        self.train()
        self.g_x(content)
        self.g_y(styled)
        self.train(was_training)

    def same_maps(self) -> bool:
        """True when `g_x` and `g_y` are one map (then every style is an endomorphism of one space)."""
        return self.g_x.same_map(self.g_y)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, styles={list(self.styles)}"
