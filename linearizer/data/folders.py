"""Images from a directory tree, `torchvision.datasets.ImageFolder` style.

Every `.png`, `.jpg`, `.jpeg` and `.webp` file under `root` (recursively, extension case
ignored) is one sample, in sorted path order. An image inside a first-level subfolder gets that
subfolder's class index (classes sorted by name); an image directly under `root` gets label -1
(no class). Files are decoded lazily, one per `__getitem__`.

Example:
    >>> ds = ImageFolderDataset("photos/", size=64, channels=3)
    >>> image, label = ds[0]          # [3, 64, 64] float in [0, 1], class index or -1
    >>> ds.classes                    # e.g. ['cats', 'dogs']
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import MODES, to_image_tensor

EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
NO_LABEL = -1


def find_images(root: str | Path) -> list[Path]:
    """All image files under `root`, sorted, with a clear error for a missing or empty folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found (or not a directory): {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not paths:
        raise ValueError(f"no images with extensions {list(EXTENSIONS)} under {root}")
    return paths


class ImageFolderDataset(Dataset):
    """A map-style dataset of the images under a folder.

    Args:
        root: the folder to scan recursively.
        size: output side (centre crop + resize), or None to keep each image's native size.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA); images are converted as needed.

    Attributes:
        paths: the image files, sorted.
        classes: names of the first-level subfolders that hold images, sorted; the label of an
            image is its folder's index here, or -1 for images directly under `root`.
        labels: the label of every path.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: no images under `root`, a bad `size` / `channels`, or (on access) a file
            that cannot be decoded, named in the message.
    """

    def __init__(self, root: str | Path, size: int | None = 32, channels: int = 3) -> None:
        if channels not in MODES:
            raise ValueError(f"channels must be one of {sorted(MODES)}, got {channels!r}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be None or a positive int, got {size!r}")
        self.root = Path(root)
        self.size = size
        self.channels = channels
        self.paths = find_images(self.root)
        folders = [p.relative_to(self.root).parts for p in self.paths]
        self.classes = sorted({parts[0] for parts in folders if len(parts) > 1})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[parts[0]] if len(parts) > 1 else NO_LABEL for parts in folders]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """The i-th image as float32 `[channels, size, size]` in [0, 1] and its label."""
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                image.load()  # decode now, inside the try, so that a truncated file is caught here
                tensor = to_image_tensor(image, self.size, self.channels)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        return tensor, self.labels[i]

    def relative_path(self, i: int) -> str:
        """The i-th file's path relative to `root` (POSIX separators), e.g. for metadata."""
        return self.paths[i].relative_to(self.root).as_posix()
