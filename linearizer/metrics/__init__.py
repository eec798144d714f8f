"""Evaluation metrics: pixel metrics (MSE, PSNR, SSIM), FID with a named feature network, and the
small MNIST classifier that serves as the offline FID feature network.

Example:
    >>> from linearizer.metrics import psnr, ssim, fid, get_extractor
    >>> psnr(x, y), ssim(x, y)
    >>> print(fid(x_test, samples, get_extractor("auto")))
"""

from .classifier import (
    MnistClassifier,
    default_cache_dir,
    evaluate_accuracy,
    load_or_train_classifier,
    main_train_classifier,
    train_classifier,
)
from .fid import (
    ExtractorUnavailableError,
    FeatureExtractor,
    FeatureStats,
    FIDResult,
    InceptionFeatures,
    MnistFeatures,
    feature_stats,
    fid,
    frechet_distance,
    get_extractor,
)
from .image import agreement_db, mse, psnr, ssim, ssim_loss

__all__ = [
    "ExtractorUnavailableError",
    "FIDResult",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "MnistClassifier",
    "MnistFeatures",
    "agreement_db",
    "default_cache_dir",
    "evaluate_accuracy",
    "feature_stats",
    "fid",
    "frechet_distance",
    "get_extractor",
    "load_or_train_classifier",
    "main_train_classifier",
    "mse",
    "psnr",
    "ssim",
    "ssim_loss",
    "train_classifier",
]
