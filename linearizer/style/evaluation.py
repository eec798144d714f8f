"""The style model's evaluation, shared by the evaluation pipeline (`pipelines.evaluate.style`) and
the figures bench (`bench/style_figures.py`).

Through the kind's predict modes (`style`, `interpolate`, `compose`: what a served model does):

- per style, PSNR and SSIM of `f_s(content)` against the target on held-out pairs, beside the
  PSNR of the content itself (the identity baseline: what doing nothing scores) and the gain;
- interpolation strips `(1 - a) A_s1 + a A_s2` between consecutive styles, with the largest
  step along a strip relative to its span (1/(k-1) for a uniform path of k images);
- composition: one operator `A_s2 A_s1` next to the two styles applied in sequence, with the
  PSNR between the two (they agree exactly only when `g_x = g_y`).

Example:
    >>> pairs = make_filter_pairs(model.styles, split="test", size=32, n=64)
    >>> result = evaluate(model, pairs, examples=4, strip_steps=6)
    >>> result.metrics["psnr"], result.metrics["gain_db"], sorted(result.images)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics.image import psnr, ssim
from ..viz import make_grid
from .algebra import step_smoothness
from .data import StylePairs
from .kind import KIND
from .model import StyleModel


def quality(y: Tensor, target: Tensor) -> dict[str, float]:
    """PSNR (dB, of the pooled MSE) and mean SSIM of images `y` against `target`.

    Args:
        y: images `[N, C, H, W]` in [0, 1].
        target: the reference images, the same shape.

    Returns:
        `{"psnr", "ssim"}`.
    """
    return {"psnr": float(psnr(y, target)), "ssim": float(ssim(y, target).mean())}


@dataclass(frozen=True)
class StyleEvaluation:
    """What `evaluate` measured.

    Attributes:
        metrics: `psnr.<style>`, `ssim.<style>`, `content_psnr.<style>`, `gain_db.<style>`, their
            means `psnr`, `ssim`, the worst gain `gain_db`, and with two styles or more
            `interpolation_step` and `composition_psnr`.
        images: "styles" (per style three rows: content, output, target) and with two styles or
            more "interpolation" (a row per content image) and "composition" (content, the
            first two styles as one operator, then in sequence).
    """

    metrics: dict[str, float]
    images: dict[str, Tensor]


def _per_style(model: StyleModel, pairs: StylePairs, k: int, device: torch.device) -> tuple[dict[str, float], Tensor]:
    """The per-style scores and their means, and the "styles" grid of `k` images a row."""
    styles = tuple(model.styles)
    metrics: dict[str, float] = {}
    shown: list[Tensor] = []
    for s in styles:
        content, target = (t.to(device) for t in pairs.of_style(s))
        y = KIND.predict(model, content, {"mode": "style", "style": s})
        scored = quality(y, target)
        metrics[f"psnr.{s}"], metrics[f"ssim.{s}"] = scored["psnr"], scored["ssim"]
        metrics[f"content_psnr.{s}"] = float(psnr(content, target))
        metrics[f"gain_db.{s}"] = metrics[f"psnr.{s}"] - metrics[f"content_psnr.{s}"]
        shown += [content[:k], y[:k], target[:k]]
    metrics["psnr"] = sum(metrics[f"psnr.{s}"] for s in styles) / len(styles)
    metrics["ssim"] = sum(metrics[f"ssim.{s}"] for s in styles) / len(styles)
    metrics["gain_db"] = min(metrics[f"gain_db.{s}"] for s in styles)
    return metrics, make_grid(torch.cat(shown).cpu(), nrow=k)


def _interpolation(model: StyleModel, content: Tensor, strip_steps: int) -> tuple[float, Tensor]:
    """The largest relative step over the strips between consecutive styles, and their grid."""
    styles = tuple(model.styles)
    alphas = torch.linspace(0, 1, strip_steps).tolist()
    worst, strips = 0.0, []
    for a, b in zip(styles[:-1], styles[1:]):
        strip = torch.stack([KIND.predict(model, content, {"mode": "interpolate", "style_a": a, "style_b": b,
                                                           "alpha": alpha}) for alpha in alphas])
        worst = max(worst, step_smoothness(strip))
        strips.append(strip.transpose(0, 1).flatten(0, 1))  # row per content image
    return worst, make_grid(torch.cat(strips).cpu(), nrow=len(alphas))


def _composition(model: StyleModel, content: Tensor) -> tuple[float, Tensor]:
    """PSNR between the first two styles as one operator and in sequence, and their grid."""
    pair = list(model.styles[:2])
    composed = KIND.predict(model, content, {"mode": "compose", "styles": pair, "how": "operator"})
    sequential = KIND.predict(model, content, {"mode": "compose", "styles": pair, "how": "sequential"})
    grid = make_grid(torch.cat([content, composed, sequential]).cpu(), nrow=content.shape[0])
    return float(psnr(composed, sequential, cap_db=200.0)), grid


@torch.no_grad()
def evaluate(model: StyleModel, pairs: StylePairs, examples: int = 4, strip_steps: int = 6) -> StyleEvaluation:
    """Evaluate a style model on held-out pairs (see the module docstring).

    Args:
        model: a "style" model, on the device to evaluate on.
        pairs: held-out (content, styled) pairs of the model's styles (moved to its device here).
        examples: images a row in the grids (at most the pairs per style).
        strip_steps: images along an interpolation strip, the endpoints included.

    Returns:
        The `StyleEvaluation`.

    Raises:
        ValueError: `examples` < 1 or `strip_steps` < 2.
    """
    if examples < 1 or strip_steps < 2:
        raise ValueError(f"examples must be >= 1 and strip_steps >= 2, got {examples} and {strip_steps}")
    device = next(model.parameters()).device
    styles = tuple(model.styles)
    k = max(1, min(examples, len(pairs) // len(styles)))
    metrics, grid = _per_style(model, pairs, k, device)
    images = {"styles": grid}
    if len(styles) >= 2:
        content = pairs.of_style(styles[0])[0][:k].to(device)
        metrics["interpolation_step"], images["interpolation"] = _interpolation(model, content, strip_steps)
        metrics["composition_psnr"], images["composition"] = _composition(model, content)
    return StyleEvaluation(metrics, images)
