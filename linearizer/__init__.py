"""linearizer: `f(x) = g_y^-1(A g_x(x))`, exactly linear between the spaces induced by `g_x`, `g_y`.

Example:
    >>> from linearizer import Linearizer, build_maps, LowRank, FlowConfig
    >>> g_x, g_y = build_maps((1, 8, 8), FlowConfig(depth=2, hidden=16))
    >>> f = Linearizer(g_x, LowRank.random(64, 64, 4), g_y, x_shape=(1, 8, 8))
"""

from .config import ConfigError, FlowConfig, LossConfig, ModelConfig, OperatorConfig, SamplerConfig, TrainConfig
from .flows import InvertibleMap, build_flow, build_maps
from .io import load_model, save_model
from .kinds import get_kind, register_kind
from .linearizer import InducedSVD, Linearizer
from .operators import Dense, IdentityPlusLowRank, LowRank, Projector, TimeLowRank
from .spaces import InducedSpace

__all__ = [
    "ConfigError", "FlowConfig", "LossConfig", "ModelConfig", "OperatorConfig", "SamplerConfig", "TrainConfig",
    "InvertibleMap", "build_flow", "build_maps", "load_model", "save_model", "get_kind", "register_kind",
    "InducedSVD", "Linearizer", "InducedSpace", "Dense", "IdentityPlusLowRank", "LowRank", "Projector",
    "TimeLowRank",
]
