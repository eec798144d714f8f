"""Modular style transfer: one shared invertible network, one linear operator per style.

A style is `f_s = g_y^-1 A_s g_x`; styles interpolate, weaken and compose as matrices
(`algebra`). `data` makes (content, styled) pairs from classical filters or reads them from a
folder; `kind` registers the "style" model kind (objective, previews, serving modes).

Example:
    >>> from linearizer.style import StyleModel, make_filter_pairs, interpolate_styles
    >>> pairs = make_filter_pairs(["stylize", "grade"], split="train", size=32, n=256)
    >>> model = StyleModel(cfg)                      # cfg.operator.styles == ["stylize", "grade"]
    >>> y = interpolate_styles(model, "stylize", "grade", 0.3)(x)
"""

from .algebra import (CompositionGap, StrengthMap, apply_in_sequence, compose, compose_styles, composition_gap,
                      identity_like, interpolate, interpolate_styles, step_smoothness, strength, with_strength)
from .data import (DEFAULT_STYLES, HELD_OUT_PHOTOS, STYLE_FILTERS, TRAIN_PHOTOS, StylePairs, apply_filter,
                   load_pair_folder, make_filter_pairs, pair_samples)
from .kind import STYLE, StyleKind, check_images, style_loss
from .model import StyleModel

__all__ = [
    "CompositionGap", "DEFAULT_STYLES", "HELD_OUT_PHOTOS", "STYLE", "STYLE_FILTERS", "StrengthMap", "StyleKind",
    "StyleModel", "StylePairs", "TRAIN_PHOTOS", "apply_filter", "apply_in_sequence", "check_images", "compose",
    "compose_styles", "composition_gap", "identity_like", "interpolate", "interpolate_styles", "load_pair_folder",
    "make_filter_pairs", "pair_samples", "step_smoothness", "strength", "style_loss", "with_strength",
]
