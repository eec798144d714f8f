"""Images from a Hugging Face `datasets` dataset: a hub name, a local data directory, a data
file, or a directory written by `Dataset.save_to_disk`.

`datasets` is imported inside the functions, so that the rest of the library does not pay for
it (or need it). The image column may hold PIL images (an `Image` feature), `{"bytes", "path"}`
dicts (an undecoded `Image` feature), or uint8 arrays / nested lists.

Example:
    >>> x, y = load_hf_images("data/my_saved_dataset", size=32, channels=1, limit=100)
    >>> for image, label in iter_hf_images("user/faces", streaming=True, limit=10): ...
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .transforms import to_image_tensor

NO_LABEL = -1
#: `datasets` packaged builders for single local data files, by suffix.
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset", ".json": "json", ".jsonl": "json"}


def _open(name_or_path: str | Path, split: str, streaming: bool, cache_dir: str | None) -> Any:
    """The `datasets` (Iterable)Dataset of one split, from wherever `name_or_path` points."""
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        # A `save_to_disk` directory: `load_dataset` cannot read those, `load_from_disk` can.
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"split {split!r} not in {path}; available: {sorted(ds)}")
            ds = ds[split]
        return ds.to_iterable_dataset() if streaming else ds
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"cannot tell the format of {path}: expected one of {sorted(_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split,
                                     streaming=streaming, cache_dir=cache_dir)
    # A local data directory (imagefolder, parquet, ...) or a hub name.
    return datasets.load_dataset(str(name_or_path), split=split, streaming=streaming, cache_dir=cache_dir)


def _as_image(value: Any, where: str) -> Image.Image | np.ndarray:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    if isinstance(value, (np.ndarray, list)):
        return np.asarray(value, dtype=np.uint8)
    raise ValueError(f"{where}: expected an image (PIL image, {{bytes, path}} dict or uint8 array), "
                     f"got {type(value).__name__}")


def iter_hf_images(name_or_path: str | Path, split: str = "train", image_key: str = "image",
                   size: int | None = 32, channels: int = 3, streaming: bool = False,
                   limit: int | None = None, label_key: str | None = "label",
                   cache_dir: str | None = None) -> Iterator[tuple[Tensor, int]]:
    """Yield `(image [channels, size, size] float32 in [0, 1], label)` pairs one at a time.

    Args:
        name_or_path: a hub dataset name, a local data directory or file, or a `save_to_disk`
            directory.
        split: the split to read.
        image_key: the column holding the images.
        size: output side (centre crop + resize), or None to keep native sizes.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA).
        streaming: read lazily (no full download or Arrow conversion first).
        limit: stop after this many samples (None reads the whole split).
        label_key: the column holding integer labels; None, or a missing column, gives -1.
        cache_dir: where `datasets` caches converted files (its default when None).

    Yields:
        One `(image, label)` pair per row.

    Raises:
        ValueError: a missing image column or an undecodable image (the row is named).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    ds = _open(name_or_path, split, streaming, cache_dir)
    rows = iter(ds) if limit is None else itertools.islice(iter(ds), limit)
    for i, row in enumerate(rows):
        where = f"{name_or_path} [{split}] row {i}"
        if image_key not in row:
            raise ValueError(f"{where}: no column {image_key!r}; columns are {sorted(row)}")
        try:
            image = to_image_tensor(_as_image(row[image_key], where), size, channels)
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: cannot decode column {image_key!r}: {e}") from e
        label = row.get(label_key) if label_key else None
        yield image, NO_LABEL if label is None else int(label)


def load_hf_images(name_or_path: str | Path, split: str = "train", image_key: str = "image",
                   size: int = 32, channels: int = 3, streaming: bool = False, limit: int | None = None,
                   label_key: str | None = "label", cache_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """All images of a split (or the first `limit`) stacked into tensors.

    Args: as `iter_hf_images` (`size` must be set so that the images stack).

    Returns:
        (images, labels): float32 `[N, channels, size, size]` in [0, 1] and long `[N]`
        (-1 where a row has no label).

    Example:
        >>> x, y = load_hf_images("data/digits_saved", channels=1, size=32)
    """
    if size is None:
        raise ValueError("load_hf_images stacks images and needs a size; use iter_hf_images for native sizes")
    pairs = list(iter_hf_images(name_or_path, split, image_key, size, channels, streaming, limit, label_key, cache_dir))
    if not pairs:
        raise ValueError(f"{name_or_path} [{split}] holds no rows")
    images, labels = zip(*pairs)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
