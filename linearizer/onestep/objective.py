"""The one-step flow-matching objective (method.md §2), term by term.

For data `x1` in [0, 1], noise `x0 ~ N(0, I)` and `t ~ U[0, 1]` per sample:

    z0 = g_y(x0);  z1 = g_x(x1);  zt = (1 - t) z0 + t z1;  z1_hat = A(t) zt
    L = w_latent * mse(z1_hat, z1)                         endpoint prediction in latent space
      + w_noise  * mse(x0, g_y^{-1}(z0 + s n0))            noise reconstruction
      + w_data   * perceptual(x1, g_x^{-1}(z1 + s n1))     data reconstruction
      + w_pred   * perceptual(x1, g_x^{-1}(z1_hat))        decoded prediction

with `n0, n1 ~ N(0, I)` latent noise of scale `s` and weights from `LossConfig` (all 1 and
s = 0.3 as the reference). The perceptual term is pluggable (`linearizer.perceptual`); its
offline default is MSE. No term is detached: as in the reference, the latent target `z1` also
trains `g_x`; the two reconstruction terms keep `g` from shrinking its codes to cheat it.

Example:
    >>> loss, terms = onestep_loss(model, x1, generator=torch.Generator().manual_seed(0))
    >>> terms
    {'latent': ..., 'noise': ..., 'data': ..., 'pred': ..., 'loss': ...}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig
from ..perceptual import get_perceptual
from .model import OneStepLinearizer, noise_like

TERMS = ("latent", "noise", "data", "pred")


def onestep_loss(model: OneStepLinearizer, x1: Tensor, generator: torch.Generator | None = None,
                 cfg: LossConfig | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch and its four terms.

    Args:
        model: the one-step model.
        x1: data `[B, C, H, W]` in [0, 1].
        generator: source of `x0`, `t`, `n0`, `n1` (None: torch's global generator).
        cfg: weights, `s` and the perceptual term; default `model.cfg.loss`.

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
    x0 = noise_like(x1, generator)
    t = torch.rand(B, generator=generator, dtype=x1.dtype, device=device).to(x1.device)

    z0, z1 = model.encode_noise(x0), model.encode_data(x1)
    z0_flat, z1_flat = model.flat(z0), model.flat(z1)
    zt = (1 - t)[:, None] * z0_flat + t[:, None] * z1_flat
    z1_hat = model.A.apply(zt, t)

    latent = F.mse_loss(z1_hat, z1_flat)
    noise = F.mse_loss(model.decode_noise(z0 + cfg.s * noise_like(z0, generator)), x0)
    data = perceptual(x1, model.decode_data(z1 + cfg.s * noise_like(z1, generator)))
    pred = perceptual(x1, model.decode_data(model.unflat(z1_hat)))

    loss = cfg.w_latent * latent + cfg.w_noise * noise + cfg.w_data * data + cfg.w_pred * pred
    terms = {name: float(value.detach()) for name, value in zip(TERMS, (latent, noise, data, pred))}
    terms["loss"] = float(loss.detach())
    return loss, terms
