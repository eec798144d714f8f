"""The projective model's recommended configuration.

The loss weights are the kind's own defaults (`objective.LOSS_WEIGHTS`, the pixel term first),
filled in by `ModelConfig` like every kind's.

The flow's coupling log-scales are clamped to +-1 (the library default, used by the one-step model, is +-2). Idempotency is
exact in exact arithmetic; in floating point `f(f(x)) - f(x)` is the round-off of
`g(g^-1(z)) = z` amplified by the condition number of `g`, which grows like `exp(2 * clamp)` per
coupling on inputs that saturate the scales (large or constant images). With +-5 a perturbed
random network already loses idempotency to 1e-2 in float64 on constant images; with +-1 it stays
at round-off (1e-13) on every input we tried, and the shifts, which are unbounded, carry the
expressiveness.
"""

from __future__ import annotations

from ..config import FlowConfig, ModelConfig, OperatorConfig, validate
from .objective import LOSS_WEIGHTS

__all__ = ["CLAMP", "LOSS_WEIGHTS", "projective_config"]

#: bound on the coupling log-scales of `g` (see above).
CLAMP = 1.0


def projective_config(rank: int = 16, symmetric: bool = True, depth: int = 4, hidden: int = 32,
                      image_shape: tuple[int, int, int] = (1, 32, 32), clamp: float = CLAMP) -> ModelConfig:
    """A validated `ModelConfig` of kind "projective" with the recommended loss weights.

    Args:
        rank: k, the dimension of the code space (`range P`).
        symmetric: orthogonal projector (True, the default) or oblique.
        depth, hidden: the flow's blocks and conditioner width.
        clamp: bound on the flow's coupling log-scales.
        image_shape: (C, H, W).

    Example:
        >>> cfg = projective_config(rank=64)
        >>> cfg.kind, cfg.operator.rank, cfg.loss.weights["pixel"]
        ('projective', 64, 10.0)
    """
    cfg = ModelConfig(
        kind="projective",
        image_shape=image_shape,
        flow=FlowConfig(depth=depth, hidden=hidden, clamp=clamp, shared=True),
        operator=OperatorConfig(rank=rank, symmetric=symmetric),
    )
    validate(cfg)
    return cfg
