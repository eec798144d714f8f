"""Metrics: PSNR / SSIM against closed forms and scikit-image, the Fréchet distance against closed
forms and scipy, FID with a briefly trained classifier, and the classifier cache."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import structural_similarity

from linearizer.data import load_mnist
from linearizer.metrics import (
    ExtractorUnavailableError,
    FeatureStats,
    FIDResult,
    MnistClassifier,
    MnistFeatures,
    agreement_db,
    default_cache_dir,
    evaluate_accuracy,
    feature_stats,
    fid,
    frechet_distance,
    get_extractor,
    load_or_train_classifier,
    main_train_classifier,
    mse,
    psnr,
    ssim,
    ssim_loss,
    train_classifier,
)
from linearizer.metrics import classifier as classifier_module

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
# A tiny budget: a few dozen steps on a few hundred digits (seconds on a CPU).
TINY = dict(steps=40, batch_size=64, limit=300, progress=False)


# ---------------------------------------------------------------------------------------------
# MSE / PSNR / agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_psnr_of_known_mse(dtype):
    x = torch.full((3, 1, 8, 8), 0.5, dtype=dtype)
    offsets = torch.tensor([1e-1, 1e-2, 1e-3], dtype=dtype).view(3, 1, 1, 1)
    y = x + offsets  # per-image MSE 1e-2, 1e-4, 1e-6 -> 20, 40, 60 dB
    per_image = psnr(x, y, reduction="none")
    assert per_image.dtype == dtype and per_image.shape == (3,)
    expected = torch.tensor([20.0, 40.0, 60.0], dtype=dtype)
    torch.testing.assert_close(per_image, expected, atol=TOL[dtype] * 100, rtol=0)
    torch.testing.assert_close(psnr(x, y), expected.mean(), atol=TOL[dtype] * 100, rtol=0)
    torch.testing.assert_close(mse(x, y, reduction="none"), offsets.flatten() ** 2, rtol=TOL[dtype] * 10, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_psnr_data_range_and_flat_data(dtype):
    x = torch.zeros(2, 50, dtype=dtype)
    assert psnr(x, x + 2.55, data_range=255.0).item() == pytest.approx(40.0, abs=TOL[dtype] * 100)


def test_psnr_identical_is_inf_unless_capped():
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[1] += 0.01
    per_image = psnr(x, y, reduction="none")
    assert math.isinf(per_image[0].item()) and per_image[0] > 0
    assert per_image[1].item() == pytest.approx(40.0, abs=1e-9)
    assert math.isinf(psnr(x, y).item())
    capped = psnr(x, y, reduction="none", cap_db=100.0)
    assert capped.tolist() == pytest.approx([100.0, 40.0], abs=1e-9)


def test_psnr_promotes_mixed_dtypes():
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert psnr(x, (x + 1e-3).float()).dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_agreement_pools_the_error(dtype):
    a = torch.zeros(2, 1, 4, 4, dtype=dtype)
    b = a.clone()
    b[0] += 1e-2  # MSE 1e-4
    b[1] += math.sqrt(3e-4)  # MSE 3e-4 -> pooled 2e-4
    assert agreement_db(a, b) == pytest.approx(-10 * math.log10(2e-4), abs=TOL[dtype] * 100)
    assert agreement_db(a[:1], b[:1]) == pytest.approx(psnr(a[:1], b[:1]).item(), abs=1e-9)
    b[0] = a[0]  # one identical pair does not make the agreement infinite
    assert math.isfinite(agreement_db(a, b))
    assert math.isinf(agreement_db(a, a))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: psnr(torch.rand(2, 4), torch.rand(2, 5)), "same shape"),
        (lambda: psnr(torch.rand(2, 4), torch.rand(2, 4), reduction="sum"), "reduction"),
        (lambda: psnr(torch.rand(2, 4), torch.rand(2, 4), data_range=0.0), "data_range"),
        (lambda: mse(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)), "floating"),
        (lambda: ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)), "at least 11x11"),
        (lambda: ssim(torch.rand(1, 16, 16), torch.rand(1, 16, 16)), "at least 4 dims"),
        (lambda: ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), window=4), "odd"),
    ],
)
def test_image_metrics_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ssim_of_identical_images_is_one(channels, dtype):
    x = torch.rand(3, channels, 20, 24, dtype=dtype, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=dtype), atol=TOL[dtype], rtol=0)
    assert ssim_loss(x, x).abs().item() <= TOL[dtype]


def test_ssim_decreases_with_noise():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=gen)
    noise = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    scores = [ssim(x, x + s * noise, reduction="mean").item() for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ssim_matches_scikit_image(channels, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, channels, 24, 20, dtype=torch.float64, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=gen)).clamp(0, 1)
    ours = ssim(x.to(dtype), y.to(dtype))
    # skimage's Gaussian window: sigma 1.5, truncated at 3.5 sigma -> 11 taps, like ours.
    reference = [
        structural_similarity(
            x[i].numpy(), y[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0,
        )
        for i in range(2)
    ]
    torch.testing.assert_close(ours, torch.tensor(reference, dtype=dtype), atol=TOL[dtype], rtol=0)


def test_ssim_is_differentiable():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 11, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(1, 1, 11, 12, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda a: ssim(a, y, window=7), (x,), fast_mode=True)
    # One gradient step on the loss moves x towards y.
    loss = ssim_loss(x, y)
    loss.backward()
    with torch.no_grad():
        assert ssim_loss(x - 0.05 * x.grad / x.grad.abs().max(), y) < loss


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def _random_stats(d: int, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n or 4 * d, d)) @ rng.normal(size=(d, d))
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def test_frechet_distance_of_identical_stats_is_zero():
    mu, sigma = _random_stats(64, seed=0)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-6
    # Rank-deficient covariances (fewer samples than dimensions) too.
    mu, sigma = _random_stats(64, seed=1, n=20)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-6


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3.0, size=16), rng.uniform(0.1, 3.0, size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_and_is_symmetric():
    mu1, s1 = _random_stats(32, seed=3)
    mu2, s2 = _random_stats(32, seed=4)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(d12, rel=1e-9)
    # Torch tensors of either precision are accepted and computed in float64.
    as_t = [torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*as_t) == pytest.approx(d12, rel=1e-4)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sigma2 of shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))


# ---------------------------------------------------------------------------------------------
# Classifier and FID
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="module")
def trained(cache_dir):
    return load_or_train_classifier(cache_dir=cache_dir, **TINY)


@pytest.fixture(scope="module")
def digits():
    return load_mnist("test", size=32, limit=400)


@pytest.fixture()
def no_inception(monkeypatch, tmp_path):
    """Make sure no Inception weights can be found, whatever this machine has installed."""
    monkeypatch.delenv("LINEARIZER_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_classifier_shapes_and_input_checks():
    model = MnistClassifier()
    x = torch.rand(5, 1, 32, 32)
    assert model(x).shape == (5, 10) and model.features(x).shape == (5, 128)
    with pytest.raises(ValueError, match="single-channel.*grayscale"):
        model(torch.rand(5, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\]"):
        model(torch.rand(5, 1, 28, 28))


def test_train_classifier_is_deterministic_and_leaves_global_rng_alone():
    x, y = load_mnist("train", size=32, limit=128)
    rng_before = torch.random.get_rng_state()
    a = train_classifier(x, y, steps=3, batch_size=32, seed=7, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    b = train_classifier(x, y, steps=3, batch_size=32, seed=7, progress=False)
    c = train_classifier(x, y, steps=3, batch_size=32, seed=8, progress=False)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head.weight, c.head.weight)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(x, y + 10, steps=1, progress=False)


def test_briefly_trained_classifier_beats_chance(trained, digits):
    model, info = trained
    accuracy = evaluate_accuracy(model, *digits)
    assert accuracy > 0.5  # 40 steps on 300 digits: far above the 0.1 of chance
    assert info["accuracy"] == pytest.approx(evaluate_accuracy(model, *load_mnist("test", limit=300)))


def test_classifier_cache_round_trip(trained, cache_dir, monkeypatch, digits):
    model, info = trained
    path = classifier_module.cache_path(cache_dir, TINY["steps"], TINY["batch_size"], classifier_module.DEFAULT_LR,
                                        classifier_module.DEFAULT_SEED, TINY["limit"])
    assert info["path"] == str(path)
    stored = json.loads((path / "info.json").read_text())
    assert 0.0 <= stored["accuracy"] <= 1.0 and stored["extractor"] == "mnist-classifier-v1"
    assert stored["sha256"] == classifier_module.sha256_file(path / "model.safetensors")
    assert stored["steps"] == TINY["steps"] and stored["n_test"] == TINY["limit"]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached classifier must be loaded, not retrained")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again, info2 = load_or_train_classifier(cache_dir=cache_dir, **TINY)
    x = digits[0][:32]
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert info2 == {**stored, "path": str(path)}


def test_corrupted_cache_raises_and_force_retrains(tmp_path):
    _, info = load_or_train_classifier(cache_dir=tmp_path, steps=2, batch_size=16, limit=64, progress=False)
    weights = tmp_path / "mnist-classifier-v1" / "steps2-bs16-lr0.002-seed0-limit64" / "model.safetensors"
    assert str(weights.parent) == info["path"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted.*force=True"):
        load_or_train_classifier(cache_dir=tmp_path, steps=2, batch_size=16, limit=64, progress=False)
    load_or_train_classifier(cache_dir=tmp_path, steps=2, batch_size=16, limit=64, progress=False, force=True)
    load_or_train_classifier(cache_dir=tmp_path, steps=2, batch_size=16, limit=64, progress=False)  # loads again

    (weights.parent / "info.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_or_train_classifier(cache_dir=tmp_path, steps=2, batch_size=16, limit=64, progress=False)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LINEARIZER_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LINEARIZER_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "linearizer")


def test_fid_of_a_set_with_itself_is_zero_and_noise_is_far(trained, digits):
    extractor = MnistFeatures(trained[0])
    images = digits[0]
    same = fid(images, images, extractor)
    assert isinstance(same, FIDResult) and abs(same.value) <= 1e-6
    assert same.extractor == "mnist-classifier-v1" and "mnist-classifier-v1" in str(same)
    assert (same.n_real, same.n_fake) == (400, 400)

    real_vs_real = fid(images[:200], images[200:], extractor).value
    noise = torch.rand(200, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    real_vs_noise = fid(images[:200], noise, extractor).value
    assert real_vs_noise > 10 * real_vs_real > 0


def test_fid_accepts_precomputed_stats_of_the_same_extractor(trained, digits):
    extractor = MnistFeatures(trained[0])
    images = digits[0]
    stats = feature_stats(extractor, images[:200], batch_size=64)
    assert stats.mu.shape == (128,) and stats.sigma.shape == (128, 128) and stats.mu.dtype == np.float64
    direct = fid(images[:200], images[200:], extractor, batch_size=64).value
    assert fid(stats, images[200:], extractor, batch_size=64).value == pytest.approx(direct, rel=1e-12)
    alien = FeatureStats(stats.mu, stats.sigma, stats.n, extractor="inception-v3")
    with pytest.raises(ValueError, match="inception-v3"):
        fid(alien, images[200:], extractor)


def test_mnist_extractor_rejects_three_channels(trained):
    with pytest.raises(ValueError, match="single-channel"):
        fid(torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32), MnistFeatures(trained[0]))


def test_inception_without_weights_is_a_clear_error(no_inception):
    with pytest.raises(ExtractorUnavailableError, match="Inception weights are missing.*never downloaded"):
        get_extractor("inception")


def test_auto_falls_back_to_the_classifier_and_says_so(no_inception, trained, cache_dir, monkeypatch):
    monkeypatch.setattr(classifier_module, "train_classifier", lambda *a, **k: pytest.fail("should load the cache"))
    with pytest.warns(UserWarning, match="falls back to the offline mnist-classifier-v1"):
        extractor = get_extractor("auto", cache_dir=cache_dir, **TINY)
    assert extractor.name == "mnist-classifier-v1"
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(extractor(x), trained[0].features(x))
    with pytest.raises(ValueError, match="kind must be"):
        get_extractor("vgg")


def test_auto_picks_inception_when_package_and_weights_are_on_disk(tmp_path, monkeypatch):
    # A stand-in torch-fidelity with the interface we use: it records what the wrapper feeds it.
    package = tmp_path / "site" / "torch_fidelity"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "feature_extractor_inceptionv3.py").write_text(
        "import torch\n"
        "class FeatureExtractorInceptionV3(torch.nn.Module):\n"
        "    def __init__(self, name, features_list, feature_extractor_weights_path=None):\n"
        "        super().__init__()\n"
        "        assert features_list == ['2048'] and open(feature_extractor_weights_path).read() == 'w'\n"
        "    def forward(self, x):\n"
        "        assert x.dtype == torch.uint8 and x.shape[1] == 3\n"
        "        return (x.float().mean(dim=(2, 3)),)\n"
    )
    weights = tmp_path / "inception.pth"
    weights.write_text("w")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LINEARIZER_INCEPTION_WEIGHTS", str(weights))
    try:
        extractor = get_extractor("auto")
        assert extractor.name == "inception-v3"
        x = torch.full((2, 1, 8, 8), 0.5)
        torch.testing.assert_close(extractor(x), torch.full((2, 3), 128.0))  # gray -> RGB, [0,1] -> uint8
        assert fid(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8), extractor).extractor == "inception-v3"
    finally:
        for name in [m for m in sys.modules if m.startswith("torch_fidelity")]:
            del sys.modules[name]


def test_cli_prints_accuracy_and_cache_path(trained, cache_dir, capsys):
    argv = ["--cache-dir", str(cache_dir), "--steps", "40", "--batch-size", "64", "--limit", "300"]
    assert main_train_classifier(argv) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {trained[1]['accuracy']:.4f}" in out and trained[1]["path"] in out
