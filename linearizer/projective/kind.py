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

import torch
from torch import Tensor

from ..config import ModelConfig
from ..kinds import ImageKind, KindSpec, Mode, Param, register_kind
from .model import ProjectiveModel
from .objective import LEGACY_LOSS_WEIGHTS, LOSS_WEIGHTS, gaussian_noise, projective_loss

CLAMP = Param("clamp", bool, False, "clip the outputs to [0, 1] for display (a clipped output is no fixed point)")
SPEC = KindSpec(
    name="projective",
    modes=(Mode("project", "any", (CLAMP,), doc="f(inputs): the projection of any images"),
           Mode("sample", "noise", (CLAMP,), doc="f(noise): samples")),
    batch_keys=("image",),
    loss_weights=LOSS_WEIGHTS,
    legacy_loss_weights=LEGACY_LOSS_WEIGHTS,
    evaluation="projection",
)


class ProjectiveKind(ImageKind):
    """Hooks of the globally projective model (`ProjectiveModel`)."""

    spec = SPEC

    def build(self, cfg: ModelConfig) -> ProjectiveModel:
        return ProjectiveModel(cfg)

    def loss(self, model: ProjectiveModel, batch: dict[str, Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        return projective_loss(model, batch["image"], generator)

    def initialize(self, model: ProjectiveModel, batch: dict[str, Tensor]) -> None:
        model.initialize(batch["image"])

    @torch.no_grad()
    def samples(self, model: ProjectiveModel, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` projections of fresh noise, clamped to [0, 1] for grids."""
        ref = next(model.parameters())
        noise = gaussian_noise(torch.empty(n, *model.image_shape, dtype=ref.dtype, device=ref.device), generator)
        return model(noise).clamp(0, 1)

    def finalize(self, model: ProjectiveModel) -> None:
        """Nothing to build: `P`'s basis is one `d x k` QR per call, and `f` needs no cache."""

    @staticmethod
    def reference(model: ProjectiveModel) -> Tensor:
        return model.code_scale

    def predict_project(self, model: ProjectiveModel, x: Tensor, clamp: bool) -> Tensor:
        y = model(x)
        return y.clamp(0, 1) if clamp else y

    def predict_sample(self, model: ProjectiveModel, x0: Tensor, clamp: bool) -> Tensor:
        return self.predict_project(model, x0, clamp)


KIND = register_kind(ProjectiveKind())
