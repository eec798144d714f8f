"""Projection evaluation of "projective" models `f = g^{-1} P g`, for the registry.

The measurements are the library's (`linearizer.projective.evaluation`: idempotency per probe,
fixed-point error, denoising and inpainting PSNR beside doing nothing, projected-noise samples,
the before/after grid); this layer draws the probes from the evaluation config, adds the FID of
the projected noise against the MNIST test split, the quality floors of `projection.*` and what
makes two runs comparable.

Example:
    >>> result = run(model, model_cfg, cfg)
    >>> result.metrics["idempotency_max"], result.metrics["denoise_psnr"]
"""

from __future__ import annotations

import torch
from torch import nn

from linearizer.config import ModelConfig

from .common import EvalResult, EvaluationError, fid_floor, fid_info, fid_vs_mnist, generator, make_checks
from .config import EvalConfig

KIND = "projective"
HIGHER_IS_BETTER = {"denoise_psnr": True, "inpaint_psnr": True, "fixed_point_error": False, "fid": False}


@torch.no_grad()
def run(model: nn.Module, model_cfg: ModelConfig, cfg: EvalConfig) -> EvalResult:
    """Evaluate a projective model (see the module docstring).

    Args:
        model: a loaded "projective" model.
        model_cfg: its config.
        cfg: the evaluation config (`projection`, `fid`, `seed`, `device`).

    Returns:
        Metrics `idempotency_{noise,noisy,masked,ood,max}`, `fixed_point_error`,
        `denoise_psnr`, `noisy_psnr`, `denoise_gain_db`, `inpaint_psnr`, `masked_psnr`, `fid`
        (unless off), with the floors of `projection.*`; picture "before_after".
    """
    from linearizer.projective.evaluation import evaluate
    from linearizer.projective.inputs import make_inputs

    p = cfg.projection
    device = torch.device(cfg.device)
    model.to(device)
    shape = tuple(model_cfg.image_shape)
    try:
        probes = {name: make_inputs(name, p.n, shape, generator(cfg.seed, i), sigma=p.sigma)
                  for i, name in enumerate(("noise", "noisy", "masked", p.ood, "mnist"))}
    except ValueError as e:
        raise EvaluationError(f"the projection probes are MNIST digits and {p.ood!r} images: {e}") from e
    noise = torch.randn(p.fid_n, *shape, generator=generator(cfg.seed, 10))
    measured = evaluate(model, probes, p.ood, noise, inpaint_iterations=p.inpaint_iterations, grid=p.grid)
    metrics = dict(measured.metrics)
    info = {"sigma": f"{p.sigma:g}", "inpaint_iterations": str(p.inpaint_iterations), "ood": p.ood,
            "n": str(p.n), "device": str(device)}
    scored = fid_vs_mnist(cfg, measured.samples)
    if scored is not None:
        metrics["fid"] = scored.value
        info.update(fid_info(scored))

    primary = p.primary
    comparable = {"denoise_psnr": f"projection/denoise_psnr/sigma{p.sigma:g}",
                  "inpaint_psnr": f"projection/inpaint_psnr/iterations{p.inpaint_iterations}",
                  "fixed_point_error": "projection/fixed_point_error"}.get(primary)
    if primary == "fid":
        comparable = f"projection/fid/{info['fid_extractor']}/n{p.fid_n}/real{info['fid_n_real']}"
    return EvalResult(
        evaluation="projection", metrics=metrics,
        checks=(make_checks(metrics, [("idempotency_max", "<=", p.max_idempotency_error),
                                      ("fixed_point_error", "<=", p.max_fixed_point_error),
                                      ("denoise_gain_db", ">=", p.min_denoise_gain_db),
                                      ("denoise_psnr", ">=", p.min_denoise_psnr),
                                      ("inpaint_psnr", ">=", p.min_inpaint_psnr)], "projection")
                + fid_floor(cfg, p.max_fid, scored, "projection.max_fid")),
        primary=primary, higher_is_better=HIGHER_IS_BETTER[primary], comparable=comparable,
        images=measured.images, info=info,
        notes=["Rows of `before_after`, in pairs (input above its projection): noise, noisy digits "
               f"(sigma {p.sigma:g}), masked digits ({p.inpaint_iterations} alternating projections), "
               f"out-of-distribution '{p.ood}' images."],
    )
