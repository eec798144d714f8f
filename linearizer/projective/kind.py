"""The "projective" model kind: the hooks trainers, registries and servers call (`linearizer.kinds`).

predict modes (`params["mode"]`); inputs and outputs are `[N, C, H, W]` float tensors:

| mode | inputs | params | output |
|---|---|---|---|
| `project` | any images (noisy, masked, out of distribution) | `clamp` (default False) | `f(inputs)` |
| `sample` | noise `N(0, I)` | `clamp` (default False) | `f(noise)`: samples |

Outputs are not clamped by default, so a served projection stays a projection: feeding an output
back returns it unchanged (to float round-off). `clamp=True` clips to [0, 1] for display.

Example:
    >>> kind = get_kind("projective")
    >>> model = kind.build(ModelConfig(kind="projective"))
    >>> kind.predict(model, torch.randn(4, 1, 32, 32), {"mode": "sample"})
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..kinds import register_kind, served
from .model import ProjectiveModel
from .objective import gaussian_noise, projective_loss
from .uses import check_images

#: params each mode accepts besides "mode".
MODE_PARAMS: dict[str, tuple[str, ...]] = {
    "project": ("clamp",),
    "sample": ("clamp",),
}


class ProjectiveKind:
    """Hooks of the globally projective model (`ProjectiveModel`)."""

    name = "projective"
    modes = tuple(MODE_PARAMS)
    batch_keys = ("image",)

    def build(self, cfg: ModelConfig) -> ProjectiveModel:
        return ProjectiveModel(cfg)

    def loss(self, model: ProjectiveModel, batch: dict[str, Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        return projective_loss(model, batch["image"], generator)

    @torch.no_grad()
    def samples(self, model: ProjectiveModel, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` projections of fresh noise, clamped to [0, 1] for grids."""
        ref = next(model.parameters())
        noise = gaussian_noise(torch.empty(n, *model.image_shape, dtype=ref.dtype, device=ref.device), generator)
        return model(noise).clamp(0, 1)

    def finalize(self, model: ProjectiveModel) -> None:
        """Nothing to build: `P`'s basis is one `d x k` QR per call, and `f` needs no cache."""

    @torch.no_grad()
    @served
    def predict(self, model: ProjectiveModel, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        """Serve one request (see the module docstring for modes, inputs and params).

        Raises:
            ValueError: an unknown mode or param, a non-bool `clamp`, or malformed inputs
                (not a tensor, not floating point, wrong shape, NaN or inf).
        """
        mode = params.get("mode")
        if mode not in MODE_PARAMS:
            raise ValueError(f"params['mode'] must be one of {list(MODE_PARAMS)}, got {mode!r}")
        unknown = sorted(set(params) - {"mode", *MODE_PARAMS[mode]})
        if unknown:
            raise ValueError(f"mode {mode!r} accepts params {list(MODE_PARAMS[mode])}, got unknown {unknown}")
        clamp = params.get("clamp", False)
        if not isinstance(clamp, bool):
            raise ValueError(f"params['clamp'] must be true or false, got {clamp!r}")
        what = "sample inputs (noise)" if mode == "sample" else "project inputs (images)"
        y = model(check_images(model, inputs, what))
        return y.clamp(0, 1) if clamp else y


KIND = register_kind(ProjectiveKind())
