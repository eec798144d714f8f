"""The contract every invertible block obeys, and the bound map `g` a Linearizer holds.

A block maps a tensor to a tensor of the same number of elements and can be undone exactly:
`block.inverse(block(x, role)[0], role) == x` to float round-off. Blocks return the
log-determinant of their Jacobian per sample (it is cheap for every block we ship, and a flow
prior or likelihood term can use it).

`role` tells one set of weights which map it is: the paper shares a single network between
`g_y` (role 0, noise) and `g_x` (role 1, data). Blocks that do not condition on the role accept
and ignore it.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

Role = Union[int, Tensor, None]


def role_tensor(role: Role, batch: int, device: torch.device) -> Tensor:
    """Normalise a role flag to a `[B]` long tensor.

    Args:
        role: None (treated as 0), an int, or a `[B]` / scalar tensor of role indices.
        batch: the batch size B.
        device: where the result lives.

    Returns:
        A `[B]` long tensor of role indices.
    """
    if role is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(role, int):
        return torch.full((batch,), role, dtype=torch.long, device=device)
    role = torch.as_tensor(role, device=device)
    if role.dim() == 0:
        return role.long().expand(batch)
    if role.shape != (batch,):
        raise ValueError(f"role must be an int or a [B]={batch} tensor, got shape {tuple(role.shape)}")
    return role.long()


class InvertibleModule(nn.Module):
    """Base class of invertible blocks.

    Subclasses implement `forward(x, role) -> (y, logdet)` and `inverse(y, role) -> x`, where
    `logdet` is a `[B]` tensor (log |det dy/dx| per sample). Inputs are `[B, C, H, W]` images or
    `[B, d]` vectors, in float32 or float64.
    """

    def forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: Tensor, role: Role = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class InvertibleMap(nn.Module):
    """A network bound to one role: the `g_x` or `g_y` of a Linearizer.

    `g(x)` encodes, `g.inverse(z)` decodes. Two maps are "the same map" when they wrap the same
    module object with the same role; only then may Linearizers that meet at them be composed.

    Args:
        net: the invertible network (any `InvertibleModule`).
        role: the role flag this map passes to `net`.

    Example:
        >>> g_x, g_y = InvertibleMap(flow, role=1), InvertibleMap(flow, role=0)
        >>> z = g_x(x); x_back = g_x.inverse(z)
    """

    def __init__(self, net: InvertibleModule, role: int = 0):
        super().__init__()
        self.net = net
        self.role = int(role)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.role)[0]

    def forward_and_logdet(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x, self.role)

    def inverse(self, z: Tensor) -> Tensor:
        return self.net.inverse(z, self.role)

    def same_map(self, other: "InvertibleMap") -> bool:
        return self.net is other.net and self.role == other.role

    def extra_repr(self) -> str:
        return f"role={self.role}"
