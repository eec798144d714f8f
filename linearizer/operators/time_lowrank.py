"""`TimeLowRank`: a time-dependent low-rank operator `A(t) = U(t) V(t)^T`.

The factors come from a small MLP of a sinusoidal embedding of t (the one-step flow-matching
operator). In a training batch every sample has its own t; at sampling time t is shared across
the batch, so `apply` runs the MLP once per distinct t, not once per sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_time
from .base import LinearOperator, check_batch
from .lowrank import LowRank


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of times `t` (the transformer / diffusion position embedding).

    Frequencies are geometric from 1 down to `1 / max_period`; `t` in [0, 1] is first multiplied
    by `scale` so that the fastest feature turns many times over the unit interval.

    Args:
        t: times, any shape `[...]`.
        dim: the embedding width (an odd width gets one zero column).
        max_period: the slowest period, in units of `scale * t`.
        scale: the factor applied to t.

    Returns:
        `[..., dim]`: `cos` of each frequency, then `sin`; floating dtype of `t` (float32 for
        integer t).

    Example:
        >>> sinusoidal_embedding(torch.tensor([0.0, 0.5]), 8).shape
        torch.Size([2, 8])
    """
    if dim < 1:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / max(half, 1))
    args = scale * t[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], -1)
    return emb


class TimeLowRank(LinearOperator):
    """`A(t) = U(t) V(t)^T` on R^d, with `U(t), V(t) [d, r]` emitted by an MLP of `t`.

    MLP: embedding -> Linear -> SiLU -> Linear -> SiLU -> LayerNorm -> Linear(2 d r). The
    LayerNorm and an output layer initialised with `N(0, 1/hidden)` weights and zero bias make
    the raw factor entries roughly `N(0, 1)` at initialisation; the factors are then scaled by
    `(d r)^(-1/4)` each, so `A(t) = raw_U raw_V^T / sqrt(d r)` and `A(t) z` has entries of
    about unit variance for `z ~ N(0, I)` (zero mean over initialisations).

    Args:
        d: the dimension (A(t) is d x d).
        rank: r.
        embed_dim: width of the sinusoidal embedding of t.
        hidden: width of the MLP.

    Example:
        >>> A = TimeLowRank(64, 4)
        >>> z, t = torch.randn(8, 64), torch.rand(8)
        >>> A.apply(z, t).shape                 # one MLP row per distinct t
        torch.Size([8, 64])
        >>> A.at(0.5).pinv()                    # a LowRank snapshot of A(0.5)
    """

    def __init__(self, d: int, rank: int, embed_dim: int = 64, hidden: int = 128):
        super().__init__()
        for name, value in (("d", d), ("rank", rank), ("embed_dim", embed_dim), ("hidden", hidden)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"TimeLowRank expects a positive int {name}, got {value!r}")
        self.d, self.r, self.embed_dim, self.hidden = d, rank, embed_dim, hidden
        out = nn.Linear(hidden, 2 * d * rank)
        nn.init.normal_(out.weight, std=hidden**-0.5)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.LayerNorm(hidden), out,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.d)

    @property
    def rank(self) -> int:
        return self.r

    def _times(self, t: float | Tensor) -> Tensor:
        ref = self.mlp[0].weight
        # straight to the weights' dtype: a float t through float32 would lose digits in float64
        return torch.as_tensor(t, dtype=ref.dtype, device=ref.device)

    def factors(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The factors at K times, with `A(t_k) = U[k] @ V[k].T` exactly (normalisation included).

        Args:
            t: `[K]` times.

        Returns:
            `(U [K, d, r], V [K, d, r])`.
        """
        t = self._times(t)
        if t.dim() != 1:
            raise ValueError(f"factors expects a [K] tensor of times, got shape {tuple(t.shape)}")
        raw = self.mlp(sinusoidal_embedding(t, self.embed_dim)).view(t.shape[0], 2, self.d, self.r)
        raw = raw * (self.d * self.r) ** -0.25
        return raw[:, 0], raw[:, 1]

    def at(self, t: float | Tensor) -> LowRank:
        """`A(t)` at one time as a LowRank snapshot.

        The factors are buffers computed from the current weights: gradients flow through them
        to the MLP, but later changes of the weights do not show in the snapshot.

        Raises:
            ValueError: `t` is not one finite time (a NaN time would give NaN factors).
        """
        t = self._times(t)
        if t.numel() != 1:
            raise ValueError(f"at expects one time (a float or a 0-dim tensor), got shape {tuple(t.shape)}")
        check_time(t, "at: t")
        U, V = self.factors(t.reshape(1))
        return LowRank(U[0], V[0], trainable=False)

    def _per_sample(self, x: Tensor, t: float | Tensor | None, transpose: bool) -> Tensor:
        what = "transpose input" if transpose else "input"
        if t is None:
            raise TypeError(f"TimeLowRank.{'apply_transpose' if transpose else 'apply'} needs the time t: "
                            f"call it as A.{'apply_transpose' if transpose else 'apply'}(z, t), or use A.at(t)")
        check_batch(x, self.d, self, what, self.mlp[0].weight.dtype)
        t = self._times(t)
        if t.dim() == 0:
            U, V = self.factors(t.reshape(1))
            left, right = (V[0], U[0]) if transpose else (U[0], V[0])
            return (x @ right) @ left.T
        if t.shape != (x.shape[0],):
            raise ValueError(f"TimeLowRank expects t as a float, a 0-dim tensor or a [B]={x.shape[0]} tensor, "
                             f"got shape {tuple(t.shape)}")
        times, index = torch.unique(t, return_inverse=True)  # one MLP row per distinct t
        U, V = self.factors(times)
        left, right = (V, U) if transpose else (U, V)
        if times.numel() == 1:
            return (x @ right[0]) @ left[0].T
        w = torch.einsum("bd,bdr->br", x, right[index])
        return torch.einsum("br,bdr->bd", w, left[index])

    def apply(self, z: Tensor, t: float | Tensor | None = None) -> Tensor:
        """`A(t) z` per sample.

        Args:
            z: `[B, d]`.
            t: a float, a 0-dim tensor (shared by the batch) or a `[B]` tensor of times.

        Returns:
            `[B, d]`.

        Raises:
            TypeError: when t is missing (a time-dependent operator has no `A z`).
        """
        return self._per_sample(z, t, transpose=False)

    def apply_transpose(self, y: Tensor, t: float | Tensor | None = None) -> Tensor:
        """`A(t)^T y` per sample; t as in `apply`."""
        return self._per_sample(y, t, transpose=True)

    def forward(self, z: Tensor, t: float | Tensor | None = None) -> Tensor:
        return self.apply(z, t)

    def materialize(self, t: float | Tensor | None = None) -> Tensor:
        """The dense `[d, d]` matrix of `A(t)` (needs t)."""
        if t is None:
            raise TypeError("TimeLowRank.materialize needs the time t; A.at(t) gives A(t) as a LowRank "
                            "with materialize, pinv and svd")
        return self.at(t).materialize()

    def extra_repr(self) -> str:
        return f"shape=({self.d}, {self.d}), rank={self.r}, embed_dim={self.embed_dim}, hidden={self.hidden}"
