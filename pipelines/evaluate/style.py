"""Style-transfer evaluation of "style" models `f_s = g_y^{-1} A_s g_x`.

Through the kind's predict modes (`style`, `interpolate`, `compose`):

- per style, PSNR and SSIM of `f_s(content)` against the target on held-out content, beside
  the scores of the content itself (what doing nothing scores);
- interpolation strips `(1 - a) A_s1 + a A_s2` between consecutive styles, with the largest
  step along the strip relative to its span (1/(k-1) for a uniform path);
- composition: one operator `A_s2 A_s1` next to the two styles applied in sequence, with the
  PSNR between the two (they agree exactly only when `g_x = g_y`).

Held-out pairs are the classical-filter pairs of photos never trained on
(`linearizer.style.data.make_filter_pairs(split="test")`) or a pair folder (`style.pairs`).

Example:
    >>> result = run(model, model_cfg, cfg)
    >>> result.metrics["psnr"], result.metrics["psnr.grade"]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from linearizer.config import ModelConfig
from linearizer.kinds import get_kind
from linearizer.metrics import psnr, ssim
from linearizer.viz import make_grid

from .common import EvalResult, EvaluationError, make_checks
from .config import EvalConfig

KIND = "style"
HIGHER_IS_BETTER = {"psnr": True, "ssim": True}


def held_out_pairs(styles: tuple[str, ...], image_shape: tuple[int, int, int], cfg: EvalConfig):
    """The held-out `StylePairs` for `styles` (a pair folder, or filter pairs of held-out photos)."""
    from linearizer.style.data import STYLE_FILTERS, load_pair_folder, make_filter_pairs

    C, H, W = image_shape
    if cfg.style.pairs is not None:
        return load_pair_folder(cfg.style.pairs, styles, channels=C)
    unknown = [s for s in styles if s not in STYLE_FILTERS]
    if unknown or C != 3 or H != W:
        raise EvaluationError(f"offline held-out pairs exist for the filter styles {sorted(STYLE_FILTERS)} on square "
                              f"RGB images; this model has styles {list(styles)} and image shape {image_shape}: "
                              f"set style.pairs to a folder of held-out pairs")
    return make_filter_pairs(styles, split="test", size=H, n=cfg.style.n, seed=cfg.seed)


@torch.no_grad()
def run(model: nn.Module, model_cfg: ModelConfig, cfg: EvalConfig) -> EvalResult:
    """Evaluate a style model (see the module docstring).

    Returns:
        Metrics `psnr.<style>`, `ssim.<style>`, `content_psnr.<style>` (the identity baseline),
        `gain_db.<style>`, their means `psnr`, `ssim`, the worst gain `gain_db`, and with two
        styles or more `interpolation_step` and `composition_psnr`; the floors
        `style.min_gain_db`, `style.min_psnr`, `style.min_ssim`; pictures "styles",
        "interpolation", "composition".
    """
    st, kind = cfg.style, get_kind(KIND)
    device = torch.device(cfg.device)
    model.to(device)
    styles = tuple(model.styles)
    pairs = held_out_pairs(styles, tuple(model_cfg.image_shape), cfg)
    k = max(1, min(st.examples, len(pairs) // len(styles)))

    metrics: dict[str, float] = {}
    shown: list[Tensor] = []
    for s in styles:
        content, target = (t.to(device) for t in pairs.of_style(s))
        y = kind.predict(model, content, {"mode": "style", "style": s})
        metrics[f"psnr.{s}"] = float(psnr(y, target))
        metrics[f"ssim.{s}"] = float(ssim(y, target).mean())
        metrics[f"content_psnr.{s}"] = float(psnr(content, target))
        metrics[f"gain_db.{s}"] = metrics[f"psnr.{s}"] - metrics[f"content_psnr.{s}"]
        shown += [content[:k], y[:k], target[:k]]
    metrics["psnr"] = sum(metrics[f"psnr.{s}"] for s in styles) / len(styles)
    metrics["ssim"] = sum(metrics[f"ssim.{s}"] for s in styles) / len(styles)
    metrics["gain_db"] = min(metrics[f"gain_db.{s}"] for s in styles)
    images = {"styles": make_grid(torch.cat(shown).cpu(), nrow=k)}
    notes = ["`styles`: for each style, three rows: held-out content, the model's output, the target."]

    if len(styles) >= 2:
        from linearizer.style.algebra import step_smoothness

        content = pairs.of_style(styles[0])[0][:k].to(device)
        alphas = torch.linspace(0, 1, st.strip_steps).tolist()
        worst, strips = 0.0, []
        for a, b in zip(styles[:-1], styles[1:]):
            strip = torch.stack([kind.predict(model, content, {"mode": "interpolate", "style_a": a, "style_b": b,
                                                               "alpha": alpha}) for alpha in alphas])
            worst = max(worst, step_smoothness(strip))
            strips.append(strip.transpose(0, 1).flatten(0, 1))  # row per content image
        metrics["interpolation_step"] = worst
        images["interpolation"] = make_grid(torch.cat(strips).cpu(), nrow=len(alphas))

        pair = list(styles[:2])
        composed = kind.predict(model, content, {"mode": "compose", "styles": pair, "how": "operator"})
        sequential = kind.predict(model, content, {"mode": "compose", "styles": pair, "how": "sequential"})
        metrics["composition_psnr"] = float(psnr(composed, sequential, cap_db=200.0))
        images["composition"] = make_grid(torch.cat([content, composed, sequential]).cpu(), nrow=k)
        notes += [f"`interpolation`: a row per content image, alpha from 0 to 1 in {len(alphas)} steps, for "
                  f"each consecutive pair of {list(styles)}.",
                  f"`composition`: content, then {pair[0]} -> {pair[1]} as one operator, then the two styles "
                  f"applied in sequence."]

    source = cfg.style.pairs or f"filters-test-n{st.n}"
    return EvalResult(
        evaluation="style", metrics=metrics,
        checks=make_checks(metrics, [("gain_db", ">=", st.min_gain_db), ("psnr", ">=", st.min_psnr),
                                     ("ssim", ">=", st.min_ssim)], "style"),
        primary=st.primary, higher_is_better=HIGHER_IS_BETTER[st.primary],
        comparable=f"style/{st.primary}/{source}/{','.join(styles)}", images=images,
        info={"styles": ", ".join(styles), "pairs": source, "n_pairs": str(len(pairs)), "device": str(device)},
        notes=notes,
    )
