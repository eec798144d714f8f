"""`ProjectiveModel`: a Linearizer that is a projector, `f(x) = g^-1(P g(x))`, on every input.

One invertible network `g` plays both `g_x` and `g_y` (the same `InvertibleMap` object), and the
core `P` is a `Projector`: `P @ P == P` for every value of its parameters. Then

    f(f(x)) = g^-1(P g(g^-1(P g(x)))) = g^-1(P P g(x)) = f(x)

for every `x` whatsoever (noise, photos, inputs far from any training data), trained or not:
idempotency is a property of the parametrisation, not of the training. The only error left is
float round-off, and in float32 where it stays small is precise:

- The returned `f(x)` is a few ulps off the set `f` projects onto (its rounding to the model's
  dtype and the round-off of one pass), and `f` moves such a point by `(J_f - I) d` with
  `J_f - I = J_g^-1 (P - I) J_g`. So `||f(f(x)) - f(x)|| / ||f(x)||` is at most about
  `eps * ||I - P|| * kappa(J_g(f(x)))`, `kappa` the condition number of g's Jacobian at `f(x)`,
  on any finite input (`uses.idempotency_bound` computes it; measured ratio <= 0.75).
- At the scale the ActNorms were initialised on, `kappa` is a few and the float32 error is below
  1e-6 (tested on inputs with every value in [-1, 2]: uniform and Gaussian noise, constants,
  data-like images). Far outside, the couplings saturate, `kappa` reaches 1e3 to 1e7, and the
  error of the worst images grows with it: 1e-5 to 1e-4 on N(0, 10^2) noise and constant
  images of value 10 to 30, 3e-2 on N(0, 100^2) (measured on small perturbed models;
  docs/projective.md, "Idempotency in float32").
- Evaluating more of `g^-1 P g` in float64 does not shrink the far-out error: the exact float64
  map applied to the float32 `f(x)` moves it as much as the float32 map does. `model.double()`
  does: 1e-15 at the data scale, 1e-13 on N(0, 10^2) and the constants, 3e-11 on N(0, 100^2).

With the symmetric (default) projector `P = Q Q^T`, `f` is the *orthogonal* projection onto the
set `M = g^-1(range P)` in the Hilbert space that `g` induces (`linearizer.spaces`): `f(x)` is the
point of `M` nearest to `x` in the induced distance `||g(x) - g(y)||`, and the residual
`x (-) f(x)` is orthogonal to every element of `M`. An orthogonal projector also has norm 1, so
it never amplifies the round-off of `g` (an oblique one amplifies it by `1 / cos` of the angle
between its range and kernel); `operator.symmetric = false` selects the oblique
`P = U (V^T U)^-1 V^T` instead.

Example:
    >>> model = ProjectiveModel(ModelConfig(kind="projective", operator=OperatorConfig(rank=16)))
    >>> model.initialize(images)              # data-dependent init of g's ActNorms and of P
    >>> y = model(torch.randn(8, 1, 32, 32))  # project noise
    >>> torch.allclose(model(y), y, atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_images
from ..config import ConfigError, ModelConfig
from ..flows import InvertibleMap, build_flow
from ..linearizer import Linearizer
from ..operators.projector import Projector


class ProjectiveModel(nn.Module):
    """`f(x) = g^-1(P g(x))`: one invertible network `g` around an exactly idempotent `P`.

    Args:
        cfg: the model config: `image_shape`, `flow` (the network `g`, built with a single role)
            and `operator` (`rank` is the projector's rank k, `symmetric` its variant).

    Attributes:
        g: the invertible map (`g_x` and `g_y` at once).
        P: the `Projector`, `d x d` of rank k, `d = C * H * W`.
        initialized: persistent flag, True once `initialize` has seen data.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.chw()
        self.d = math.prod(self.image_shape)
        if cfg.operator.rank > self.d:
            raise ConfigError(f"operator.rank is the projector's rank k and must be <= d = {self.d} "
                              f"(image_shape {self.image_shape}), got {cfg.operator.rank}")
        # A single role: g is the same map on both sides of P, which is what makes f a projector
        # (and lets the Linearizer algebra that needs g_x = g_y, eig / power / compose, apply).
        self.g = InvertibleMap(build_flow(self.image_shape, cfg.flow, num_roles=1), role=0)
        self.P = Projector(self.d, cfg.operator.rank, symmetric=cfg.operator.symmetric)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # The unit codes are measured in (see `codes`); fixed at initialisation, never trained.
        self.register_buffer("code_scale", torch.ones(()))

    @property
    def rank(self) -> int:
        """k, the dimension of the code space `range P`."""
        return self.P.k

    # ----- latent coordinates -----

    def encode(self, x: Tensor) -> Tensor:
        """`g(x)` as flat rows `[B, d]`."""
        return self.g(x).reshape(x.shape[0], self.d)

    def decode(self, z: Tensor) -> Tensor:
        """`g^-1(z)` for flat rows `z [B, d]`, as images `[B, C, H, W]`."""
        return self.g.inverse(z.reshape(z.shape[0], *self.image_shape))

    def codes(self, Pz: Tensor) -> Tensor:
        """The k coordinates `[B, k]` of projected latents `Pz [B, d]` in the orthonormal basis
        of `range P` (for `P = Q Q^T`: `Q^T z`), in units of `code_scale`.

        Up to that constant, distances between codes are induced distances between the projected
        images. `code_scale` is the RMS of the data codes at initialisation: it does not change
        `f`, but it lets a loss on codes start from the spread the data already have.
        """
        return (Pz @ self.P.basis()) / self.code_scale

    # ----- the map -----

    def forward(self, x: Tensor) -> Tensor:
        """`f(x) = g^-1(P g(x))` for images `[B, C, H, W]` (not clamped: clamping is not a projection).

        Idempotent on every finite input; in float32, `f(f(x))` equals `f(x)` to 1e-6 relative
        for inputs at the data's scale (values in [-1, 2]) and to `eps * kappa(J_g(f(x)))`
        anywhere (module docstring).

        Raises:
            ValueError: `x` of another shape, dtype or device than the model's, or not finite.
        """
        check_images(x, self.image_shape, "x", like=self.code_scale)
        return self.decode(self.P.apply(self.encode(x)))

    def as_linearizer(self) -> Linearizer:
        """The same map as a `Linearizer(g, P, g)`, sharing this model's modules (no copy).

        Example:
            >>> L = model.as_linearizer()
            >>> L.power(3)(x)          # == model(x): P^3 = P
            >>> vals, vecs = L.eig(4)  # eigenvalue 1 on range f, eigenvectors as images
        """
        return Linearizer(self.g, self.P, self.g, self.image_shape)

    # ----- data-dependent initialisation -----

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Initialise `g`'s ActNorms and `P` from a data batch `x [B, C, H, W]` (once; later calls do nothing).

        The ActNorms standardise the data (their own first-forward init). Then `range P` is set
        to the top-k principal directions (uncentred) of the data codes `g(x)`, so training starts
        from the best rank-k linear reconstruction of the batch rather than from a random
        subspace that loses almost every digit. Directions beyond the batch's rank are random.
        `code_scale` becomes the RMS of the batch's codes.
        """
        if bool(self.initialized):
            return
        was_training = self.training
        self.train()
        z = self.encode(x)
        self.train(was_training)
        _, _, Vh = torch.linalg.svd(z.double(), full_matrices=False)
        k = self.rank
        basis = Vh[: min(k, Vh.shape[0])].T
        if basis.shape[1] < k:
            filler = torch.randn(self.d, k - basis.shape[1], dtype=basis.dtype, device=basis.device)
            filler = filler - basis @ (basis.T @ filler)  # keep the principal directions exact
            basis = torch.cat([basis, filler], dim=1)
        basis = torch.linalg.qr(basis)[0].to(z.dtype)
        if self.P.symmetric:
            self.P.W.copy_(basis)
        else:  # V = U: an orthogonal projector to start, so V^T U = I is perfectly conditioned
            self.P.U.copy_(basis)
            self.P.V.copy_(basis)
        self.code_scale.copy_((z @ basis).square().mean().sqrt().clamp_min(torch.finfo(z.dtype).tiny))
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, rank={self.rank}, symmetric={self.P.symmetric}, "
                f"initialized={bool(self.initialized)}")
