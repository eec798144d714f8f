"""Baselines the Linearizer models are measured against.

Importing this package registers their model kinds (they are not among the kinds
`linearizer.kinds` imports on demand), after which `get_kind("fm_baseline")` and the training
loop `linearizer.training.fit` treat them like any other kind.

Example:
    >>> import linearizer.baselines
    >>> kind = get_kind("fm_baseline")
    >>> model = kind.build(ModelConfig(kind="fm_baseline"))
"""

from .flow_matching import (
    FlowMatchingBaseline,
    FlowMatchingKind,
    VelocityUNet,
    flow_matching_loss,
    integrate_velocity,
)

__all__ = [
    "FlowMatchingBaseline",
    "FlowMatchingKind",
    "VelocityUNet",
    "flow_matching_loss",
    "integrate_velocity",
]
