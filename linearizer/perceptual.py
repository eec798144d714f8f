"""Perceptual terms of the one-step objective: pluggable, offline by default.

The reference trains its two decoded-image terms with LPIPS, which needs pretrained VGG/AlexNet
weights. Those cannot be fetched on offline machines, so the term is chosen by name
(`LossConfig.perceptual`):

| name | loss(x, y) | needs |
|---|---|---|
| `"mse"` | mean squared error (the offline default) | nothing |
| `"ssim"` | MSE + (1 - SSIM), SSIM with an 11-tap Gaussian window (sigma 1.5) | nothing |
| `"lpips"` | LPIPS distance | the `lpips` package and its backbone weights on disk |
| `"classifier"` | MSE + distances of an MNIST classifier's activations | 1x32x32 images, a classifier trained here |

The `"classifier"` term is LPIPS's recipe on a network this project trains itself: it compares
every ReLU activation of `MnistClassifier`, each channel normalised to unit length over channels,
as LPIPS does for its backbones (without LPIPS's learned per-channel weights). Its classifier is
trained with seed 1 (`CLASSIFIER_SEED`), not seed 0 like the FID feature network, so a model
trained with it does not optimise the very features its FID is measured in.

LPIPS is never downloaded: when the package or its weights are missing, `get_perceptual("lpips")`
raises a ValueError naming what is missing.

Example:
    >>> loss_fn = get_perceptual("ssim")
    >>> loss = loss_fn(x, x_hat)          # x, x_hat: [B, C, H, W] in [0, 1]
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics.image import ssim_loss

PerceptualLoss = Callable[[Tensor, Tensor], Tensor]

NAMES = ("mse", "ssim", "lpips", "classifier")

#: seed of the classifier behind `"classifier"`: a different network from the FID's (seed 0).
CLASSIFIER_SEED = 1

#: torchvision checkpoints LPIPS loads its backbone from (torch hub cache, `checkpoints/`).
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"perceptual losses compare two [B, C, H, W] batches of one shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over all pixels of the batch."""
    _check_pair(x, y)
    return F.mse_loss(y, x)


def _window_for(x: Tensor, window: int = 11) -> int:
    """The SSIM window, shrunk to the largest odd size that fits small images."""
    size = min(window, x.shape[-2], x.shape[-1])
    return size - (1 - size % 2)


def mse_ssim(x: Tensor, y: Tensor) -> Tensor:
    """MSE + (1 - SSIM): pixel fidelity plus local structure.

    SSIM uses `linearizer.metrics`' Gaussian window (11 taps, sigma 1.5), shrunk to the largest
    odd size that fits images smaller than 11 pixels.
    """
    _check_pair(x, y)
    return mse(x, y) + ssim_loss(x, y, window=_window_for(x))


class LPIPSLoss(nn.Module):
    """LPIPS distance with frozen weights loaded from local files only.

    Args:
        net: backbone, "alex" (the reference's choice), "vgg" or "squeeze".

    Raises:
        ValueError: the `lpips` package or the backbone checkpoint is not available locally.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
        missing = []
        if importlib.util.find_spec("lpips") is None:
            missing.append("the `lpips` package (with its linear-layer weights lpips/weights/v0.1/"
                           f"{net}.pth)")
        if importlib.util.find_spec("torchvision") is None:
            missing.append("the `torchvision` package")
        checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net]
        if not checkpoint.is_file():
            missing.append(f"the pretrained backbone weights {checkpoint}")
        if missing:
            raise ValueError(
                "perceptual='lpips' needs " + "; ".join(missing) + ". Nothing is downloaded: put the "
                "files in place, or use loss.perceptual='mse' (offline default) or 'ssim'.")
        import lpips  # noqa: PLC0415 - optional dependency, checked above

        self.net = lpips.LPIPS(net=net, verbose=False).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_pair(x, y)
        if x.shape[1] == 1:  # LPIPS backbones take RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        net = self.net.to(device=x.device, dtype=x.dtype)
        return net(2 * x - 1, 2 * y - 1).mean()  # LPIPS expects [-1, 1]


class ClassifierFeatureLoss(nn.Module):
    """MSE plus the mean squared distance of a frozen MNIST classifier's normalised activations.

    Args:
        classifier: a trained `MnistClassifier` (frozen here; its weights never train).

    Raises:
        ValueError (when called): images other than `[B, 1, 32, 32]`.

    Example:
        >>> loss_fn = ClassifierFeatureLoss(load_or_train_classifier(seed=CLASSIFIER_SEED)[0])
        >>> loss_fn(x, x_hat)                          # x, x_hat: [B, 1, 32, 32] in [0, 1]
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)

    def activations(self, x: Tensor) -> list[Tensor]:
        h, out = self.classifier.inputs(x), []
        for layer in self.classifier.body:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                # unit length over channels, as LPIPS: every layer weighs alike whatever its scale
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_pair(x, y)
        self.classifier.to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            target = self.activations(x)
        distance = sum((a - b).pow(2).sum(dim=1).mean() for a, b in zip(self.activations(y), target))
        return mse(x, y) + distance / len(target)


@functools.lru_cache(maxsize=None)
def get_perceptual(name: str) -> PerceptualLoss:
    """The perceptual loss called `name` (cached: LPIPS weights load once).

    Args:
        name: "mse", "ssim", "lpips" or "classifier".

    Returns:
        A callable `loss(x, y) -> scalar` over `[B, C, H, W]` batches in [0, 1].

    Raises:
        ValueError: an unknown name, or LPIPS without its local weights.

    "classifier" trains its classifier on MNIST on first use (a few CPU minutes, then cached).
    """
    if name == "mse":
        return mse
    if name == "ssim":
        return mse_ssim
    if name == "lpips":
        return LPIPSLoss("alex")
    if name == "classifier":
        from .metrics.classifier import load_or_train_classifier  # noqa: PLC0415 - only this term needs it

        return ClassifierFeatureLoss(load_or_train_classifier(seed=CLASSIFIER_SEED, progress=False)[0])
    raise ValueError(f"perceptual loss must be one of {list(NAMES)}, got {name!r}")

