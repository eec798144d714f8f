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

from typing import Literal, Union, overload

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


def role_index(role: Role, batch: int, num_roles: int, device: torch.device) -> Tensor:
    """The `[B]` role indices a block with `num_roles` role slots uses.

    A block with a single slot does not condition on the role: every role maps to slot 0.

    Args:
        role: None, an int or a `[B]` tensor of role flags.
        batch: the batch size B.
        num_roles: how many roles the block holds weights for.
        device: where the result lives.

    Returns:
        A `[B]` long tensor with values in `[0, num_roles)`.

    Raises:
        ValueError: a role outside `[0, num_roles)` for a block with several slots.
    """
    if num_roles == 1:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(role, int) and not 0 <= role < num_roles:
        raise ValueError(f"role must lie in [0, {num_roles}), got {role}")
    index = role_tensor(role, batch, device)
    if isinstance(role, Tensor) and bool(((index < 0) | (index >= num_roles)).any()):
        raise ValueError(f"role must lie in [0, {num_roles}), got values {sorted(set(index.tolist()))}")
    return index


def check_channels(x: Tensor, channels: int, block: str) -> None:
    """Raise a ValueError unless `x` is `[B, channels, H, W]` or `[B, channels]`."""
    if x.dim() not in (2, 4) or x.shape[1] != channels:
        raise ValueError(
            f"{block} expects [B, {channels}, H, W] or [B, {channels}] input, got shape {tuple(x.shape)}"
        )


class InvertibleModule(nn.Module):
    """Base class of invertible blocks.

    Subclasses implement `_forward(x, role) -> (y, logdet)` and `_inverse(y, role) -> x`, where
    `logdet` is a `[B]` tensor (log |det dy/dx| per sample). Inputs are `[B, C, H, W]` images or
    `[B, d]` vectors, in float32 or float64. Callers use `block(x, role)` and
    `block.inverse(y, role)`.

    Both directions run through `nn.Module.__call__` (`inverse` is `block(y, role, reverse=True)`),
    so a block's forward hooks fire whichever way it is run. Parameter managers that materialise
    a module's weights in a forward pre-hook and free them in a forward hook (DeepSpeed ZeRO-3,
    offloading hooks) then see every use of the weights, decoding passes included. Without hooks
    `__call__` goes straight to `forward`: the numbers and the cost are those of calling
    `_forward` / `_inverse` directly.
    """

    @overload
    def forward(self, x: Tensor, role: Role = None, reverse: Literal[False] = False) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(self, x: Tensor, role: Role = None, reverse: Literal[True] = ...) -> Tensor: ...

    def forward(self, x: Tensor, role: Role = None, reverse: bool = False) -> tuple[Tensor, Tensor] | Tensor:
        """Encode `x` (`reverse=False`: `(y, logdet)`) or decode it (`reverse=True`: the input `x`
        of `_forward` that gives this output)."""
        return self._inverse(x, role) if reverse else self._forward(x, role)

    def inverse(self, y: Tensor, role: Role = None) -> Tensor:
        """The exact inverse: `block.inverse(block(x, role)[0], role) == x` to float round-off."""
        return self(y, role, reverse=True)

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:  # pragma: no cover
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
