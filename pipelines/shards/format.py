"""The on-disk format of shard sets: sample encoding, the schema check, the manifest file.

A shard set is `{prefix}-000000.tar, {prefix}-000001.tar, ...` (the `ShardWriter` printf
pattern `{prefix}-%06d.tar`) plus an entry in the directory's `manifest.json`, which may hold
several sets (e.g. `mnist-train` and `mnist-test`) side by side:

    {"format": "linearizer-shards/1",
     "sets": {"mnist-train": {"prefix", "pattern": "mnist-train-{000000..000049}.tar", "count",
                              "shards": [{"name", "count", "sha256", "bytes"}, ...],
                              "schema": {"keys", "images", "dtype"}, "source", "created", "format"}}}

Samples are plain dicts; each field becomes one tar member `{__key__}.{ext}`:

| sample field | tar extension | stored as |
|---|---|---|
| `image` | `png` | lossless 8-bit PNG (grey, RGB or RGBA) |
| `label` | `cls` | decimal integer |
| `meta` | `json` | JSON object |
| any other name `k` | `k.png` / `k.cls` / `k.json` | by value type: image / int / dict |

so paired data is just `{"image": content, "target": styled, "style": 2}`. Images are uint8
`[H, W]` / `[H, W, C]` arrays or `[C, H, W]` tensors (float in [0, 1] or uint8). Every sample of a
set has the same fields and image shapes (the schema).

Example:
    >>> record, shapes = encode_sample({"image": x, "label": 3}, index=0)
    >>> sorted(record), shapes
    (['__key__', 'cls', 'png'], {'png': [1, 32, 32]})
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from linearizer.data.transforms import array_to_pil, tensor_to_uint8

FORMAT = "linearizer-shards/1"
MANIFEST = "manifest.json"
DIGITS = 6
#: reserved sample fields and their tar extensions.
RESERVED = {"image": "png", "label": "cls", "meta": "json"}
_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # no "." (WebDataset splits member names at the first dot), no "/"


class ShardError(ValueError):
    """A shard set is damaged or inconsistent; the message names the shard file and, where it
    applies, the sample `__key__`."""


@dataclass
class ShardInfo:
    """One shard file as the manifest records it."""

    name: str
    count: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    """What a shard set holds and how to check it.

    Attributes:
        prefix: shard names are `{prefix}-NNNNNN.tar`.
        count: total number of samples.
        shards: one entry per shard, in order.
        schema: `{"keys": [tar extensions], "images": {ext: [C, H, W]}, "dtype": "uint8"}`.
        source: where the samples came from (free-form, e.g. `{"name": "mnist", "split": "train"}`).
        pattern: brace pattern of the shard names, e.g. `mnist-train-{000000..000009}.tar`.
        created: ISO-8601 UTC time of writing.
        format: manifest format version.
    """

    prefix: str
    count: int
    shards: list[ShardInfo]
    schema: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    pattern: str = ""
    created: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return cls(**data)


def shard_name(prefix: str, index: int) -> str:
    """`{prefix}-%06d.tar`, the name `ShardWriter(f"{prefix}-%06d.tar")` would give shard `index`."""
    return f"{prefix}-{index:0{DIGITS}d}.tar"


def brace_names(prefix: str, n: int) -> str:
    """The brace pattern of `n` shards, e.g. `mnist-train-{000000..000009}.tar`."""
    return f"{prefix}-{{{0:0{DIGITS}d}..{n - 1:0{DIGITS}d}}}.tar"


def is_shard_of(name: str, prefix: str) -> bool:
    """Whether a file name is a shard of the set `prefix` (`{prefix}-NNNNNN.tar`)."""
    return re.fullmatch(re.escape(prefix) + r"-\d{%d}\.tar" % DIGITS, name) is not None


# --------------------------------------------------------------------------------------------
# Encoding and decoding one sample
# --------------------------------------------------------------------------------------------


def _image_array(value: Any) -> np.ndarray | None:
    """uint8 `[H, W, C]` for image-like values, None for anything else."""
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        return tensor_to_uint8(value)
    if isinstance(value, np.ndarray) and value.ndim in (2, 3):
        if value.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 [H, W] or [H, W, C], got {value.dtype} {value.shape}")
        return value[:, :, None] if value.ndim == 2 else value
    return None


def _is_int(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 `[H, W, C]` array (C in 1, 3, 4)."""
    buf = io.BytesIO()
    array_to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 `[H, W, C]` from PNG bytes (raises on corrupt data or a non-8-bit image)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "P":  # palette indices are not intensities: expand them
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got mode {image.mode} ({array.dtype})")
    return array[:, :, None] if array.ndim == 2 else array


def encode_sample(sample: dict[str, Any], index: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Turn a sample dict into tar members.

    Args:
        sample: fields as in the module docstring; `__key__` (optional) names the sample.
        index: position in the stream, the default key `%09d`.

    Returns:
        (record, shapes): `{"__key__": str, ext: bytes, ...}` and `{ext: [C, H, W]}` for images.
    """
    key = str(sample.get("__key__", f"{index:09d}"))
    if not _KEY.match(key):
        raise ValueError(f"sample {index}: __key__ must match {_KEY.pattern} (no dots or slashes), got {key!r}")
    record: dict[str, Any] = {"__key__": key}
    shapes: dict[str, list[int]] = {}
    for name, value in sample.items():
        if name == "__key__":
            continue
        if not _FIELD.match(name):
            raise ValueError(f"sample {key!r}: field names must match {_FIELD.pattern}, got {name!r}")
        image = _image_array(value)
        if image is not None:
            kind, data = "png", encode_png(image)
        elif _is_int(value):
            kind, data = "cls", str(int(value)).encode()
        elif isinstance(value, dict):
            kind, data = "json", json.dumps(value, sort_keys=True).encode()
        else:
            raise ValueError(f"sample {key!r}: field {name!r} must be an image, an int or a dict, "
                             f"got {type(value).__name__}")
        if name in RESERVED and kind != RESERVED[name]:
            expected = {"png": "an image", "cls": "an int", "json": "a dict"}[RESERVED[name]]
            raise ValueError(f"sample {key!r}: field {name!r} must be {expected}, got {type(value).__name__}")
        ext = kind if name in RESERVED else f"{name}.{kind}"
        record[ext] = data
        if image is not None:
            h, w, c = image.shape
            shapes[ext] = [c, h, w]
    if len(record) == 1:
        raise ValueError(f"sample {key!r} has no fields")
    return record, shapes


def field_name(ext: str) -> str:
    """The sample field a tar extension decodes to: png -> image, cls -> label, json -> meta,
    `target.png` -> target."""
    for name, reserved in RESERVED.items():
        if ext == reserved:
            return name
    return ext.rsplit(".", 1)[0]


def decode_member(ext: str, data: bytes) -> Any:
    """Decode one member: PNG -> uint8 `[H, W, C]` array, cls -> int, json -> object."""
    kind = ext.rsplit(".", 1)[-1]
    if kind == "png":
        return decode_png(data)
    if kind == "cls":
        return int(data.decode("ascii").strip())
    if kind == "json":
        return json.loads(data.decode("utf-8"))
    raise ValueError(f"unknown extension {ext!r}")


def check_sample(sample: dict[str, Any], schema: dict[str, Any], where: str) -> dict[str, Any]:
    """Decode the members of a raw WebDataset sample and check them against `schema`.

    Args:
        sample: `{"__key__": ..., ext: bytes, ...}`.
        schema: the manifest schema.
        where: the shard path, for messages.

    Returns:
        `{ext: decoded value}` for every member.

    Raises:
        ShardError: naming `where` and the sample key: a missing or unexpected member, a member
            that does not decode, or an image of the wrong shape.
    """
    key = sample.get("__key__")
    exts = sorted(k for k in sample if not k.startswith("__"))
    missing = sorted(set(schema["keys"]) - set(exts))
    extra = sorted(set(exts) - set(schema["keys"]))
    if missing:
        raise ShardError(f"{where}: sample {key!r}: missing key(s) {missing} (has {exts}, schema {schema['keys']})")
    if extra:
        raise ShardError(f"{where}: sample {key!r}: unexpected key(s) {extra} (schema {schema['keys']})")
    decoded = {}
    for ext in exts:
        try:
            decoded[ext] = decode_member(ext, sample[ext])
        except Exception as e:  # noqa: BLE001 - PIL, json and int raise many types; all mean "corrupt"
            kind = ext.rsplit(".", 1)[-1]
            raise ShardError(f"{where}: sample {key!r}: corrupt {kind} member {ext!r}: {e}") from e
        expected = schema["images"].get(ext)
        if expected is not None:
            h, w, c = decoded[ext].shape
            if [c, h, w] != list(expected):
                raise ShardError(f"{where}: sample {key!r}: wrong image shape for {ext!r}: "
                                 f"[C, H, W] = {[c, h, w]}, schema says {list(expected)}")
    return decoded


# --------------------------------------------------------------------------------------------
# The manifest file
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise manifest updates of concurrent writers into one directory."""
    with open(directory / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifests(directory: str | Path) -> dict[str, Manifest]:
    """Every shard set recorded in `directory/manifest.json` (empty when there is none)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ShardError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
        return {prefix: Manifest.from_dict(m) for prefix, m in data["sets"].items()}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ShardError(f"{path}: unreadable manifest: {e}") from e


def load_manifest(directory: str | Path, prefix: str | None = None) -> Manifest:
    """The manifest of one shard set; `prefix` may be omitted when the directory holds one set.

    Raises:
        FileNotFoundError: no manifest in `directory`.
        ShardError: `prefix` is not recorded, or omitted while several sets are.
    """
    sets = read_manifests(directory)
    if not sets:
        raise FileNotFoundError(f"no {MANIFEST} in {directory} (write shards with pipelines.shards write)")
    if prefix is None:
        if len(sets) != 1:
            raise ShardError(f"{Path(directory) / MANIFEST} holds several shard sets {sorted(sets)}: pass a prefix")
        return next(iter(sets.values()))
    if prefix not in sets:
        raise ShardError(f"{Path(directory) / MANIFEST} has no shard set {prefix!r}; it has {sorted(sets)}")
    return sets[prefix]


def write_manifests(directory: Path, sets: dict[str, Manifest]) -> None:
    text = json.dumps({"format": FORMAT, "sets": {p: m.to_dict() for p, m in sorted(sets.items())}}, indent=2)
    tmp = directory / f".{MANIFEST}.partial"
    tmp.write_text(text + "\n")
    os.replace(tmp, directory / MANIFEST)  # atomic: readers see the old or the new manifest


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
