"""ActNorm: a per-channel affine map whose first use sets it to standardise the data.

`y = (x - loc) * exp(log_scale)`, one `(loc, log_scale)` pair per channel and per role. The first
training-mode forward that sees a role sets that role's pair so the batch comes out with zero
mean and unit variance per channel (Glow's data-dependent initialisation); after that the pair is
an ordinary trainable parameter. Which roles are initialised lives in a persistent buffer, so it
is saved and restored with the weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import InvertibleModule, Role, check_channels, role_index


class ActNorm(InvertibleModule):
    """Per-channel affine normalisation with data-dependent initialisation per role.

    Args:
        num_features: channels C of `[B, C, H, W]` input, or features d of `[B, d]` input.
        num_roles: how many roles keep their own `(loc, log_scale)`; 1 ignores the role flag.

    Example:
        >>> norm = ActNorm(3, num_roles=2)
        >>> y, logdet = norm(torch.randn(8, 3, 16, 16), role=1)  # initialises role 1
        >>> x = norm.inverse(y, role=1)
    """

    #: channels whose batch standard deviation is below this keep a unit scale at initialisation
    #: (a constant channel, or a role seen once in flat data, has nothing to standardise).
    eps: float = 1e-6

    def __init__(self, num_features: int, num_roles: int = 1):
        super().__init__()
        if num_features < 1 or num_roles < 1:
            raise ValueError(f"ActNorm needs num_features >= 1 and num_roles >= 1, got {num_features}, {num_roles}")
        self.num_features = num_features
        self.num_roles = num_roles
        self.loc = nn.Parameter(torch.zeros(num_roles, num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_roles, num_features))
        self.register_buffer("initialized", torch.zeros(num_roles, dtype=torch.bool))
        # Python-side copy of `initialized.all()` once it is true: reading the buffer would cost a
        # device sync per call on GPU. Reset whenever a state dict is loaded.
        self._ready = False

    def _all_initialized(self) -> bool:
        if not self._ready:
            self._ready = bool(self.initialized.all())
        return self._ready

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False

    def _params(self, index: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """`loc` and `log_scale` gathered per sample and shaped to broadcast against `x`."""
        view = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        return self.loc[index].view(view), self.log_scale[index].view(view)

    @torch.no_grad()
    def _initialize(self, x: Tensor, index: Tensor) -> None:
        """Standardise every role present in the batch that has no statistics yet."""
        dims = [0] + list(range(2, x.dim()))
        for r in index.unique().tolist():
            if self.initialized[r]:
                continue
            x_r = x[index == r]
            mean = x_r.mean(dim=dims)
            std = x_r.std(dim=dims, unbiased=False)
            self.loc[r] = mean.to(self.loc.dtype)
            log_scale = torch.where(std > self.eps, -torch.log(std.clamp_min(self.eps)), torch.zeros_like(std))
            self.log_scale[r] = log_scale.to(self.log_scale.dtype)
            self.initialized[r] = True

    def _require_initialized(self, index: Tensor, action: str) -> None:
        missing = sorted(set(index.unique().tolist()) - set(self.initialized.nonzero().flatten().tolist()))
        if missing:
            raise RuntimeError(
                f"ActNorm role(s) {missing} not initialised: {action} needs a training-mode forward on data "
                f"of that role first (data-dependent init), or weights loaded from a checkpoint"
            )

    def _forward(self, x: Tensor, role: Role = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.num_features, "ActNorm")
        index = role_index(role, x.shape[0], self.num_roles, x.device)
        if not self._all_initialized():
            if self.training:
                self._initialize(x, index)
            else:
                self._require_initialized(index, "an eval-mode forward")
        loc, log_scale = self._params(index, x)
        y = (x - loc) * torch.exp(log_scale)
        pixels = math.prod(x.shape[2:])  # H * W for images, 1 for vectors
        logdet = pixels * self.log_scale[index].sum(dim=1)
        return y, logdet.to(x.dtype)

    def _inverse(self, y: Tensor, role: Role = None) -> Tensor:
        check_channels(y, self.num_features, "ActNorm")
        index = role_index(role, y.shape[0], self.num_roles, y.device)
        if not self._all_initialized():
            self._require_initialized(index, "the inverse")
        loc, log_scale = self._params(index, y)
        return y * torch.exp(-log_scale) + loc

    def extra_repr(self) -> str:
        done = self.initialized.tolist()
        return f"num_features={self.num_features}, num_roles={self.num_roles}, initialized={done}"
