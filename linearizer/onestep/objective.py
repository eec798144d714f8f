"""The one-step flow-matching objective (method.md §2), term by term.

For data `x1` in [0, 1], noise `x0 ~ N(0, I)` and `t ~ U[0, 1]` per sample:

    z0 = g_y(x0);  z1 = g_x(x1);  zt = (1 - t) z0 + t z1;  z1_hat = A(t) zt
    L = w.latent * mse(z1_hat, z1)                         endpoint prediction in latent space
      + w.noise  * mse(x0, g_y^{-1}(z0 + s n0))            noise reconstruction
      + w.data   * perceptual(x1, g_x^{-1}(z1 + s n1))     data reconstruction
      + w.pred   * perceptual(x1, g_x^{-1}(z1_hat))        decoded prediction

with `n0, n1 ~ N(0, I)` latent noise of scale `s` and the weights `w` of `loss.weights`, named
by the terms (`LOSS_WEIGHTS`: all 1 and s = 0.3 as the reference). The perceptual term is
pluggable (`linearizer.perceptual`); its offline default is MSE. No term is detached: as in the
reference, the latent target `z1` also trains `g_x`; the two reconstruction terms keep `g` from
shrinking its codes to cheat it.

The five passes of `g` (two encodings, three decodings) run as two when one network serves both
roles: one forward over `[x0; x1]` and one inverse over the three decoder inputs, with per-sample
role flags. That computes the same loss (tested) with fewer, larger kernels.

Example:
    >>> loss, terms = onestep_loss(model, x1, generator=torch.Generator().manual_seed(0))
    >>> terms
    {'latent': ..., 'noise': ..., 'data': ..., 'pred': ..., 'loss': ...}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig, resolve_loss_weights
from ..perceptual import get_perceptual
from .model import OneStepLinearizer, noise_like

TERMS = ("latent", "noise", "data", "pred")
#: the kind's loss weights (term -> default): its section of `loss.weights` (`KindSpec.loss_weights`).
LOSS_WEIGHTS = {term: 1.0 for term in TERMS}
#: the legacy `LossConfig` field that weighted each term.
LEGACY_LOSS_WEIGHTS = {"w_latent": "latent", "w_noise": "noise", "w_data": "data", "w_pred": "pred"}


def _roles(*counts_and_roles: tuple[int, int], device: torch.device) -> Tensor:
    """`[sum of counts]` role flags: `count` copies of each `role`, in order."""
    return torch.cat([torch.full((n, ), role, dtype=torch.long, device=device) for n, role in counts_and_roles])


def _encode(model: OneStepLinearizer, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """`(g_y(x0), g_x(x1))`, as ONE pass of the shared network over both batches when `g` is shared.

    The two roles differ only in per-sample role flags, so one pass of `2B` samples computes
    exactly what two passes of `B` do, with half the kernel launches and larger convolutions
    (data-dependent ActNorm init standardises each role on its own samples either way).
    """
    if model.g_x.net is not model.g_y.net:
        return model.encode_noise(x0), model.encode_data(x1)
    roles = _roles((x0.shape[0], model.g_y.role), (x1.shape[0], model.g_x.role), device=x1.device)
    z, _ = model.g_x.net(torch.cat([x0, x1]), roles)
    return z[: x0.shape[0]], z[x0.shape[0]:]


def _decode(model: OneStepLinearizer, z0: Tensor, *z1s: Tensor) -> tuple[Tensor, ...]:
    """`g_y^{-1}(z0)` and `g_x^{-1}` of each of `z1s`, as one inverse pass when `g` is shared."""
    if model.g_x.net is not model.g_y.net:
        return (model.decode_noise(z0), *(model.decode_data(z) for z in z1s))
    roles = _roles((z0.shape[0], model.g_y.role), *((z.shape[0], model.g_x.role) for z in z1s), device=z0.device)
    x = model.g_x.net.inverse(torch.cat([z0, *z1s]), roles)
    return tuple(x.split([z0.shape[0], *(z.shape[0] for z in z1s)]))


def onestep_loss(model: OneStepLinearizer, x1: Tensor, generator: torch.Generator | None = None,
                 cfg: LossConfig | None = None, x0: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch and its four terms.

    Args:
        model: the one-step model.
        x1: data `[B, C, H, W]` in [0, 1].
        generator: source of `x0`, `t`, `n0`, `n1` (None: torch's global generator).
        cfg: weights, `s` and the perceptual term; default `model.cfg.loss`.
        x0: the noise paired with each `x1` (None: fresh independent noise, the paper's
            objective). Pairs from a trained sampler, `x1 = teacher(x0)`, make this a
            distillation: the path's end is then a function of its start, so the regression
            has one target per noise instead of the blur of all data.

    Returns:
        `(loss, terms)`: the weighted scalar sum, and the unweighted float value of each term
        (`"latent"`, `"noise"`, `"data"`, `"pred"`) plus `"loss"`.
    """
    cfg = model.cfg.loss if cfg is None else cfg
    if x1.dim() != 4 or tuple(x1.shape[1:]) != model.image_shape:
        raise ValueError(f"x1 must be images [B, {', '.join(map(str, model.image_shape))}], got {tuple(x1.shape)}")
    perceptual = get_perceptual(cfg.perceptual)
    B = x1.shape[0]
    device = generator.device if generator is not None else x1.device
    if x0 is None:
        x0 = noise_like(x1, generator)
    elif x0.shape != x1.shape:
        raise ValueError(f"paired noise x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
    t = torch.rand(B, generator=generator, dtype=x1.dtype, device=device).to(x1.device)

    z0, z1 = _encode(model, x0, x1)
    z0_flat, z1_flat = model.flat(z0), model.flat(z1)
    zt = (1 - t)[:, None] * z0_flat + t[:, None] * z1_flat
    z1_hat = model.A.apply(zt, t)

    latent = F.mse_loss(z1_hat, z1_flat)
    n0, n1 = noise_like(z0, generator), noise_like(z1, generator)
    x0_rec, x1_rec, x1_pred = _decode(model, z0 + cfg.s * n0, z1 + cfg.s * n1, model.unflat(z1_hat))
    noise = F.mse_loss(x0_rec, x0)
    data = perceptual(x1, x1_rec)
    pred = perceptual(x1, x1_pred)

    w = resolve_loss_weights("onestep", LOSS_WEIGHTS, cfg.weights)
    loss = w["latent"] * latent + w["noise"] * noise + w["data"] * data + w["pred"] * pred
    terms = {name: float(value.detach()) for name, value in zip(TERMS, (latent, noise, data, pred))}
    terms["loss"] = float(loss.detach())
    return loss, terms
