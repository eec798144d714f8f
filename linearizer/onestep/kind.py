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

import torch
from torch import Tensor

from ..config import ModelConfig
from ..kinds import ImageKind, KindSpec, Mode, Param, register_kind
from .inversion import SOLVES, SPACES, interpolate, invert, reconstruct
from .model import OneStepLinearizer, noise_like
from .objective import LEGACY_LOSS_WEIGHTS, LOSS_WEIGHTS, onestep_loss
from .samplers import METHODS

SOLVE = Param("solve", str, "inverse", "how B is inverted: B^-1 (Woodbury) or B^+", choices=SOLVES)
SPEC = KindSpec(
    name="onestep",
    modes=(
        Mode("sample", "noise", doc="one-step samples g_x^-1(B g_y(x0))"),
        Mode("sample_multistep", "noise", (
            Param("steps", int, None, "integration steps (None: cfg.sampler.steps)", low=1),
            Param("method", str, None, "integrator (None: cfg.sampler.method)", choices=METHODS),
            Param("t_end", float, None, "end time (None: cfg.sampler.t_end, else 1 - 1/steps)",
                  low=0.0, high=1.0, low_open=True, high_open=True),
        ), doc="T-step samples"),
        Mode("invert", "images", (SOLVE,), doc="noise pre-images of images"),
        Mode("reconstruct", "images", (SOLVE,), doc="image -> noise -> image"),
        Mode("interpolate", "images", (
            Param("n", int, 8, "points on the path, ends included", low=2),
            Param("space", str, "induced", "the line in g_x's induced space, or between noise pre-images",
                  choices=SPACES),
            SOLVE,
        ), count=2, doc="a path between two images"),
    ),
    batch_keys=("image",),
    loss_weights=LOSS_WEIGHTS,
    legacy_loss_weights=LEGACY_LOSS_WEIGHTS,
    evaluation="sampling",
)


def _require_B(model: OneStepLinearizer, mode: str) -> None:
    if not model.has_B:
        raise ValueError(f"mode {mode!r} needs the collapsed operator B, which this model has not built: "
                         f"run the kind's finalize (model.build_B()) first")


class OneStepKind(ImageKind):
    """Hooks of the one-step flow-matching Linearizer (`OneStepLinearizer`)."""

    spec = SPEC

    def build(self, cfg: ModelConfig) -> OneStepLinearizer:
        return OneStepLinearizer(cfg)

    def loss(self, model: OneStepLinearizer, batch: dict[str, Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        # "noise" (optional): the noise each image was drawn from, for distillation from a teacher
        return onestep_loss(model, batch["image"], generator, x0=batch.get("noise"))

    def initialize(self, model: OneStepLinearizer, batch: dict[str, Tensor]) -> None:
        model.initialize(batch["image"])

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

    @staticmethod
    def reference(model: OneStepLinearizer) -> Tensor:
        return model.B_b

    # ----- predict modes (see the module docstring; requests are checked against SPEC) -----

    def predict_sample(self, model: OneStepLinearizer, x0: Tensor) -> Tensor:
        _require_B(model, "sample")
        return model.sample(x0).clamp(0, 1)

    def predict_sample_multistep(self, model: OneStepLinearizer, x0: Tensor, steps: int | None,
                                 method: str | None, t_end: float | None) -> Tensor:
        return model.sample_multistep(x0, method, steps, t_end).clamp(0, 1)

    def predict_invert(self, model: OneStepLinearizer, x1: Tensor, solve: str) -> Tensor:
        _require_B(model, "invert")
        return invert(model, x1, solve)

    def predict_reconstruct(self, model: OneStepLinearizer, x1: Tensor, solve: str) -> Tensor:
        _require_B(model, "reconstruct")
        return reconstruct(model, x1, solve).clamp(0, 1)

    def predict_interpolate(self, model: OneStepLinearizer, x: Tensor, n: int, space: str, solve: str) -> Tensor:
        if space == "noise":
            _require_B(model, "interpolate")
        return interpolate(model, x[0:1], x[1:2], n, space, solve).clamp(0, 1)


KIND = register_kind(OneStepKind())
