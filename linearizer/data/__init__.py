"""Datasets as float `[N, C, H, W]` tensors in [0, 1]: MNIST offline, image folders, Hugging Face
datasets, and the sample images of scikit-learn / scikit-image.

Example:
    >>> from linearizer.data import load_mnist
    >>> x, y = load_mnist("train", size=32, limit=1000)
"""

from .folders import EXTENSIONS, ImageFolderDataset, find_images
from .hf import iter_hf_images, load_hf_images
from .mnist import load_mnist, mnist_path, safe_unpickle
from .samples import random_patches, skimage_photos, sklearn_digits
from .transforms import tensor_to_uint8, to_image_tensor

__all__ = [
    "EXTENSIONS",
    "ImageFolderDataset",
    "find_images",
    "iter_hf_images",
    "load_hf_images",
    "load_mnist",
    "mnist_path",
    "random_patches",
    "safe_unpickle",
    "skimage_photos",
    "sklearn_digits",
    "tensor_to_uint8",
    "to_image_tensor",
]
