"""`OneStepLinearizer`: flow matching in the latent of one shared invertible network.

One network `g` serves both ends of the path (method.md §2): `g_y = g(., role 0)` encodes noise,
`g_x = g(., role 1)` encodes data, and the latent has the image's shape. A time-dependent
low-rank `A(t) = U(t) V(t)^T` predicts the data code from a point of the straight latent path
`z_t = (1 - t) z0 + t z1`, which gives the linear latent ODE `dz/dt = (A(t) - I) z / (1 - t)`.

Its T-step solution is one matrix `B` (see `collapse.py`); the model caches `B` in persistent
buffers, so it is saved and loaded with the weights, and samples in one step:

    x = g_x^{-1}(B g_y(x0))

Data enter `g_x` as they are, in [0, 1]: there is no rescaling to [-1, 1], because the first
ActNorm of each role standardises its inputs per channel on first use (data-dependent init).

Example:
    >>> model = OneStepLinearizer(ModelConfig(image_shape=(1, 32, 32)))
    >>> model.initialize(x1)                          # ActNorm init on a data batch
    >>> ...                                           # training (training.fit)
    >>> model.build_B()                               # cfg.sampler: RK4, 100 steps
    >>> x = model.sample(torch.randn(16, 1, 32, 32))  # one step
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import check_images
from ..config import ModelConfig
from ..flows import build_maps
from ..linearizer import Linearizer
from ..operators.dense import Dense
from ..operators.identity_lowrank import IdentityPlusLowRank
from ..operators.time_lowrank import TimeLowRank
from .collapse import collapse
from .samplers import METHODS, integrate, make_grid


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of `x`'s shape, dtype and device, drawn from `generator`.

    The generator may live on another device than `x` (a CPU generator for a GPU batch): the
    noise is drawn where the generator is and moved.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


@dataclass(frozen=True)
class SamplerSpec:
    """What a cached `B` collapses: `steps` steps of `method` from t = 0 to `t_end`."""

    method: str
    steps: int
    t_end: float


class OneStepLinearizer(nn.Module):
    """Shared role-flag flow `g` + time-dependent low-rank `A(t)` + the cached propagator `B`.

    Args:
        cfg: the model config (`image_shape`, `flow`, `operator`, `sampler`). Defaults match the
            reference: MNIST 1x32x32, flow depth 4, rank 8.

    Attributes:
        g_x, g_y: the data (role 1) and noise (role 0) maps of one shared network.
        A: `TimeLowRank(d, rank)`, `d = C * H * W`.
        B_b, B_P, B_Q: the cached `B = b I + P Q^T` (empty P, Q when unbuilt or dense).
        B_W: the cached dense `B [d, d]` when the dense form was chosen (else `[0, 0]`).
        B_spec: int64 `[method, steps, t_end as float64 bits]`, empty when B is not built.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.chw()
        self.d = math.prod(self.image_shape)
        self.g_x, self.g_y = build_maps(self.image_shape, cfg.flow)
        op = cfg.operator
        self.A = TimeLowRank(self.d, op.rank, embed_dim=op.time_embed_dim, hidden=op.hidden)
        # B is data computed from the weights, not a parameter: buffers are saved, follow
        # .to(), and may change shape on load (linearizer.io), as B's rank is known only once built.
        self.register_buffer("B_b", torch.zeros(()))
        self.register_buffer("B_P", torch.zeros(self.d, 0))
        self.register_buffer("B_Q", torch.zeros(self.d, 0))
        self.register_buffer("B_W", torch.zeros(0, 0))
        self.register_buffer("B_spec", torch.zeros(0, dtype=torch.long))

    # ----- codes -----

    def flat(self, z: Tensor) -> Tensor:
        """Image-shaped codes `[B, C, H, W]` as the `[B, d]` rows operators act on."""
        return z.reshape(z.shape[0], self.d)

    def unflat(self, z: Tensor) -> Tensor:
        """`[B, d]` rows back to image-shaped codes."""
        return z.reshape(z.shape[0], *self.image_shape)

    def encode_noise(self, x0: Tensor) -> Tensor:
        """`z0 = g_y(x0)`: noise `[B, C, H, W]` to its code (same shape)."""
        return self.g_y(x0)

    def encode_data(self, x1: Tensor) -> Tensor:
        """`z1 = g_x(x1)`: images in [0, 1] to their codes."""
        return self.g_x(x1)

    def decode_data(self, z1: Tensor) -> Tensor:
        """`g_x^{-1}(z1)`: codes to images (not clamped)."""
        return self.g_x.inverse(z1)

    def decode_noise(self, z0: Tensor) -> Tensor:
        """`g_y^{-1}(z0)`: codes to noise."""
        return self.g_y.inverse(z0)

    @torch.no_grad()
    def initialize(self, x1: Tensor, generator: torch.Generator | None = None) -> None:
        """Run the data-dependent ActNorm init of both roles on a data batch and fresh noise.

        Training does this by itself on its first batch; call it before using an untrained
        model (tests, smoke runs). Roles already initialised are left as they are.
        """
        was_training = self.training
        self.train()
        self.encode_noise(noise_like(x1, generator))
        self.encode_data(x1)
        self.train(was_training)

    # ----- the collapsed propagator B -----

    @property
    def has_B(self) -> bool:
        return self.B_spec.numel() > 0

    @property
    def B_info(self) -> SamplerSpec | None:
        """What the cached B collapses, or None when it is not built."""
        if not self.has_B:
            return None
        method, steps = METHODS[int(self.B_spec[0])], int(self.B_spec[1])
        # t_end is stored as the bits of a float64 so that .to(float32) cannot round it
        t_end = float(self.B_spec[2:3].view(torch.float64))
        return SamplerSpec(method, steps, t_end)

    @torch.no_grad()
    def build_B(self, method: str | None = None, steps: int | None = None, t_end: float | None = None,
                compress_tol: float | None = None, dense: bool | None = None) -> IdentityPlusLowRank | Dense:
        """Collapse the sampler into `B` (in float64) and cache it in the model's buffers.

        Run it once after training (the kind's `finalize` does); B is a snapshot of the current
        weights, so rebuild it after any further training.

        Args:
            method, steps, t_end, compress_tol: default to `cfg.sampler`.
            dense: force the dense (True) or low-rank (False) form; None chooses (see `collapse`).

        Returns:
            The float64 operator that was cached (in the model's dtype).
        """
        s = self.cfg.sampler
        method = s.method if method is None else method
        steps = s.steps if steps is None else steps
        t_end = make_grid(method, steps, s.t_end if t_end is None else t_end).t_end
        tol = s.compress_tol if compress_tol is None else compress_tol
        B = collapse(self, method, steps, t_end, dtype=torch.float64, compress_tol=tol, dense=dense)
        dtype, device = self.B_b.dtype, self.B_b.device
        if isinstance(B, Dense):
            b, P, Q, W = torch.zeros(()), torch.zeros(self.d, 0), torch.zeros(self.d, 0), B.W
        else:
            b, P, Q, W = B.b, B.P, B.Q, torch.zeros(0, 0)
        self.B_b, self.B_P, self.B_Q, self.B_W = (t.to(dtype=dtype, device=device) for t in (b, P, Q, W))
        t_end_bits = torch.tensor([t_end], dtype=torch.float64).view(torch.long)
        self.B_spec = torch.cat([torch.tensor([METHODS.index(method), steps]), t_end_bits]).to(device)
        return B

    def clear_B(self) -> None:
        """Forget the cached B (e.g. before further training)."""
        self.B_b, self.B_P, self.B_Q = torch.zeros_like(self.B_b), self.B_P[:, :0], self.B_Q[:, :0]
        self.B_W, self.B_spec = self.B_W[:0, :0], self.B_spec[:0]

    def B_operator(self) -> IdentityPlusLowRank | Dense:
        """The cached B as an operator (in the model's dtype)."""
        self._require_B()
        if self.B_W.numel():
            return Dense(self.B_W, trainable=False)
        return IdentityPlusLowRank(self.B_b, self.B_P, self.B_Q)

    def as_linearizer(self, t: float | None = None) -> Linearizer:
        """The one-step map as a `Linearizer(g_y, B, g_x)`, sharing this model's modules (no copy).

        Its forward is one-step sampling, `g_x^{-1}(B g_y(x0))`, so all of the Linearizer's linear
        algebra (`transpose`, `pinv`, `svd`, `range_basis`, ...) applies to the sampler.

        Args:
            t: None for the collapsed B (built by `build_B`); a time in [0, 1] for `A(t)`, the
                learned one-step prediction of the data code from the code at t (at t = 0 the
                direct noise-to-data prediction).

        Example:
            >>> L = model.as_linearizer()
            >>> torch.testing.assert_close(L(x0), model.sample(x0))
            >>> U, S, V = L.svd(8)          # the sampler's top directions, as images
        """
        A = self.B_operator() if t is None else self.A.at(t)
        return Linearizer(self.g_y, A, self.g_x, self.image_shape)

    def _require_B(self) -> None:
        if not self.has_B:
            raise RuntimeError("the collapsed operator B is not built: call model.build_B() after training "
                               "(the 'onestep' kind's finalize does)")

    def apply_B(self, z0: Tensor) -> Tensor:
        """`B z0` on flat rows `[B, d]`: O(d * rank) low-rank, O(d^2) dense."""
        self._require_B()
        if self.B_W.numel():
            return z0 @ self.B_W.T
        return self.B_b * z0 + (z0 @ self.B_Q) @ self.B_P.T

    # ----- sampling -----

    def check_noise(self, x0: Tensor, what: str = "x0") -> Tensor:
        """Raise a ValueError unless `x0` is finite noise `[B, C, H, W]` of the model's dtype and device."""
        return check_images(x0, self.image_shape, what, like=self.B_b)

    def check_data(self, x1: Tensor, what: str = "x1") -> Tensor:
        """Raise a ValueError unless `x1` are images `[B, C, H, W]` in [0, 1] of the model's dtype and device."""
        return check_images(x1, self.image_shape, what, like=self.B_b, unit_range=True)

    def sample(self, x0: Tensor) -> Tensor:
        """One-step generation `x = g_x^{-1}(B g_y(x0))` from noise `x0 [B, C, H, W]`.

        Raises:
            ValueError: `x0` malformed (shape, dtype, device) or not finite.
            RuntimeError: B is not built.
        """
        self._require_B()
        self.check_noise(x0)
        return self.decode_data(self.unflat(self.apply_B(self.flat(self.encode_noise(x0)))))

    def sample_multistep(self, x0: Tensor, method: str | None = None, steps: int | None = None,
                         t_end: float | None = None) -> Tensor:
        """T-step integration of the latent ODE from `g_y(x0)`, decoded by `g_x^{-1}`.

        Args:
            x0: noise `[B, C, H, W]`.
            method, steps, t_end: default to `cfg.sampler`.

        Raises:
            ValueError: `x0` malformed or not finite, or bad sampler settings.
        """
        self.check_noise(x0)
        s = self.cfg.sampler
        z0 = self.flat(self.encode_noise(x0))
        z1 = integrate(self.A, z0, s.method if method is None else method, s.steps if steps is None else steps,
                       s.t_end if t_end is None else t_end)
        return self.decode_data(self.unflat(z1))

    def extra_repr(self) -> str:
        info = self.B_info
        built = "not built" if info is None else (
            f"{info.method} x{info.steps} to t={info.t_end:.4g}, "
            + (f"dense {tuple(self.B_W.shape)}" if self.B_W.numel() else f"rank {self.B_P.shape[1]}"))
        return f"image_shape={self.image_shape}, d={self.d}, B: {built}"
