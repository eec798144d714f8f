"""Style-transfer evaluation of "style" models `f_s = g_y^{-1} A_s g_x`, for the registry.

The measurements are the library's (`linearizer.style.evaluation`: per-style PSNR and SSIM
beside the content's own PSNR, the gain, the interpolation step, the composition PSNR and the
grids); this layer picks the held-out pairs, adds the quality floors of `style.*`, what makes two
runs comparable, and the notes that read the grids.

Held-out pairs are the classical-filter pairs of photos never trained on
(`linearizer.style.data.make_filter_pairs(split="test")`) or a pair folder (`style.pairs`).

Example:
    >>> result = run(model, model_cfg, cfg)
    >>> result.metrics["psnr"], result.metrics["psnr.grade"]
"""

from __future__ import annotations

import torch
from torch import nn

from linearizer.config import ModelConfig

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
    from linearizer.style.evaluation import evaluate

    st = cfg.style
    device = torch.device(cfg.device)
    model.to(device)
    styles = tuple(model.styles)
    pairs = held_out_pairs(styles, tuple(model_cfg.image_shape), cfg)
    measured = evaluate(model, pairs, examples=st.examples, strip_steps=st.strip_steps)
    metrics = dict(measured.metrics)
    notes = ["`styles`: for each style, three rows: held-out content, the model's output, the target."]
    if len(styles) >= 2:
        notes += [f"`interpolation`: a row per content image, alpha from 0 to 1 in {st.strip_steps} steps, for "
                  f"each consecutive pair of {list(styles)}.",
                  f"`composition`: content, then {styles[0]} -> {styles[1]} as one operator, then the two styles "
                  f"applied in sequence."]

    source = cfg.style.pairs or f"filters-test-n{st.n}"
    return EvalResult(
        evaluation="style", metrics=metrics,
        checks=make_checks(metrics, [("gain_db", ">=", st.min_gain_db), ("psnr", ">=", st.min_psnr),
                                     ("ssim", ">=", st.min_ssim)], "style"),
        primary=st.primary, higher_is_better=HIGHER_IS_BETTER[st.primary],
        comparable=f"style/{st.primary}/{source}/{','.join(styles)}", images=measured.images,
        info={"styles": ", ".join(styles), "pairs": source, "n_pairs": str(len(pairs)), "device": str(device)},
        notes=notes,
    )
