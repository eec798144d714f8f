"""The "onestep" model kind: the hooks trainers, registries and servers call (`linearizer.kinds`).

predict modes (`params["mode"]`), inputs and outputs are `[N, C, H, W]` float tensors:

| mode | inputs | params | output |
|---|---|---|---|
| `sample` | noise | - | one-step samples `g_x^{-1}(B g_y(x0))` in [0, 1] |
| `sample_multistep` | noise | `steps`, `method`, `t_end` (default `cfg.sampler`) | T-step samples in [0, 1] |
| `invert` | images in [0, 1] | `solve` ("inverse" or "pinv") | their noise pre-images |
| `reconstruct` | images in [0, 1] | `solve` | image -> noise -> image, in [0, 1] |
| `interpolate` | 2 images in [0, 1] | `n` (default 8), `space` ("induced" or "noise"), `solve` | `[n, C, H, W]` path |

Images leave `predict` clamped to [0, 1]; `invert` returns the noise unclamped.

Example:
    >>> kind = get_kind("onestep")
    >>> kind.finalize(model)                                   # builds and caches B
    >>> kind.predict(model, torch.randn(4, 1, 32, 32), {"mode": "sample"})
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..kinds import register_kind, served
from .inversion import SOLVES, interpolate, invert, reconstruct
from .model import OneStepLinearizer, noise_like
from .objective import onestep_loss

#: params each mode accepts besides "mode".
MODE_PARAMS: dict[str, tuple[str, ...]] = {
    "sample": (),
    "sample_multistep": ("steps", "method", "t_end"),
    "invert": ("solve",),
    "reconstruct": ("solve",),
    "interpolate": ("n", "space", "solve"),
}


def _check_images(model: OneStepLinearizer, x: Any, what: str, unit_range: bool) -> Tensor:
    """Validate a request tensor and bring it to the model's dtype and device."""
    shape = ", ".join(map(str, model.image_shape))
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, {shape}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor (float images in [0, 1] or noise), got {x.dtype}")
    if x.dim() != 4 or tuple(x.shape[1:]) != model.image_shape or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape [N, {shape}] with N >= 1, got {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    if unit_range and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"{what} must be images in [0, 1], got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    ref = model.B_b
    return x.to(dtype=ref.dtype, device=ref.device)


class OneStepKind:
    """Hooks of the one-step flow-matching Linearizer (`OneStepLinearizer`)."""

    name = "onestep"
    modes = tuple(MODE_PARAMS)
    batch_keys = ("image",)

    def build(self, cfg: ModelConfig) -> OneStepLinearizer:
        return OneStepLinearizer(cfg)

    def loss(self, model: OneStepLinearizer, batch: dict[str, Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        return onestep_loss(model, batch["image"], generator)

    @torch.no_grad()
    def samples(self, model: OneStepLinearizer, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` samples in [0, 1]: one step through the cached B when built, else the multi-step
        sampler of `cfg.sampler` (B is only built by `finalize`, after training)."""
        ref = model.B_b
        x0 = noise_like(torch.empty(n, *model.image_shape, dtype=ref.dtype, device=ref.device), generator)
        x = model.sample(x0) if model.has_B else model.sample_multistep(x0)
        return x.clamp(0, 1)

    def finalize(self, model: OneStepLinearizer) -> None:
        """Collapse the sampler of `cfg.sampler` into B and cache it in the model."""
        model.build_B()

    @torch.no_grad()
    @served
    def predict(self, model: OneStepLinearizer, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        """Serve one request (see the module docstring for modes, inputs and params).

        Raises:
            ValueError: an unknown mode or param, malformed inputs, or B not built for a mode
                that needs it.
        """
        mode = params.get("mode")
        if mode not in MODE_PARAMS:
            raise ValueError(f"params['mode'] must be one of {list(MODE_PARAMS)}, got {mode!r}")
        unknown = sorted(set(params) - {"mode", *MODE_PARAMS[mode]})
        if unknown:
            raise ValueError(f"mode {mode!r} accepts params {list(MODE_PARAMS[mode])}, got unknown {unknown}")
        needs_B = mode in ("sample", "invert", "reconstruct") or (mode == "interpolate"
                                                                  and params.get("space") == "noise")
        if needs_B and not model.has_B:
            raise ValueError(f"mode {mode!r} needs the collapsed operator B, which this model has not built: "
                             f"run the kind's finalize (model.build_B()) first")
        if mode == "sample":
            return model.sample(_check_images(model, inputs, "sample inputs (noise)", False)).clamp(0, 1)
        if mode == "sample_multistep":
            x0 = _check_images(model, inputs, "sample_multistep inputs (noise)", False)
            # steps, method and t_end are validated by the sampler's grid
            x = model.sample_multistep(x0, params.get("method"), params.get("steps"), params.get("t_end"))
            return x.clamp(0, 1)
        solve = params.get("solve", "inverse")
        if solve not in SOLVES:  # checked here too: interpolation in the induced space never reaches a solve
            raise ValueError(f"solve must be one of {list(SOLVES)}, got {solve!r}")
        if mode == "invert":
            return invert(model, _check_images(model, inputs, "invert inputs (images)", True), solve)
        if mode == "reconstruct":
            x1 = _check_images(model, inputs, "reconstruct inputs (images)", True)
            return reconstruct(model, x1, solve).clamp(0, 1)
        x = _check_images(model, inputs, "interpolate inputs (images)", True)
        if x.shape[0] != 2:
            raise ValueError(f"interpolate takes exactly 2 images [2, ...], got {x.shape[0]}")
        return interpolate(model, x[0:1], x[1:2], params.get("n", 8), params.get("space", "induced"),
                           solve).clamp(0, 1)


KIND = register_kind(OneStepKind())
