"""(content, styled) image pairs: made offline by classical filters, or read from a folder.

A style model learns from pairs, never from a style network, so any style can be distilled:
filter photos here, or render pairs with whatever network you have and point
`load_pair_folder` at them.

Offline pairs (`make_filter_pairs`). Content patches are cut from the photos that ship with
scikit-image and scikit-learn, each photo first resized (area filter) so that its shorter side
is `8 * size` pixels, so a patch shows a piece of a scene rather than a blur of one texture.
Each content patch is paired with every style: the styled patch is the filter applied to the
patch itself (not cut from a filtered photo), so the target depends on the patch alone, as the
model's output does. The split is by source photo: `"test"` patches come from photos never
seen in training (`HELD_OUT_PHOTOS`), so held-out numbers measure generalisation to new content.
Patch positions are drawn from a seeded generator: the same arguments give the same pairs.

Folder pairs (`load_pair_folder`): `ROOT/STYLE/content/NAME.png` and `ROOT/STYLE/styled/NAME.png`.

Example:
    >>> train = make_filter_pairs(["stylize", "grade"], split="train", size=32, n=256)
    >>> train.content.shape, train.styled.shape, train.style[:3]
    (torch.Size([512, 3, 32, 32]), torch.Size([512, 3, 32, 32]), tensor([0, 1, 0]))
    >>> sorted(train.tensors())                         # the batch keys the "style" kind reads
    ['image', 'style', 'target']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data.samples import random_patches, skimage_photos
from ..data.transforms import pil_to_tensor, tensor_to_uint8

StyleFilter = Callable[[np.ndarray], np.ndarray]

#: photos whose patches train (scikit-image names, plus scikit-learn's "china").
TRAIN_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                                 "china")
#: photos kept out of training: the held-out ("test") content.
HELD_OUT_PHOTOS: tuple[str, ...] = ("chelsea", "flower")
SPLITS = {"train": TRAIN_PHOTOS, "test": HELD_OUT_PHOTOS}


# --------------------------------------------------------------------------------------------
# Filters: uint8 RGB [H, W, 3] -> uint8 RGB [H, W, 3], deterministic
# --------------------------------------------------------------------------------------------


def _cv2():
    import cv2  # optional extra ("linearizer[data]"): only the offline styles need it

    return cv2


def _via_bgr(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """OpenCV's photo filters assume BGR order (they convert to Lab / YCrCb inside)."""
    cv2 = _cv2()
    return cv2.cvtColor(fn(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), cv2.COLOR_BGR2RGB)


def stylize(image: np.ndarray) -> np.ndarray:
    """OpenCV's watercolour-like stylisation: edge-aware smoothing with dark edge strokes."""
    return _via_bgr(image, lambda bgr: _cv2().stylization(bgr, sigma_s=10, sigma_r=0.3))


def pencil(image: np.ndarray) -> np.ndarray:
    """OpenCV's colour pencil sketch."""
    return _via_bgr(image, lambda bgr: _cv2().pencilSketch(bgr, sigma_s=10, sigma_r=0.07, shade_factor=0.05)[1])


def detail(image: np.ndarray) -> np.ndarray:
    """OpenCV's detail enhancement (local contrast boost)."""
    return _via_bgr(image, lambda bgr: _cv2().detailEnhance(bgr, sigma_s=10, sigma_r=0.15))


def smooth(image: np.ndarray) -> np.ndarray:
    """OpenCV's recursive edge-preserving filter (close to the identity: a weak style)."""
    return _via_bgr(image, lambda bgr: _cv2().edgePreservingFilter(bgr, flags=1, sigma_s=10, sigma_r=0.3))


def grade(image: np.ndarray) -> np.ndarray:
    """Colour grading: an S-shaped tone curve, teal shadows, orange highlights, more saturation."""
    x = image.astype(np.float64) / 255.0
    k = 3.0
    x = 0.5 + 0.5 * np.tanh(k * (x - 0.5)) / np.tanh(0.5 * k)
    luma = x @ np.array([0.299, 0.587, 0.114])
    x = luma[..., None] + 1.3 * (x - luma[..., None])
    x = x + ((1 - luma) ** 2)[..., None] * np.array([-0.06, 0.02, 0.08])
    x = x + (luma**2)[..., None] * np.array([0.08, 0.03, -0.06])
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def posterize(image: np.ndarray, levels: int = 4) -> np.ndarray:
    """Quantise every channel to `levels` evenly spaced values (piecewise constant: hard to fit)."""
    step = 256 // levels
    return ((image // step).clip(0, levels - 1) * (255 // (levels - 1))).astype(np.uint8)


#: the classical styles, by name.
STYLE_FILTERS: dict[str, StyleFilter] = {
    "stylize": stylize,
    "pencil": pencil,
    "detail": detail,
    "grade": grade,
    "posterize": posterize,
    "smooth": smooth,
}
#: the styles of the figures in docs/style.md.
DEFAULT_STYLES: tuple[str, ...] = ("stylize", "pencil", "detail", "grade")


def apply_filter(name: str, images: Tensor) -> Tensor:
    """Apply the named classical style to a batch.

    Args:
        name: a key of `STYLE_FILTERS`.
        images: float `[B, 3, H, W]` in [0, 1] (quantised to 8 bits on the way, as a file would be).

    Returns:
        float32 `[B, 3, H, W]` in [0, 1].
    """
    if name not in STYLE_FILTERS:
        raise ValueError(f"unknown style filter {name!r}; known filters: {', '.join(STYLE_FILTERS)}")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_filter expects float [B, 3, H, W] images, got {getattr(images, 'shape', images)}")
    fn = STYLE_FILTERS[name]
    out = [torch.from_numpy(fn(tensor_to_uint8(x))).permute(2, 0, 1) for x in images]
    return torch.stack(out).float().div_(255.0)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass
class StylePairs:
    """Paired images, one row per (content, style).

    Attributes:
        content: float32 `[N, C, H, W]` in [0, 1].
        styled: float32 `[N, C, H, W]` in [0, 1], `styled[i]` is `content[i]` in style `style[i]`.
        style: long `[N]`, indices into `styles`.
        styles: the style names.
        names: an identifier per row (file stem, or `photo-patch` index).
    """

    content: Tensor
    styled: Tensor
    style: Tensor
    styles: tuple[str, ...]
    names: list[str]

    def __post_init__(self) -> None:
        n = self.content.shape[0]
        if self.styled.shape != self.content.shape:
            raise ValueError(f"content and styled must have one shape, got {tuple(self.content.shape)} "
                             f"and {tuple(self.styled.shape)}")
        if self.style.shape != (n,) or len(self.names) != n:
            raise ValueError(f"style and names need one entry per pair ({n}), got {tuple(self.style.shape)} "
                             f"and {len(self.names)}")
        if n and not 0 <= int(self.style.min()) <= int(self.style.max()) < len(self.styles):
            raise ValueError(f"style indices must lie in [0, {len(self.styles)}), got {self.style.unique().tolist()}")

    def __len__(self) -> int:
        return self.content.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.content.shape[1:])

    def of_style(self, name: str) -> tuple[Tensor, Tensor]:
        """`(content, styled)` of one style."""
        if name not in self.styles:
            raise ValueError(f"unknown style {name!r}; these pairs have styles: {', '.join(self.styles)}")
        keep = self.style == self.styles.index(name)
        return self.content[keep], self.styled[keep]

    def tensors(self) -> dict[str, Tensor]:
        """The batch keys of the "style" kind: `{"image": content, "target": styled, "style": index}`.

        Example:
            >>> batches = TensorBatches(pairs.tensors(), batch_size=32)   # linearizer.training
        """
        return {"image": self.content, "target": self.styled, "style": self.style}


def _photos(names: Sequence[str]) -> dict[str, np.ndarray]:
    """uint8 RGB photos by name: scikit-image's, and scikit-learn's "china" / "flower"."""
    sklearn_names = {"china": "china.jpg", "flower": "flower.jpg"}
    photos = skimage_photos([n for n in names if n not in sklearn_names])
    wanted = [n for n in names if n in sklearn_names]
    if wanted:
        from sklearn.datasets import load_sample_images

        bundle = load_sample_images()
        by_file = {Path(f).name: im for f, im in zip(bundle.filenames, bundle.images)}
        photos.update({n: np.ascontiguousarray(by_file[sklearn_names[n]]) for n in wanted})
    return {n: photos[n] for n in names}


def _resize_short_side(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BOX))  # a writable copy


def make_filter_pairs(styles: Sequence[str] = DEFAULT_STYLES, split: str = "train", size: int = 32, n: int = 256,
                      seed: int = 0) -> StylePairs:
    """Classical-filter pairs: `n` content patches of `split`'s photos, each in every style.

    Args:
        styles: keys of `STYLE_FILTERS`; their order fixes the style indices.
        split: "train" (`TRAIN_PHOTOS`) or "test" (`HELD_OUT_PHOTOS`, never trained on).
        size: patch side; photos are resized to a shorter side of `8 * size` first.
        n: content patches (the pairs number `n * len(styles)`).
        seed: seeds the patch positions (the split's name is mixed in, so the two splits draw
            differently even with one seed).

    Returns:
        StylePairs with rows ordered patch-major: row `i * len(styles) + s` is patch i in style s.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    unknown = [s for s in styles if s not in STYLE_FILTERS]
    if unknown or not styles:
        raise ValueError(f"styles must be a non-empty list of {list(STYLE_FILTERS)}, got {list(styles)}")
    photos = [_resize_short_side(p, 8 * size) for p in _photos(SPLITS[split]).values()]
    generator = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    content = random_patches(photos, size=size, n=n, generator=generator)
    styled = torch.stack([apply_filter(s, content) for s in styles], dim=1)  # [n, S, C, H, W]
    k = len(styles)
    return StylePairs(
        content=content.repeat_interleave(k, dim=0),
        styled=styled.flatten(0, 1),
        style=torch.arange(k).repeat(n),
        styles=tuple(styles),
        names=[f"{split}-{i:05d}" for i in range(n) for _ in range(k)],
    )


def _read_png(path: Path, channels: int) -> Tensor:
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image, channels)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def load_pair_folder(root: str | Path, styles: Sequence[str] | None = None, channels: int = 3) -> StylePairs:
    """Pairs from `ROOT/STYLE/content/NAME.png` + `ROOT/STYLE/styled/NAME.png`.

    Every style folder must hold the same file names under `content/` and `styled/`, and every
    image must have one size (the model's image shape).

    Args:
        root: the folder with one subfolder per style.
        styles: which styles, in index order (default: every subfolder, sorted by name).
        channels: 1 (grey) or 3 (RGB); images are converted.

    Returns:
        StylePairs, rows sorted by style then name.

    Raises:
        FileNotFoundError: a missing root or style folder.
        ValueError: no pairs, a name present on one side only, or an image of another size (the
            message names the file).

    Example:
        >>> pairs = load_pair_folder("pairs/")      # pairs/mosaic/content/0001.png, pairs/mosaic/styled/0001.png
        >>> pairs.styles
        ('mosaic',)
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pair folder not found (or not a directory): {root}")
    styles = tuple(sorted(p.name for p in root.iterdir() if p.is_dir())) if styles is None else tuple(styles)
    if not styles:
        raise ValueError(f"no style folders under {root}; expected {root}/STYLE/content/NAME.png and "
                         f"{root}/STYLE/styled/NAME.png")
    content, styled, index, names = [], [], [], []
    shape: tuple[int, ...] | None = None
    for s, style in enumerate(styles):
        sides = {}
        for side in ("content", "styled"):
            folder = root / style / side
            if not folder.is_dir():
                raise FileNotFoundError(f"style {style!r}: folder {folder} not found")
            sides[side] = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
        only_c = sorted(set(sides["content"]) - set(sides["styled"]))
        only_s = sorted(set(sides["styled"]) - set(sides["content"]))
        if only_c or only_s:
            raise ValueError(f"style {style!r}: unmatched names: content without styled {only_c[:5]}, "
                             f"styled without content {only_s[:5]} (under {root / style})")
        if not sides["content"]:
            raise ValueError(f"style {style!r}: no .png pairs under {root / style}")
        for name in sorted(sides["content"]):
            for side, out in (("content", content), ("styled", styled)):
                image = _read_png(sides[side][name], channels)
                shape = shape or tuple(image.shape)
                if tuple(image.shape) != shape:
                    raise ValueError(f"{sides[side][name]} has size {tuple(image.shape)} (C, H, W), but the first "
                                     f"image had {shape}: every image must have one size")
                out.append(image)
            index.append(s)
            names.append(name)
    return StylePairs(torch.stack(content), torch.stack(styled), torch.tensor(index), styles, names)


def pair_samples(pairs: StylePairs) -> Iterator[dict]:
    """Samples for `pipelines.shards.write_shards`: one dict per pair, keyed like a training batch.

    Fields: `"image"` (content, stored as `png`), `"target"` (styled, `target.png`), `"style"` (the
    style index, `style.cls`), plus `"__key__"` (style, name and row, reduced to `[A-Za-z0-9_-]`).
    Read back, the shards give the batch keys the "style" kind reads.
    """
    for i in range(len(pairs)):
        s = int(pairs.style[i])
        key = re.sub(r"[^A-Za-z0-9_-]", "_", f"{pairs.styles[s]}-{pairs.names[i]}-{i:06d}")
        yield {
            "__key__": key,
            "image": tensor_to_uint8(pairs.content[i]),
            "target": tensor_to_uint8(pairs.styled[i]),
            "style": s,
        }
