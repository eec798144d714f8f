"""A model kind that breaks on purpose: the one-step Linearizer whose coupling scales explode.

`exploding` is the real "onestep" kind, except that at training step `EXPLODE_AT_STEP` (before
that step's loss) it multiplies the weights of every coupling conditioner by 1e30, as a
diverging optimiser would. The coupling shifts become ~1e30 and the codes overflow, so the loss
is NaN or infinite from that step on. The step is counted in a persistent buffer, which
checkpoints save and restores bring back, so a resumed run explodes at the same step again.

Registered on import: jobs name it with `imports: ["tests.reliability.faulty_kinds"]` and
`model.kind: exploding`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linearizer.config import ModelConfig
from linearizer.flows.coupling import AffineCoupling
from linearizer.kinds import register_kind
from linearizer.onestep.kind import OneStepKind
from linearizer.onestep.model import OneStepLinearizer

#: the 1-based training step whose loss is the first non-finite one.
EXPLODE_AT_STEP = 5
#: what the conditioner weights are multiplied by.
BLOW_UP = 1e30


def explode_coupling_scales(model: torch.nn.Module, factor: float = BLOW_UP) -> int:
    """Multiply every coupling conditioner's parameters by `factor` in place; returns how many
    coupling layers were hit."""
    hit = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AffineCoupling):
                for p in module.net.parameters():
                    p.mul_(factor).add_(factor)  # zero-initialised output layers must blow up too
                hit += 1
    return hit


class ExplodingOneStep(OneStepLinearizer):
    """`OneStepLinearizer` plus a persistent counter of optimiser steps taken."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))


class ExplodingKind(OneStepKind):
    """The "onestep" hooks; `loss` blows the coupling scales up at step `EXPLODE_AT_STEP`."""

    name = "exploding"

    def build(self, cfg: ModelConfig) -> ExplodingOneStep:
        return ExplodingOneStep(cfg)

    def loss(self, model: ExplodingOneStep, batch: dict[str, Tensor], generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        if torch.is_grad_enabled():  # the pipeline's no-grad initialisation pass is not a step
            model.steps_taken += 1
            if int(model.steps_taken) == EXPLODE_AT_STEP:
                explode_coupling_scales(model)
        return super().loss(model, batch, generator)


KIND = register_kind(ExplodingKind())
