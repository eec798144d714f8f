"""Projection evaluation of "projective" models `f = g^{-1} P g`.

Measures with the library's own uses (`linearizer.projective.uses`):

- idempotency `||f(f(x)) - f(x)|| / ||f(x)||` (worst image) on noise, noisy digits, masked digits
  and an out-of-distribution set: exact by construction, so anything above round-off is a bug;
- fixed-point error `||f(x) - x|| / ||x||` (mean) on test digits: how close data lie to the set;
- denoising and inpainting PSNR on corrupted test digits, beside the PSNR of the corrupted
  inputs themselves (what doing nothing scores);
- FID of projected noise (the model's samples) against the MNIST test split;
- a before/after grid: each probe's inputs above their projections.

Example:
    >>> result = run(model, model_cfg, cfg)
    >>> result.metrics["idempotency_max"], result.metrics["denoise_psnr"]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from linearizer.config import ModelConfig
from linearizer.metrics import psnr
from linearizer.viz import make_grid

from .common import EvalResult, EvaluationError, fid_floor, fid_info, fid_vs_mnist, generator, make_checks
from .config import EvalConfig

KIND = "projective"
HIGHER_IS_BETTER = {"denoise_psnr": True, "inpaint_psnr": True, "fixed_point_error": False, "fid": False}


def _show_noise(x: Tensor) -> Tensor:
    """Noise mapped into [0, 1] for display (mean 0.5, 2 sigma to the edges)."""
    return (0.5 + 0.25 * x).clamp(0, 1)


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
    from linearizer.projective.inputs import make_inputs
    from linearizer.projective.uses import denoise, fixed_point_error, idempotency_error, inpaint, project

    p = cfg.projection
    device = torch.device(cfg.device)
    model.to(device)
    shape = tuple(model_cfg.image_shape)
    try:
        probes = {name: make_inputs(name, p.n, shape, generator(cfg.seed, i), sigma=p.sigma)
                  for i, name in enumerate(("noise", "noisy", "masked", p.ood, "mnist"))}
    except ValueError as e:
        raise EvaluationError(f"the projection probes are MNIST digits and {p.ood!r} images: {e}") from e
    on = {name: probe.inputs.to(device) for name, probe in probes.items()}

    metrics: dict[str, float] = {}
    for name, label in (("noise", "noise"), ("noisy", "noisy"), ("masked", "masked"), (p.ood, "ood")):
        metrics[f"idempotency_{label}"] = float(idempotency_error(model, on[name]).max())
    metrics["idempotency_max"] = max(metrics[k] for k in list(metrics))
    metrics["fixed_point_error"] = float(fixed_point_error(model, on["mnist"]).mean())

    clean = probes["noisy"].clean.to(device)
    denoised = denoise(model, on["noisy"])
    metrics["denoise_psnr"] = float(psnr(denoised.clamp(0, 1), clean))
    metrics["noisy_psnr"] = float(psnr(on["noisy"].clamp(0, 1), clean))
    metrics["denoise_gain_db"] = metrics["denoise_psnr"] - metrics["noisy_psnr"]
    masked = probes["masked"]
    inpainted = inpaint(model, on["masked"], masked.mask.to(device), iterations=p.inpaint_iterations)
    metrics["inpaint_psnr"] = float(psnr(inpainted.clamp(0, 1), masked.clean.to(device)))
    metrics["masked_psnr"] = float(psnr(on["masked"], masked.clean.to(device)))

    noise = torch.randn(p.fid_n, *shape, generator=generator(cfg.seed, 10)).to(device)
    samples = torch.cat([project(model, noise[i:i + 256]) for i in range(0, p.fid_n, 256)])
    info = {"sigma": f"{p.sigma:g}", "inpaint_iterations": str(p.inpaint_iterations), "ood": p.ood,
            "n": str(p.n), "device": str(device)}
    scored = fid_vs_mnist(cfg, samples)
    if scored is not None:
        metrics["fid"] = scored.value
        info.update(fid_info(scored))

    primary = p.primary
    comparable = {"denoise_psnr": f"projection/denoise_psnr/sigma{p.sigma:g}",
                  "inpaint_psnr": f"projection/inpaint_psnr/iterations{p.inpaint_iterations}",
                  "fixed_point_error": "projection/fixed_point_error"}.get(primary)
    if primary == "fid":
        comparable = f"projection/fid/{info['fid_extractor']}/n{p.fid_n}/real{info['fid_n_real']}"
    g = min(p.grid, p.n)
    rows = [_show_noise(on["noise"][:g]), samples[:g].clamp(0, 1), on["noisy"][:g].clamp(0, 1),
            denoised[:g].clamp(0, 1), on["masked"][:g], inpainted[:g].clamp(0, 1), on[p.ood][:g].clamp(0, 1),
            project(model, on[p.ood][:g]).clamp(0, 1)]
    return EvalResult(
        evaluation="projection", metrics=metrics,
        checks=(make_checks(metrics, [("idempotency_max", "<=", p.max_idempotency_error),
                                      ("fixed_point_error", "<=", p.max_fixed_point_error),
                                      ("denoise_gain_db", ">=", p.min_denoise_gain_db),
                                      ("denoise_psnr", ">=", p.min_denoise_psnr),
                                      ("inpaint_psnr", ">=", p.min_inpaint_psnr)], "projection")
                + fid_floor(cfg, p.max_fid, scored, "projection.max_fid")),
        primary=primary, higher_is_better=HIGHER_IS_BETTER[primary], comparable=comparable,
        images={"before_after": make_grid(torch.cat(rows).cpu(), nrow=g)}, info=info,
        notes=["Rows of `before_after`, in pairs (input above its projection): noise, noisy digits "
               f"(sigma {p.sigma:g}), masked digits ({p.inpaint_iterations} alternating projections), "
               f"out-of-distribution '{p.ood}' images."],
    )
