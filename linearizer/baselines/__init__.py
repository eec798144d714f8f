"""Baselines the Linearizer models are measured against.

The flow-matching baseline is a kind the library ships: `get_kind("fm_baseline")` imports
`linearizer.baselines.flow_matching` on first use (no import of this package needed), and the
training loop `linearizer.training.fit`, the pipelines and the registry treat it like any other
kind.

Example:
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
