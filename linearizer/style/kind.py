"""The "style" model kind: its training objective, previews and serving modes.

Objective, per batch of pairs `(x, y, s)` = (content, styled, style index), with
`z_x = g_x(x)`, `z_y = g_y(y)`, `z_hat = A_s z_x`, `n ~ N(0, I)` and `cfg.loss` weights:

    pred        * perceptual(g_y^-1(z_hat), y)     the style itself, in pixels (MSE, or MSE + 1 - SSIM)
    latent      * mse(z_hat, z_y)                  the same in latent space, as the reference
    content_rec * mse(x, g_x^-1(z_x + s n))         content codes decode robustly: g_x^-1 stays
    styled_rec  * mse(y, g_y^-1(z_y + s n))         ... and g_y^-1 stays well-conditioned near the data
    identity    * mse(x, g_y^-1(z_x))               the identity style: A = I maps content to itself

The first term is what the model is for. The latent term supervises every latent pixel directly
but can be lowered by shrinking all codes together; the two noisy reconstruction terms forbid
that (a tiny latent makes `s n` destroy the image), which is why the reference pairs them. The
last term ties the two roles together on content images, so `A = I` is the identity style and
composed operators stay close to styles applied in sequence (docs/style.md measures each term).

Example:
    >>> kind = get_kind("style")
    >>> model = kind.build(cfg)                                  # cfg.operator.styles = [...]
    >>> fit(kind, model, TensorBatches(pairs.tensors(), 32), TrainConfig(steps=2000))
    >>> y = kind.predict(model, x, {"mode": "style", "style": "grade", "strength": 0.5})
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, LossConfig, ModelConfig, resolve_loss_weights
from ..flows import ActNorm
from ..kinds import ImageKind, KindSpec, Mode, Param, register_kind
from ..perceptual import get_perceptual
from .algebra import apply_in_sequence, compose_styles, interpolate_styles, with_strength
from .model import StyleModel

#: how "compose" combines styles: one operator `A_n...A_1`, or each style applied to the previous image.
COMPOSE_HOW = ("operator", "sequential")
SPEC = KindSpec(
    name="style",
    modes=(
        Mode("style", "images", (
            Param("style", str, doc="the style's name", example="grade"),
            Param("strength", float, 1.0, "0 returns the content, 1 the style (algebra.with_strength)"),
        ), doc="one style, at a strength"),
        Mode("interpolate", "images", (
            Param("style_a", str, doc="the style at alpha = 0", example="grade"),
            Param("style_b", str, doc="the style at alpha = 1", example="pencil"),
            Param("alpha", float, 0.5, "the operator (1 - alpha) A_a + alpha A_b"),
        ), doc="between two styles, by operator interpolation"),
        Mode("compose", "images", (
            Param("styles", list, doc="style names, the first applied first", example=["grade", "pencil"]),
            Param("how", str, "operator", "one operator A_n...A_1, or each style applied in sequence",
                  choices=COMPOSE_HOW),
        ), doc="several styles in sequence"),
    ),
    batch_keys=("image", "target", "style"),
    loss_weights={"pred": 1.0, "latent": 1.0, "content_rec": 1.0, "styled_rec": 1.0, "identity": 1.0},
    legacy_loss_weights={"w_pred": "pred", "w_latent": "latent", "w_data": "content_rec", "w_noise": "styled_rec",
                         "w_prior": "identity"},
    evaluation="style",
)

def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _needs_init(model: nn.Module) -> bool:
    return any(isinstance(m, ActNorm) and not bool(m.initialized.all()) for m in model.modules())


def _as_style_model(model: nn.Module) -> StyleModel:
    if not isinstance(model, StyleModel):
        raise ValueError(f"the 'style' kind expects a StyleModel, got {type(model).__name__}")
    return model


def style_loss(model: StyleModel, batch: dict[str, Tensor], cfg: LossConfig,
               generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The weighted objective of the module docstring (terms with weight 0 are not computed).

    Args:
        model: the style model.
        batch: `"image"` content `[B, C, H, W]`, `"target"` styled `[B, C, H, W]`, `"style"` `[B]` long.
        cfg: term weights, the latent noise scale `s` and the perceptual loss.
        generator: draws the latent noise.

    Returns:
        (loss, terms): the scalar loss and each unweighted term as a float.
    """
    x, y, style = batch["image"], batch["target"], batch["style"]
    if x.shape != y.shape:
        raise ValueError(f"batch 'image' and 'target' must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if _needs_init(model):
        model.initialize(x, y)
    z_x = model.encode_content(x)
    z_hat = model.apply_styles(z_x, style.long())
    weights = resolve_loss_weights(SPEC.name, SPEC.loss_weights, cfg.weights)
    terms: dict[str, Tensor] = {}
    if weights["pred"] > 0:
        terms["pred"] = get_perceptual(cfg.perceptual)(model.decode_styled(z_hat), y)
    z_y = model.encode_styled(y) if (weights["latent"] > 0 or weights["styled_rec"] > 0) else None
    if weights["latent"] > 0:
        terms["latent"] = F.mse_loss(z_hat, z_y)
    if weights["content_rec"] > 0:
        terms["content_rec"] = F.mse_loss(model.g_x.inverse((z_x + cfg.s * _noise_like(z_x, generator)).view_as(x)), x)
    if weights["styled_rec"] > 0:
        terms["styled_rec"] = F.mse_loss(model.decode_styled(z_y + cfg.s * _noise_like(z_y, generator)), y)
    if weights["identity"] > 0:
        terms["identity"] = F.mse_loss(model.decode_styled(z_x), x)
    if not terms:
        raise ConfigError(f"loss.weights: every weight of the style objective is 0 ({', '.join(weights)})")
    loss = sum(weights[k] * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def check_images(model: StyleModel, x: Any, what: str = "inputs") -> Tensor:
    """Validate a batch of images for `model` and bring it to the model's dtype and device.

    Raises:
        ValueError: not a tensor, not `[B, C, H, W]` of the model's image shape, not floating
            point, not finite, or outside [0, 1].
    """
    return SPEC.mode("style").check_inputs(x, model.image_shape, like=next(model.parameters()))


class StyleKind(ImageKind):
    """The "style" kind (see `linearizer.kinds.ModelKind`); predict outputs are clamped to [0, 1]."""

    spec = SPEC

    def build(self, cfg: ModelConfig) -> StyleModel:
        return StyleModel(cfg)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        model = _as_style_model(model)
        return style_loss(model, batch, model.cfg.loss, generator)

    def initialize(self, model: StyleModel, batch: dict[str, Tensor]) -> None:
        _as_style_model(model).initialize(batch["image"], batch["target"])

    @torch.no_grad()
    def samples(self, model: nn.Module, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` smooth random colour fields, image i in style `i % len(styles)` (training previews).

        A style model has no content of its own to show, so previews use synthetic content:
        bicubic upsamplings of random 4x4 colour grids (edges and gradients, no photo needed).
        """
        model = _as_style_model(model)
        C, H, W = model.image_shape
        ref = next(model.parameters())
        coarse = torch.rand(n, C, 4, 4, generator=generator, device=generator.device if generator else "cpu")
        x = F.interpolate(coarse.to(ref), size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)
        style = torch.arange(n, device=ref.device) % len(model.styles)
        return model(x, style).clamp(0, 1)

    def finalize(self, model: nn.Module) -> None:
        """Nothing to precompute: a style is its operator."""
        _as_style_model(model).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        """Serve one request (modes and params: `SPEC`); unknown style names raise a ValueError
        that lists the model's styles."""
        return super().predict(_as_style_model(model), inputs, params)

    def predict_style(self, model: StyleModel, x: Tensor, style: str, strength: float) -> Tensor:
        f = model.linearizer(style) if strength == 1.0 else with_strength(model, style, strength)
        return f(x).clamp(0.0, 1.0)

    def predict_interpolate(self, model: StyleModel, x: Tensor, style_a: str, style_b: str, alpha: float) -> Tensor:
        return interpolate_styles(model, style_a, style_b, alpha)(x).clamp(0.0, 1.0)

    def predict_compose(self, model: StyleModel, x: Tensor, styles: list[str], how: str) -> Tensor:
        y = compose_styles(model, styles)(x) if how == "operator" else apply_in_sequence(model, styles, x)
        return y.clamp(0.0, 1.0)


KIND = register_kind(StyleKind())
#: the registered kind, under its former name.
STYLE = KIND
