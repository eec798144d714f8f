"""Fréchet distance between feature distributions (FID), with the feature network always named.

FID compares the Gaussians fitted to the features of real and generated images:

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

The number depends entirely on the feature network, so every `FIDResult` carries the name of the
extractor that produced it, the recipe of its weights and a hash of the weights themselves
(`FIDResult.key`): two FIDs compare only when their keys are equal. Two extractors exist:

- `"inception-v3"`: the standard Inception pool features, through torch-fidelity, only when the
  package and its weights file are already on disk (nothing is ever downloaded);
- `"mnist-classifier-v1"`: the penultimate features of our small MNIST classifier
  (`classifier.py`), available offline everywhere. Its values are NOT comparable to Inception FID.

Example:
    >>> extractor = get_extractor("auto")           # Inception if available offline, else the classifier
    >>> result = fid(real_images, samples, extractor)
    >>> print(result)                               # FID 3.21 [mnist-classifier-v1, 10000 real / 10000 fake]
    >>> result.key                                  # 'mnist-classifier-v1/steps1000-bs128-lr0.002-seed0@3f2a...'
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .classifier import NAME as MNIST_CLASSIFIER, MnistClassifier, load_or_train_classifier

INCEPTION = "inception-v3"
#: torch-fidelity's file name for the FID Inception weights (the 2015-12-05 TF graph, ported).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV = "LINEARIZER_INCEPTION_WEIGHTS"


class ExtractorUnavailableError(RuntimeError):
    """The requested feature network (its package or its weights) is not available offline."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps `[B, C, H, W]` images in [0, 1] to `[B, d]` features.

    `name` identifies the architecture, `recipe` how its weights were obtained (a training
    budget; "" for published weights) and `weights` the first 16 hex digits of the sha256 of the
    weights file, so that two FIDs are known to share their feature network exactly.
    """

    name: str
    recipe: str
    weights: str

    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (float64) of one image set's features, tagged with the extractor."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str
    weights: str = ""


@dataclass(frozen=True)
class FIDResult:
    """An FID value and what it was computed with. Values from different extractors do not compare."""

    value: float
    extractor: str
    n_real: int
    n_fake: int
    recipe: str = ""
    weights: str = ""

    @property
    def key(self) -> str:
        """`name[/recipe]@weights`: FIDs with equal keys were computed by the same network."""
        return extractor_key(self.extractor, self.recipe, self.weights)

    def __str__(self) -> str:
        return f"FID {self.value:.4g} [{self.key}, {self.n_real} real / {self.n_fake} fake]"

    def to_dict(self) -> dict[str, float | str | int]:
        return {"value": self.value, "extractor": self.extractor, "recipe": self.recipe, "weights": self.weights,
                "n_real": self.n_real, "n_fake": self.n_fake}


def extractor_key(name: str, recipe: str = "", weights: str = "") -> str:
    """The identity of a feature network as one string, `name[/recipe][@weights]`."""
    return name + (f"/{recipe}" if recipe else "") + (f"@{weights}" if weights else "")


def _as_float64(a: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues become 0."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray | Tensor, sigma1: np.ndarray | Tensor, mu2: np.ndarray | Tensor, sigma2: np.ndarray | Tensor
) -> float:
    """Squared Fréchet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)`, in float64.

    `Tr (S1 S2)^{1/2}` is computed as `Tr (S1^{1/2} S2 S1^{1/2})^{1/2}`: the two matrices are
    similar, and the second is symmetric PSD, so an eigen-decomposition gives its square root
    with real, non-negative eigenvalues. This avoids the general `sqrtm` of a non-symmetric
    product, whose tiny imaginary parts and failures on singular covariances (fewer samples than
    feature dimensions) the usual implementation has to patch over.

    Args:
        mu1, mu2: `[d]` means.
        sigma1, sigma2: `[d, d]` symmetric PSD covariances.

    Returns:
        The distance (>= 0; round-off below zero is returned as 0).

    Example:
        >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
        2.0
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    expected = {"mu1": (d,), "mu2": (d,), "sigma1": (d, d), "sigma2": (d, d)}
    for (name, shape), a in zip(expected.items(), (mu1, mu2, sigma1, sigma2)):
        if d < 1 or a.shape != shape:
            raise ValueError(
                f"frechet_distance expects mu [d] and sigma [d, d] of one d, got {name} of shape {a.shape} (d = {d})"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"frechet_distance got non-finite values in {name}")
    # Symmetrise: covariances from accumulated sums can be asymmetric in the last bits.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return max(float(value), 0.0)


@torch.no_grad()
def feature_stats(extractor: FeatureExtractor, images: Tensor, batch_size: int = 500) -> FeatureStats:
    """Mean and (unbiased) covariance of `extractor`'s features of `images`, in float64.

    Args:
        extractor: a `FeatureExtractor`.
        images: `[N, C, H, W]` images in [0, 1], N >= 2.
        batch_size: images per forward pass.

    Returns:
        A `FeatureStats` naming the extractor.

    Example:
        >>> stats = feature_stats(get_extractor("mnist-classifier"), x_test)
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 2:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"feature_stats expects [N, C, H, W] images with N >= 2, got {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    feats = np.concatenate(
        [_as_float64(extractor(images[i : i + batch_size])) for i in range(0, images.shape[0], batch_size)]
    )
    return FeatureStats(feats.mean(axis=0), np.cov(feats, rowvar=False), n=feats.shape[0], extractor=extractor.name,
                        weights=getattr(extractor, "weights", ""))


def fid(
    real: Tensor | FeatureStats,
    fake: Tensor | FeatureStats,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 500,
) -> FIDResult:
    """FID between two image sets (or their precomputed `FeatureStats`).

    Args:
        real, fake: `[N, C, H, W]` images in [0, 1], or `FeatureStats` (e.g. cached statistics of
            the test split) computed with the same extractor.
        extractor: the feature network; None uses `get_extractor("auto")`.
        batch_size: images per forward pass.

    Returns:
        An `FIDResult` whose `extractor` names the network used.

    Raises:
        ValueError: precomputed statistics come from a different extractor (by name, or by
            weights when both sides record them).

    Example:
        >>> result = fid(x_test, samples, get_extractor("mnist-classifier"))
        >>> result.value, result.extractor
    """
    extractor = extractor if extractor is not None else get_extractor("auto")
    stats = []
    for which, data in (("real", real), ("fake", fake)):
        if isinstance(data, FeatureStats):
            weights = getattr(extractor, "weights", "")
            if data.extractor != extractor.name or (data.weights and weights and data.weights != weights):
                raise ValueError(
                    f"{which} statistics were computed with {extractor_key(data.extractor, '', data.weights)!r}, "
                    f"but the extractor is {extractor_key(extractor.name, '', weights)!r}"
                )
            stats.append(data)
        else:
            stats.append(feature_stats(extractor, data, batch_size))
    r, f = stats
    return FIDResult(frechet_distance(r.mu, r.sigma, f.mu, f.sigma), extractor.name, r.n, f.n,
                     recipe=getattr(extractor, "recipe", ""), weights=getattr(extractor, "weights", ""))


class MnistFeatures:
    """The `mnist-classifier-v1` extractor: 128-d penultimate features of `MnistClassifier`.

    Example:
        >>> extractor = MnistFeatures(load_or_train_classifier()[0])
        >>> extractor(torch.rand(4, 1, 32, 32)).shape
        torch.Size([4, 128])
    """

    name = MNIST_CLASSIFIER

    def __init__(self, model: MnistClassifier, recipe: str = "", weights: str = ""):
        """
        Args:
            model: the trained classifier.
            recipe: its training budget, e.g. "steps1000-bs128-lr0.002-seed0" (`load_or_train_classifier`).
            weights: the first 16 hex digits of the sha256 of its weights file.
        """
        self.model = model.eval()
        self.recipe, self.weights = recipe, weights

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.model.features(images)  # raises ValueError on 3-channel or mis-sized images


class InceptionFeatures:
    """The `inception-v3` extractor: torch-fidelity's 2048-d pool features of the FID Inception.

    Grayscale images are repeated to three channels; images are quantised to uint8 as the
    network expects and resized to 299x299 inside it.
    """

    name = INCEPTION
    recipe = ""

    def __init__(self, weights: Path, device: str | torch.device | None = None):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        from .classifier import sha256_file

        self.weights = sha256_file(weights)[:16]

        # torch-fidelity reads the file with torch.load, which is restricted to tensors
        # (weights_only) by default in the torch we pin.
        self.model = FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path=str(weights))
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{INCEPTION} expects [B, 1 or 3, H, W] images in [0, 1], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        as_uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        (features,) = self.model(as_uint8.to(self.device))
        return features


def find_inception_weights() -> Path | None:
    """The Inception weights file if it is on disk: `$LINEARIZER_INCEPTION_WEIGHTS`, else
    torch-fidelity's file in the torch hub cache. Looks only at the local file system."""
    candidates = [os.environ.get(INCEPTION_WEIGHTS_ENV)]
    candidates.append(str(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def inception_unavailable_reason() -> str | None:
    """Why the Inception extractor cannot be built offline, or None if it can."""
    missing = []
    if importlib.util.find_spec("torch_fidelity") is None:
        missing.append("the 'torch-fidelity' package is not installed")
    if find_inception_weights() is None:
        missing.append(
            f"the Inception weights are missing (set ${INCEPTION_WEIGHTS_ENV} to a local copy of "
            f"{INCEPTION_WEIGHTS_FILE}, or place it under {Path(torch.hub.get_dir()) / 'checkpoints'}); "
            "they are never downloaded"
        )
    return "; ".join(missing) or None


def get_extractor(
    kind: Literal["auto", "inception", "mnist-classifier"] = "auto",
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    **classifier_kwargs,
) -> FeatureExtractor:
    """Build a feature extractor for FID, without touching the network.

    Args:
        kind: "inception" (raises if unavailable), "mnist-classifier", or "auto": Inception when
            available offline, else the MNIST classifier, with a warning that says so.
        cache_dir: classifier cache root (see `load_or_train_classifier`).
        device: where the Inception network runs (the classifier runs where it was loaded: CPU).
        **classifier_kwargs: forwarded to `load_or_train_classifier` (steps, limit, ...).

    Returns:
        A `FeatureExtractor` whose `name` is "inception-v3" or "mnist-classifier-v1".

    Raises:
        ExtractorUnavailableError: "inception" was asked for and is not available offline.
        ValueError: unknown kind.

    Example:
        >>> get_extractor("auto").name
        'mnist-classifier-v1'
    """
    if kind not in ("auto", "inception", "mnist-classifier"):
        raise ValueError(f"kind must be 'auto', 'inception' or 'mnist-classifier', got {kind!r}")
    if kind in ("auto", "inception"):
        reason = inception_unavailable_reason()
        if reason is None:
            return InceptionFeatures(find_inception_weights(), device=device)
        if kind == "inception":
            raise ExtractorUnavailableError(f"FID extractor 'inception' is unavailable: {reason}")
        warnings.warn(
            f"FID falls back to the offline {MNIST_CLASSIFIER} features ({reason}); "
            f"these values are not comparable to Inception FID",
            stacklevel=2,
        )
    model, info = load_or_train_classifier(cache_dir=cache_dir, **classifier_kwargs)
    return MnistFeatures(model, recipe=Path(info["path"]).name, weights=str(info["sha256"])[:16])
