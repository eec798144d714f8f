"""Helpers the one-step test modules share (`test_collapse`, `test_onestep`)."""

from __future__ import annotations

import torch

from linearizer.onestep import OneStepLinearizer


def make_nonlinear(model: OneStepLinearizer, seed: int, scale: float = 0.05) -> None:
    """Jitter every flow weight: couplings start as the identity, which would leave g affine."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.g_x.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
