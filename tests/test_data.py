"""Library datasets: MNIST through the allow-list unpickler, image folders, Hugging Face
datasets built locally, and the scikit-learn / scikit-image samples."""

from __future__ import annotations

import io
import os
import pickle
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local datasets only: never reach the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from linearizer.data import (ImageFolderDataset, iter_hf_images, load_hf_images, load_mnist, random_patches,
                             safe_unpickle, skimage_photos, sklearn_digits, tensor_to_uint8, to_image_tensor)
from linearizer.data.samples import DEFAULT_PHOTOS

# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, n", [("train", 50_000), ("val", 10_000), ("test", 10_000)])
def test_mnist_full_splits(split, n):
    x, y = load_mnist(split)  # the decode is cached: only the first split pays for it
    assert x.shape == (n, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.99
    assert set(y.unique().tolist()) == set(range(10))
    counts = torch.bincount(y, minlength=10).double()
    assert counts.min() > 0.08 * n and counts.max() < 0.12 * n  # roughly balanced classes
    assert "mnist" not in sys.modules  # the package's own modules were never imported


def test_mnist_padding_keeps_digits_centred():
    x32, y32 = load_mnist("test", size=32, limit=200)
    x28, y28 = load_mnist("test", size=28, limit=200)
    assert torch.equal(y32, y28)
    assert torch.equal(x32[..., 2:30, 2:30], x28)  # zero padding only, no resampling
    border = x32.clone()
    border[..., 2:30, 2:30] = 0
    assert float(border.abs().max()) == 0.0
    # the ink's centre of mass sits at the image centre, 15.5 px (MNIST digits are mass-centred)
    mass = x32.mean(dim=(0, 1))
    grid = torch.arange(32, dtype=torch.float32)
    cy = float((mass.sum(1) * grid).sum() / mass.sum())
    cx = float((mass.sum(0) * grid).sum() / mass.sum())
    assert abs(cy - 15.5) < 1.0 and abs(cx - 15.5) < 1.0


def test_mnist_other_sizes_limit_and_copies():
    x, y = load_mnist("val", size=16, limit=10)
    assert x.shape == (10, 1, 16, 16) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    first, _ = load_mnist("val", size=28, limit=3)
    first.fill_(0.5)  # callers own their tensors: the cache is untouched
    again, _ = load_mnist("val", size=28, limit=3)
    assert not torch.equal(first, again)
    # values are k/255 for the raw byte k, as in the shards and image folders
    assert torch.allclose(again * 255, (again * 255).round(), atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "dev"}, "split must be one of"),
    ({"split": "train", "size": 0}, "size must be a positive int"),
    ({"split": "train", "limit": 0}, "limit must be None or a positive int"),
])
def test_mnist_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_mnist(**kwargs)


# --------------------------------------------------------------------------------------------
# The allow-list unpickler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_unpickle_accepts_numpy_arrays(protocol):
    data = ((np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3])), {"k": np.eye(2)})
    out = safe_unpickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    np.testing.assert_array_equal(out[0][0], data[0][0])
    np.testing.assert_array_equal(out[0][1], data[0][1])
    np.testing.assert_array_equal(out[1]["k"], np.eye(2))
    assert out[0][0].dtype == np.float32


def test_safe_unpickle_maps_numpy1_module_names():
    blob = pickle.dumps(np.arange(5, dtype=np.int64), protocol=2)
    # the spelling a numpy-1 writer (such as the MNIST file) uses in its GLOBAL opcode
    legacy = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert legacy != blob
    np.testing.assert_array_equal(safe_unpickle(io.BytesIO(legacy)), np.arange(5))


class _EvalOnLoad:
    """Pickles (protocol 4: STACK_GLOBAL) as a call of builtins.eval."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("make_payload, name", [
    (lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(), "os.system"),
    (lambda marker: f"cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.".encode(), "builtins.eval"),
    (lambda marker: pickle.dumps(_EvalOnLoad(f'open("{marker}", "w")'), protocol=4), "builtins.eval"),
], ids=["os.system", "builtins.eval", "builtins.eval-protocol4"])
def test_safe_unpickle_refuses_other_globals(tmp_path, make_payload, name):
    marker = tmp_path / "pwned"
    blob = make_payload(marker)
    with pytest.raises(pickle.UnpicklingError, match=name.replace(".", r"\.")):
        safe_unpickle(io.BytesIO(blob))
    assert not marker.exists()  # nothing ran
    pickle.loads(blob)  # sanity: for plain pickle the same bytes really are an exploit
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _stripes(w: int = 40, h: int = 20) -> np.ndarray:
    """Red | green | blue vertical bands; the centred h x h square is all green."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : (w - h) // 2, 0] = 255
    a[:, (w - h) // 2: (w + h) // 2, 1] = 255
    a[:, (w + h) // 2:, 2] = 255
    return a


@pytest.fixture
def image_tree(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs" / "puppies").mkdir(parents=True)
    Image.fromarray(_stripes()).save(tmp_path / "cats" / "a.png")
    Image.fromarray(np.full((30, 30, 3), 128, np.uint8)).save(tmp_path / "dogs" / "b.jpg", quality=95)
    Image.fromarray(np.full((24, 24, 3), 64, np.uint8)).save(tmp_path / "dogs" / "puppies" / "c.webp", lossless=True)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "root.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_labels_and_pixels(image_tree):
    ds = ImageFolderDataset(image_tree, size=20, channels=3)
    assert [ds.relative_path(i) for i in range(len(ds))] == ["cats/a.png", "dogs/b.jpg", "dogs/puppies/c.webp",
                                                             "root.PNG"]
    assert ds.classes == ["cats", "dogs"] and ds.labels == [0, 1, 1, -1]
    image, label = ds[0]
    assert image.shape == (3, 20, 20) and label == 0
    # centre crop of the stripes keeps exactly the green band (no resize at size 20)
    assert torch.equal(image, torch.stack([torch.zeros(20, 20), torch.ones(20, 20), torch.zeros(20, 20)]))
    webp, _ = ds[2]  # lossless webp, resized 24 -> 20: a flat image stays flat
    assert torch.allclose(webp, torch.full_like(webp, 64 / 255), atol=1 / 255)
    grey = ImageFolderDataset(image_tree, size=8, channels=1)
    g, label = grey[3]
    assert g.shape == (1, 8, 8) and label == -1 and torch.equal(g, torch.ones(1, 8, 8))


def test_image_folder_errors(tmp_path, image_tree):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    (image_tree / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = ImageFolderDataset(image_tree, size=8, channels=3)
    i = ds.paths.index(image_tree / "cats" / "broken.png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        ds[i]
    with pytest.raises(ValueError, match="channels must be one of"):
        ImageFolderDataset(image_tree, channels=2)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (built locally, no hub)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_local(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays], "label": [3, 1, 4, 1, 5, 9]},
                                    features=features)
    ds.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(root / "dict"))
    ds.to_parquet(str(root / "data.parquet"))
    # expected: the centred 20 x 20 crop of each 20 x 24 image, as floats
    expected = torch.stack([torch.from_numpy(a[:, 2:22].copy()).permute(2, 0, 1).float() / 255 for a in arrays])
    return root, expected, torch.tensor([3, 1, 4, 1, 5, 9])


@pytest.mark.parametrize("where, split, streaming", [
    ("saved", "train", False), ("saved", "train", True), ("dict", "test", False), ("data.parquet", "train", True),
])
def test_hf_local_sources(hf_local, tmp_path, where, split, streaming):
    root, expected, labels = hf_local
    x, y = load_hf_images(root / where, split=split, size=20, channels=3, streaming=streaming,
                          cache_dir=str(tmp_path / "cache"))
    assert torch.equal(y, labels)
    assert torch.allclose(x, expected, atol=1e-6)  # crop without resize: exact


def test_hf_limit_grey_and_errors(hf_local):
    root, expected, _ = hf_local
    pairs = list(iter_hf_images(root / "saved", size=10, channels=1, limit=2, label_key=None))
    assert len(pairs) == 2 and pairs[0][0].shape == (1, 10, 10) and pairs[0][1] == -1
    with pytest.raises(ValueError, match="no column 'img'"):
        load_hf_images(root / "saved", image_key="img")
    with pytest.raises(ValueError, match="split 'train' not in"):
        load_hf_images(root / "dict", split="train")


# --------------------------------------------------------------------------------------------
# scikit-learn / scikit-image samples, transforms
# --------------------------------------------------------------------------------------------


def test_sklearn_digits():
    from sklearn.datasets import load_digits

    x, y = sklearn_digits(size=32)
    assert x.shape == (1797, 1, 32, 32) and y.shape == (1797,) and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    x8, y8 = sklearn_digits(size=8)
    assert torch.equal(x8[:, 0], torch.tensor(load_digits().images, dtype=torch.float32) / 16)
    assert torch.equal(y, y8)
    # bilinear upscaling keeps the mean intensity of each digit (up to border effects)
    assert torch.allclose(x.mean(dim=(1, 2, 3)), x8.mean(dim=(1, 2, 3)), atol=0.02)


def test_skimage_photos():
    photos = skimage_photos()
    assert list(photos) == list(DEFAULT_PHOTOS)
    for name, a in photos.items():
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
    assert photos["astronaut"].shape == (512, 512, 3)
    grey = skimage_photos(["camera"])["camera"]
    assert grey.shape == (512, 512, 1)
    with pytest.raises(ValueError, match="unknown photo names"):
        skimage_photos(["lena"])


def test_random_patches_are_crops_and_reproducible():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (12, 15, 3), dtype=np.uint8), rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)]
    p1 = random_patches(images, size=5, n=20, generator=torch.Generator().manual_seed(3))
    p2 = random_patches(images, size=5, n=20, generator=torch.Generator().manual_seed(3))
    assert p1.shape == (20, 3, 5, 5) and torch.equal(p1, p2)
    sources = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images]
    for patch in p1:  # every patch is an exact crop of one of the images
        assert any(torch.equal(patch, s[:, i:i + 5, j:j + 5])
                   for s in sources for i in range(s.shape[1] - 4) for j in range(s.shape[2] - 4))
    with pytest.raises(ValueError, match="smaller than the patch size"):
        random_patches(images, size=10, n=1)
    with pytest.raises(ValueError, match="same channel count"):
        random_patches([images[0], images[1][:, :, :1]], size=3, n=1)


def test_transforms_round_trip():
    a = np.random.default_rng(2).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    x = to_image_tensor(a, size=None, channels=3)
    assert x.shape == (3, 6, 6) and np.array_equal(tensor_to_uint8(x), a)
    t = torch.rand(3, 10, 14)
    assert torch.equal(to_image_tensor(t, size=10, channels=3), t[:, :, 2:12])
    small = to_image_tensor(t, size=5, channels=3)
    assert small.shape == (3, 5, 5) and float(small.min()) >= 0 and float(small.max()) <= 1
    with pytest.raises(ValueError, match=r"expected a float \[1, H, W\] tensor"):
        to_image_tensor(t, size=None, channels=1)
