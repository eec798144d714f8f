"""Invertible networks `g`: the blocks, the flow that chains them, and the builders of `g_x`, `g_y`.

Example:
    >>> from linearizer.config import FlowConfig
    >>> from linearizer.flows import build_maps
    >>> g_x, g_y = build_maps((1, 32, 32), FlowConfig(depth=2, hidden=16))
    >>> z = g_x(images)              # encode data (role 1)
    >>> images_back = g_x.inverse(z)
"""

from .actnorm import ActNorm
from .base import InvertibleMap, InvertibleModule, Role, check_channels, role_index, role_tensor
from .conditioners import MLPConditioner, UNetConditioner
from .conv1x1 import InvConv1x1
from .coupling import AffineCoupling
from .flow import Flow, build_flow, build_maps
from .split import Split
from .squeeze import Squeeze, Unsqueeze

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Flow",
    "InvConv1x1",
    "InvertibleMap",
    "InvertibleModule",
    "MLPConditioner",
    "Role",
    "Split",
    "Squeeze",
    "UNetConditioner",
    "Unsqueeze",
    "build_flow",
    "build_maps",
    "check_channels",
    "role_index",
    "role_tensor",
]
