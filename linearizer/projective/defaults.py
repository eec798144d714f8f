"""The projective model's recommended configuration.

`LossConfig`'s defaults (every weight 1) are the one-step objective's. The projective terms live
on different scales: a pixel MSE of a good reconstruction is ~1e-2, while a sliced-Wasserstein
term cannot go below its sampling noise (exact N(0, I) samples score 0.041 in batches of 64,
0.022 in batches of 128), so with equal weights the code-matching terms would outweigh the
fixed-point term that makes data reconstructions sharp. The weights below put the pixel term first.

The flow's coupling log-scales are clamped to +-1 (the library default, used by the one-step model, is +-2). Idempotency is
exact in exact arithmetic; in floating point `f(f(x)) - f(x)` is the round-off of
`g(g^-1(z)) = z` amplified by the condition number of `g`, which grows like `exp(2 * clamp)` per
coupling on inputs that saturate the scales (large or constant images). With +-5 a perturbed
random network already loses idempotency to 1e-2 in float64 on constant images; with +-1 it stays
at round-off (1e-13) on every input we tried, and the shifts, which are unbounded, carry the
expressiveness.
"""

from __future__ import annotations

from ..config import FlowConfig, LossConfig, ModelConfig, OperatorConfig, validate

#: loss weights of the projective objective (`objective.py`), measured on MNIST 32x32.
LOSS_WEIGHTS = {"w_data": 10.0, "w_latent": 1.0, "w_prior": 1.0, "w_noise": 1.0}
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
        >>> cfg.kind, cfg.operator.rank, cfg.loss.w_data
        ('projective', 64, 10.0)
    """
    cfg = ModelConfig(
        kind="projective",
        image_shape=image_shape,
        flow=FlowConfig(depth=depth, hidden=hidden, clamp=clamp, shared=True),
        operator=OperatorConfig(rank=rank, symmetric=symmetric),
        loss=LossConfig(**LOSS_WEIGHTS),
    )
    validate(cfg)
    return cfg
