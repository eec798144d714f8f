"""The projective model's evaluation, shared by the evaluation pipeline (`pipelines.evaluate.projection`),
`linearizer projective project` and the figures bench (`bench/projective_figures.py`).

Each measures the same things the same way, with the kind's own uses (`linearizer.projective.uses`):

- idempotency `||f(f(x)) - f(x)|| / ||f(x)||` (worst image) on noise, noisy digits, masked digits
  and an out-of-distribution set: exact by construction, so anything above round-off is a bug;
- fixed-point error `||f(x) - x|| / ||x||` (mean) on clean digits: how close data lie to the set;
- restorations (denoising, inpainting) as PSNR against the clean images, beside the PSNR of the
  corrupted inputs themselves (what doing nothing scores), both clamped to [0, 1];
- projected noise (the model's samples), for a distance to the data such as FID;
- a before/after grid: each probe's inputs above their projections.

Example:
    >>> probes = {name: make_inputs(name, 256, (1, 32, 32), g, sigma=0.3)
    ...           for name in ("noise", "noisy", "masked", "mnist", "photos")}
    >>> result = evaluate(model, probes, ood="photos", noise=torch.randn(1000, 1, 32, 32))
    >>> result.metrics["idempotency_max"], result.metrics["denoise_gain_db"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics.image import psnr
from ..viz import make_grid
from .inputs import Probe
from .model import ProjectiveModel
from .uses import denoise, fixed_point_error, idempotency_error, inpaint, project

#: the probes `evaluate` needs besides the out-of-distribution set (names of `make_inputs`).
PROBES = ("noise", "noisy", "masked", "mnist")


@dataclass(frozen=True)
class Restoration:
    """Corrupted images restored, scored against the clean ones.

    Attributes:
        restored: the model's restorations `[N, C, H, W]`, as it returned them (not clamped).
        before_db: PSNR of the corrupted inputs, clamped to [0, 1]: what doing nothing scores.
        after_db: PSNR of the restorations, clamped to [0, 1].
    """

    restored: Tensor
    before_db: float
    after_db: float

    @property
    def gain_db(self) -> float:
        """What restoring adds over doing nothing, in dB."""
        return self.after_db - self.before_db


def restoration(corrupted: Tensor, restored: Tensor, clean: Tensor) -> Restoration:
    """Score `restored` and `corrupted` against `clean` (both clamped to [0, 1], the pixel range).

    Args:
        corrupted: the inputs the model was given `[N, C, H, W]`.
        restored: the model's outputs for them.
        clean: the images the inputs were made from.

    Returns:
        The `Restoration` (PSNR before and after, in dB).
    """
    return Restoration(restored, float(psnr(corrupted.clamp(0, 1), clean)),
                       float(psnr(restored.float().clamp(0, 1), clean)))


@torch.no_grad()
def project_batched(model: ProjectiveModel, x: Tensor, batch_size: int = 256) -> Tensor:
    """`project(model, x)` a chunk of `batch_size` rows at a time (one batch's memory), concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([project(model, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def show_noise(x: Tensor) -> Tensor:
    """Noise mapped into [0, 1] for display (mean 0.5, 2 sigma to the edges)."""
    return (0.5 + 0.25 * x).clamp(0, 1)


@dataclass(frozen=True)
class ProjectionEvaluation:
    """What `evaluate` measured.

    Attributes:
        metrics: `idempotency_{noise,noisy,masked,ood,max}`, `fixed_point_error`, `denoise_psnr`,
            `noisy_psnr`, `denoise_gain_db`, `inpaint_psnr`, `masked_psnr`.
        samples: the projected noise `[M, C, H, W]`, not clamped (the model's samples).
        images: "before_after", the grid of the probes' inputs above their projections.
    """

    metrics: dict[str, float]
    samples: Tensor
    images: dict[str, Tensor]


@torch.no_grad()
def evaluate(model: ProjectiveModel, probes: Mapping[str, Probe], ood: str, noise: Tensor,
             inpaint_iterations: int = 10, grid: int = 8, batch_size: int = 256) -> ProjectionEvaluation:
    """Evaluate a projective model on prepared probes (see the module docstring).

    Args:
        model: a "projective" model, on the device to evaluate on.
        probes: `make_inputs` batches named "noise", "noisy", "masked", "mnist" and `ood`, all of
            one size (moved to the model's device here).
        ood: the name of the out-of-distribution probe, e.g. "photos".
        noise: the noise to project into samples `[M, C, H, W]`.
        inpaint_iterations: alternating projections for the masked probe.
        grid: images per row of "before_after" (at most the probes' size).
        batch_size: rows projected at a time for the samples.

    Returns:
        The `ProjectionEvaluation`.

    Raises:
        ValueError: a probe is missing, or "noisy" / "masked" lack their clean images or mask.
    """
    missing = [name for name in (*PROBES, ood) if name not in probes]
    if missing:
        raise ValueError(f"evaluate needs the probes {[*PROBES, ood]}, missing {missing}")
    noisy, masked = probes["noisy"], probes["masked"]
    if noisy.clean is None or masked.clean is None or masked.mask is None:
        raise ValueError("the 'noisy' and 'masked' probes need their clean images (and 'masked' its mask)")
    device = next(model.parameters()).device
    on = {name: probes[name].inputs.to(device) for name in (*PROBES, ood)}

    metrics: dict[str, float] = {}
    for name, label in (("noise", "noise"), ("noisy", "noisy"), ("masked", "masked"), (ood, "ood")):
        metrics[f"idempotency_{label}"] = float(idempotency_error(model, on[name]).max())
    metrics["idempotency_max"] = max(metrics.values())
    metrics["fixed_point_error"] = float(fixed_point_error(model, on["mnist"]).mean())

    denoised = restoration(on["noisy"], denoise(model, on["noisy"]), noisy.clean.to(device))
    metrics["denoise_psnr"], metrics["noisy_psnr"] = denoised.after_db, denoised.before_db
    metrics["denoise_gain_db"] = denoised.gain_db
    filled = inpaint(model, on["masked"], masked.mask.to(device), iterations=inpaint_iterations)
    inpainted = restoration(on["masked"], filled, masked.clean.to(device))
    metrics["inpaint_psnr"], metrics["masked_psnr"] = inpainted.after_db, inpainted.before_db

    samples = project_batched(model, noise.to(device), batch_size)
    g = min(grid, on["noise"].shape[0])
    rows = [show_noise(on["noise"][:g]), samples[:g].clamp(0, 1), on["noisy"][:g].clamp(0, 1),
            denoised.restored[:g].clamp(0, 1), on["masked"][:g], inpainted.restored[:g].clamp(0, 1),
            on[ood][:g].clamp(0, 1), project(model, on[ood][:g]).clamp(0, 1)]
    return ProjectionEvaluation(metrics, samples, {"before_after": make_grid(torch.cat(rows).cpu(), nrow=g)})
