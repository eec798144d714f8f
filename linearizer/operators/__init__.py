"""Linear operators `A`: the linear core of a Linearizer `g_y^-1(A g_x(x))`.

Every operator follows the contract of `base.LinearOperator` (row-vector convention:
`A.apply(z) == z @ A.materialize().T`) and composes with `@`, `+`, `*` and `.T`.
"""

from .algebra import Product, Scaled, Sum, Transposed
from .base import LinearOperator
from .dense import Dense
from .depthwise import DepthwiseConv
from .identity_lowrank import IdentityPlusLowRank
from .lowrank import LowRank
from .projector import Projector
from .time_lowrank import TimeLowRank, sinusoidal_embedding

__all__ = [
    "LinearOperator",
    "Dense",
    "LowRank",
    "IdentityPlusLowRank",
    "TimeLowRank",
    "sinusoidal_embedding",
    "Projector",
    "DepthwiseConv",
    "Product",
    "Sum",
    "Scaled",
    "Transposed",
]
