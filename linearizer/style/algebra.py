"""Style algebra: interpolate, weaken and compose styles by acting on their operators.

Every style of a `StyleModel` is `f_s = g_y^-1 A_s g_x` with the same `g_x`, `g_y`, so
operations on the matrices `A_s` are operations on styles:

    interpolation   A = (1 - a) A_s1 + a A_s2        exactly f_s1 at a = 0 and f_s2 at a = 1
    composition     A = A_s2 A_s1                    "s1, then s2", one Linearizer
    strength        (1 - a) (.) x (+) a (.) f_s(x)   in the space induced by g_y (see below)

Strength. With one map `g = g_x = g_y` the identity style is `A = I` and strength is the operator
`(1 - a) I + a A_s`. With the reference's two roles, `g_y^-1 I g_x` is not the identity (it is
whatever the two roles disagree by), and no linear `A` gives the identity. What stays exact is
the straight line from the content to its styled image in the output space Y:

    s_a(x) = g_y^-1((1 - a) g_y(x) + a A_s g_x(x))

which is the identity at a = 0 (to the round-off of `g_y^-1 g_y`), `f_s` at a = 1, and equals
`g^-1(((1 - a) I + a A_s) g(x))` when the two maps are one. `with_strength` returns that map.

Composition. `A_s2 A_s1` is one Linearizer `g_y^-1 A_s2 A_s1 g_x`. Applying the two styles in
sequence is `g_y^-1 A_s2 (g_x g_y^-1) A_s1 g_x`: the two agree exactly only when
`g_x g_y^-1 = I`, i.e. when the two roles are one map. `composition_gap` measures by how much
they differ on given images; `apply_in_sequence` gives the sequential form when that is wanted.

Example:
    >>> half = interpolate_styles(model, "stylize", "grade", 0.5)     # a Linearizer
    >>> y = half(x)
    >>> both = compose_styles(model, ["grade", "stylize"])             # grade first, then stylize
    >>> weak = with_strength(model, "pencil", 0.3)(x)
    >>> gap = composition_gap(model, ["grade", "stylize"], x)          # PSNR and latent error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..linearizer import Linearizer
from ..metrics.image import psnr
from ..operators.base import LinearOperator
from ..operators.depthwise import DepthwiseConv
from ..operators.identity_lowrank import IdentityPlusLowRank
from .model import StyleModel


def _check_alpha(alpha: float, what: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != alpha or abs(alpha) == float("inf"):
        raise ValueError(f"{what} must be a finite real number, got {alpha!r}")
    return float(alpha)


# --------------------------------------------------------------------------------------------
# On operators
# --------------------------------------------------------------------------------------------


def identity_like(A: LinearOperator) -> LinearOperator:
    """The identity of `A`'s (square) shape, structured like `A` where possible."""
    m, n = A.shape
    if m != n:
        raise ValueError(f"the identity needs a square operator, got shape {tuple(A.shape)}")
    ref = A._reference_tensor()
    if isinstance(A, DepthwiseConv):
        eye = DepthwiseConv(A.image_shape, A.kernel_size, trainable=False)
        return eye.to(dtype=ref.dtype, device=ref.device)
    return IdentityPlusLowRank.identity(n, dtype=ref.dtype, device=ref.device)


def interpolate(A1: LinearOperator, A2: LinearOperator, alpha: float) -> LinearOperator:
    """`(1 - alpha) A1 + alpha A2` (alpha outside [0, 1] extrapolates)."""
    alpha = _check_alpha(alpha)
    return (1.0 - alpha) * A1 + alpha * A2


def strength(A: LinearOperator, alpha: float) -> LinearOperator:
    """`(1 - alpha) I + alpha A`: the operator form of style strength (exact when g_x = g_y)."""
    alpha = _check_alpha(alpha, "strength")
    return (1.0 - alpha) * identity_like(A) + alpha * A


def compose(operators: Sequence[LinearOperator]) -> LinearOperator:
    """`A_n ... A_2 A_1` for `operators = [A_1, ..., A_n]`: the first is applied first."""
    if not operators:
        raise ValueError("compose needs at least one operator, got none")
    out = operators[0]
    for A in operators[1:]:
        out = A @ out
    return out


# --------------------------------------------------------------------------------------------
# On a style model
# --------------------------------------------------------------------------------------------


def interpolate_styles(model: StyleModel, style_a: str, style_b: str, alpha: float) -> Linearizer:
    """The style `g_y^-1((1 - alpha) A_a + alpha A_b) g_x`."""
    return model.linearizer_of(interpolate(model.operator(style_a), model.operator(style_b), alpha))


def compose_styles(model: StyleModel, styles: Sequence[str]) -> Linearizer:
    """The style `g_y^-1 A_n ... A_1 g_x` for `styles = [s_1, ..., s_n]` (s_1 applied first)."""
    if isinstance(styles, str) or not styles:
        raise ValueError(f"styles must be a non-empty list of style names, got {styles!r}")
    return model.linearizer_of(compose([model.operator(s) for s in styles]))


def apply_in_sequence(model: StyleModel, styles: Sequence[str], x: Tensor) -> Tensor:
    """`f_sn(... f_s1(x))`: each style applied to the previous output, through the images."""
    if isinstance(styles, str) or not styles:
        raise ValueError(f"styles must be a non-empty list of style names, got {styles!r}")
    for s in styles:
        x = model(x, s)
    return x


class StrengthMap(nn.Module):
    """`x -> g_y^-1((1 - alpha) g_y(x) + alpha A g_x(x))`: the induced-space line in Y from the
    content to its styled image (see the module docstring).

    Args:
        model: the style model (its `g_x`, `g_y`).
        A: the style operator.
        alpha: the strength; 0 gives the identity, 1 the style, other values extrapolate.
    """

    def __init__(self, model: StyleModel, A: LinearOperator, alpha: float):
        super().__init__()
        self.f = model.linearizer_of(A)
        self.alpha = _check_alpha(alpha, "strength")

    def forward(self, x: Tensor) -> Tensor:
        f = self.f
        z = (1.0 - self.alpha) * f.Y.encode(x) + self.alpha * f.A.apply(f.X.encode(x))
        return f.Y.decode(z)


def with_strength(model: StyleModel, style: str, alpha: float) -> nn.Module:
    """Style `style` at strength `alpha`: the identity at 0, the style at 1.

    Returns:
        A `Linearizer` with operator `(1 - alpha) I + alpha A_s` when `g_x` and `g_y` are one map,
        else a `StrengthMap` (the same map written through both encoders).
    """
    A = model.operator(style)
    if model.same_maps():
        return model.linearizer_of(strength(A, alpha))
    return StrengthMap(model, A, alpha)


@dataclass
class CompositionGap:
    """How far one composed operator is from applying two or more styles in sequence.

    Attributes:
        psnr_db: mean PSNR between `g_y^-1(A_n...A_1 g_x(x))` and `f_sn(...f_s1(x))`.
        latent_rel: `||c - q|| / ||q||` over the batch, with c the composed and q the sequential code.
        roundtrip_rel: `||g_x(g_y^-1(w)) - w|| / ||w||` for the intermediate codes w: what the two
            roles disagree by, the cause of the gap (0 when g_x = g_y).
    """

    psnr_db: float
    latent_rel: float
    roundtrip_rel: float


@torch.no_grad()
def composition_gap(model: StyleModel, styles: Sequence[str], x: Tensor) -> CompositionGap:
    """Compare the composed operator with sequential application on images `x` (see CompositionGap)."""
    if isinstance(styles, str) or len(styles) < 2:
        raise ValueError(f"composition_gap needs at least two style names, got {styles!r}")
    ops = [model.operator(s) for s in styles]
    z = model.encode_content(x)
    composed = compose(ops).apply(z)
    sequential, w = ops[0].apply(z), None
    drift, norm = 0.0, 0.0
    for A in ops[1:]:
        w = sequential
        back = model.encode_content(model.decode_styled(w))  # g_x g_y^-1: the identity only if the roles agree
        drift += float((back - w).square().sum())
        norm += float(w.square().sum())
        sequential = A.apply(back)
    image_c, image_s = model.decode_styled(composed), model.decode_styled(sequential)
    return CompositionGap(
        psnr_db=float(psnr(image_c.clamp(0, 1), image_s.clamp(0, 1), cap_db=200.0)),
        latent_rel=float((composed - sequential).norm() / sequential.norm().clamp_min(1e-30)),
        roundtrip_rel=(drift / max(norm, 1e-30)) ** 0.5,
    )


def step_smoothness(strip: Tensor, reduction: str = "max") -> float:
    """Largest step-to-step change along a strip, relative to its endpoint difference.

    Args:
        strip: `[K+1, B, C, H, W]` images along a path (K >= 1 steps), e.g. alpha = 0, 1/K, ..., 1.
        reduction: over the B images, "max" (the worst image) or "median".

    Returns:
        `max_k ||y_{k+1} - y_k|| / ||y_K - y_0||` per image (norms per image), reduced over images;
        `1/K` for a path that changes uniformly, 1 for one that jumps all at once.
    """
    if strip.dim() != 5 or strip.shape[0] < 2:
        raise ValueError(f"strip must be [K+1 >= 2, B, C, H, W], got shape {tuple(strip.shape)}")
    if reduction not in ("max", "median"):
        raise ValueError(f"reduction must be 'max' or 'median', got {reduction!r}")
    steps = (strip[1:] - strip[:-1]).flatten(2).norm(dim=2)  # [K, B]
    span = (strip[-1] - strip[0]).flatten(1).norm(dim=1).clamp_min(1e-30)  # [B]
    worst_step = (steps / span).max(dim=0).values  # [B]
    return float(worst_step.max() if reduction == "max" else worst_step.median())
