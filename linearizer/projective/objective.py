"""The training objective of the projective model: data are fixed points, projected noise is data-like.

Idempotency needs no loss (`P` is a projector by construction); training only decides *which*
set `M = g^-1(range P)` the model projects onto and how inputs land on it. For data `x` in
[0, 1] and noise `n ~ N(0, I)` of the same shape (drawn fresh every step):

    z = g(x),  Pz = P z,  c = codes(Pz) in R^k;   c_n = codes(P g(n))
    L = w.pixel       * perceptual(x, g^-1(Pz))    (a) pixel fixed point: f(x) = x
      + w.latent      * mean((z - Pz)^2) / s^2     (a) latent fixed point: g(x) in range P
      + w.prior_data  * SW2(c,   N(0, I_k))        (b) data codes follow the reference law
      + w.prior_noise * SW2(c_n, N(0, I_k))        (b) projected-noise codes follow it too

Codes and the latent residual are measured in units of `s = model.code_scale`, the RMS of the
data codes at initialisation (a constant: it anchors the scale as firmly as 1 would, but the
first steps do not have to rescale all of `g` before they can improve anything).

(a) makes data fixed points. The pixel term is the goal itself; the latent term is its
first-order cause (`f(x) - x ~ -J_g^-1 (z - Pz)`) and gives `g` a direct gradient to fold the data
into range P.

(b) makes `f(noise)` data-like. `f(n) = g^-1(Q c_n)` depends on `n` only through its code, and
data are (by (a)) `x ~ g^-1(Q c)`; so if `c_n` and `c` have the same law, `f(n)` has the law of the
(reconstructed) data. Both are matched to one reference, the standard normal on `R^k`, rather
than to each other, for two reasons: the reference fixes the scale of the codes (`f` is
unchanged when `g` scales all codes, so a loss between two learnt code sets could shrink them
without end and ruin the conditioning of `g`), and it asks the data codes to fill a simple
smooth region (as a sliced-Wasserstein autoencoder does), which the noise codes, pushed through
the same network, can then reach. Nothing adds noise to data: noise only enters through its
own code-matching term.

The distance is the sliced 2-Wasserstein distance: codes are projected on random unit
directions, and the sorted projections are compared with the exact quantiles of N(0, 1) (the
law of any unit projection of N(0, I_k)), so the reference costs no sampling noise.

Example:
    >>> loss, terms = projective_loss(model, images, torch.Generator().manual_seed(0))
    >>> sorted(terms)
    ['latent', 'loss', 'pixel', 'prior_data', 'prior_noise']
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import LossConfig, resolve_loss_weights
from ..perceptual import get_perceptual
from .model import ProjectiveModel

TERMS = ("pixel", "latent", "prior_data", "prior_noise")
#: the kind's loss weights (term -> default), measured on MNIST 32x32: its section of
#: `loss.weights` (`KindSpec.loss_weights`). The terms live on different scales: a pixel MSE of a
#: good reconstruction is ~1e-2, while a sliced-Wasserstein term cannot go below its sampling
#: noise (exact N(0, I) samples score 0.041 in batches of 64, 0.022 in batches of 128), so with
#: equal weights the code-matching terms would outweigh the fixed-point term that makes data
#: reconstructions sharp. These weights put the pixel term first.
LOSS_WEIGHTS = {"pixel": 10.0, "latent": 1.0, "prior_data": 1.0, "prior_noise": 1.0}
#: the legacy `LossConfig` field that weighted each term.
LEGACY_LOSS_WEIGHTS = {"w_data": "pixel", "w_latent": "latent", "w_prior": "prior_data", "w_noise": "prior_noise"}

#: random directions per sliced-Wasserstein estimate; enough that k = 64 codes are well covered.
NUM_DIRECTIONS = 128


def gaussian_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """`N(0, I)` noise of `like`'s shape, dtype and device, drawn where `generator` lives."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def sliced_wasserstein_gaussian(c: Tensor, num_directions: int = NUM_DIRECTIONS,
                                generator: torch.Generator | None = None) -> Tensor:
    """Squared sliced 2-Wasserstein distance between the empirical law of `c` and `N(0, I_k)`.

    Args:
        c: codes `[B, k]`, B >= 2.
        num_directions: random unit directions averaged over.
        generator: source of the directions.

    Returns:
        A scalar: the mean over directions `u` and ranks `i` of `(sort(c u)_i - q_i)^2`, with
        `q_i = Phi^-1((i + 1/2) / B)` the quantiles of N(0, 1). Zero only when every projection of
        the batch sits exactly on those quantiles.

    Example:
        >>> sliced_wasserstein_gaussian(torch.randn(512, 8)) < 0.05
        tensor(True)
    """
    if c.dim() != 2 or c.shape[0] < 2:
        raise ValueError(f"codes must be a [B, k] tensor with B >= 2, got shape {tuple(c.shape)}")
    B, k = c.shape
    device = generator.device if generator is not None else c.device
    u = torch.randn(k, num_directions, generator=generator, dtype=c.dtype, device=device).to(c.device)
    u = u / u.norm(dim=0, keepdim=True)
    projected = (c @ u).sort(dim=0).values
    levels = (torch.arange(B, dtype=c.dtype, device=c.device) + 0.5) / B
    quantiles = torch.special.ndtri(levels)[:, None]
    return (projected - quantiles).square().mean()


def projective_loss(model: ProjectiveModel, x: Tensor, generator: torch.Generator | None = None,
                    cfg: LossConfig | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one data batch and its four terms (see the module docstring).

    The first call initialises the model from the batch (`ProjectiveModel.initialize`).

    Args:
        model: the projective model.
        x: data `[B, C, H, W]` in [0, 1], B >= 2.
        generator: source of the noise and of the sliced-Wasserstein directions.
        cfg: weights and the perceptual term; default `model.cfg.loss`. Of its fields, `weights`
            (`LOSS_WEIGHTS`'s names; defaults for those it leaves out) and `perceptual` are used
            (`s` belongs to the one-step and style objectives).

    Returns:
        `(loss, terms)`: the weighted scalar sum, and the unweighted float value of each term
        (`"pixel"`, `"latent"`, `"prior_data"`, `"prior_noise"`) plus `"loss"`.
    """
    cfg = model.cfg.loss if cfg is None else cfg
    if x.dim() != 4 or tuple(x.shape[1:]) != model.image_shape or x.shape[0] < 2:
        raise ValueError(f"x must be a batch [B, {', '.join(map(str, model.image_shape))}] with B >= 2, "
                         f"got shape {tuple(x.shape)}")
    if not bool(model.initialized):
        model.initialize(x)
    perceptual = get_perceptual(cfg.perceptual)

    z = model.encode(x)
    Pz = model.P.apply(z)
    x_hat = model.decode(Pz)
    Pz_noise = model.P.apply(model.encode(gaussian_noise(x, generator)))

    terms = {
        "pixel": perceptual(x, x_hat),
        "latent": (z - Pz).square().mean() / model.code_scale.square(),
        "prior_data": sliced_wasserstein_gaussian(model.codes(Pz), generator=generator),
        "prior_noise": sliced_wasserstein_gaussian(model.codes(Pz_noise), generator=generator),
    }
    weights = resolve_loss_weights("projective", LOSS_WEIGHTS, cfg.weights)
    loss = sum(weights[name] * value for name, value in terms.items())
    logs = {name: float(value.detach()) for name, value in terms.items()}
    logs["loss"] = float(loss.detach())
    return loss, logs
