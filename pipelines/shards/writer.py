"""Writing shard sets safely and proving them intact.

The format (sample fields, tar members, `manifest.json`) is described in
`pipelines.shards.format`. Shards are written under hidden temporary names and renamed only once
all of them are complete, immediately before the manifest is updated: a crash leaves no file
that looks like a shard. Verification checks every shard against the manifest and, deeply,
every sample against the schema; each defect raises a `ShardError` naming the shard file and
the sample key.

Example:
    >>> m = write_shards(({"image": x, "label": y} for x, y in pairs), "data/shards", "digits-train", maxcount=500)
    >>> verify_shards("data/shards", "digits-train")     # raises ShardError on any defect
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from webdataset import TarWriter

from .format import (FORMAT, MANIFEST, Manifest, ShardError, ShardInfo, brace_names, check_sample,
                           encode_sample, file_digest, is_shard_of, load_manifest, locked, read_manifests,
                           shard_name, write_manifests)
from .stream import SkipBudget, shard_samples

__all__ = ["FORMAT", "MANIFEST", "Manifest", "ShardError", "ShardInfo", "load_manifest", "read_manifests",
           "scan_shard", "verify_all", "verify_shards", "write_shards"]

#: fixed member mtime: the same samples always give byte-identical shards (and checksums).
MTIME = 0.0
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _ShardSink:
    """Rotates `TarWriter`s over temporary files by sample count and payload size, as
    `ShardWriter` does, and remembers what each finished shard holds."""

    def __init__(self, directory: Path, prefix: str, maxcount: int, maxsize: int) -> None:
        self.directory, self.prefix, self.maxcount, self.maxsize = directory, prefix, maxcount, maxsize
        self.finished: list[tuple[Path, ShardInfo]] = []  # (temporary path, final info)
        self.writer: TarWriter | None = None
        self.count = self.size = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None or self.count >= self.maxcount or self.size >= self.maxsize:
            self._next()
        self.size += self.writer.write(record)
        self.count += 1

    def _next(self) -> None:
        self._finish()
        name = shard_name(self.prefix, len(self.finished))
        self.tmp = self.directory / f".{name}.partial"
        self.stream = open(self.tmp, "wb")
        self.writer = TarWriter(self.stream, encoder=False, mtime=MTIME)
        self.count = self.size = 0

    def _finish(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        self.writer = None
        digest, size = file_digest(self.tmp)
        name = shard_name(self.prefix, len(self.finished))
        self.finished.append((self.tmp, ShardInfo(name=name, count=self.count, sha256=digest, bytes=size)))

    def close(self) -> list[tuple[Path, ShardInfo]]:
        self._finish()
        return self.finished

    def discard(self) -> None:
        """Remove every temporary file (after an error)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.stream.close()
            self.tmp.unlink(missing_ok=True)
        for tmp, _ in self.finished:
            tmp.unlink(missing_ok=True)


def write_shards(samples: Iterable[dict[str, Any]], out_dir: str | Path, prefix: str, maxcount: int = 1000,
                 maxsize: int = 256 << 20, source: dict[str, Any] | None = None,
                 overwrite: bool = False) -> Manifest:
    """Write samples to WebDataset shards and record them in `out_dir/manifest.json`.

    Args:
        samples: sample dicts (fields as in `pipelines.shards.format`); all must share fields and
            image shapes.
        out_dir: directory of the shards (created if needed); may hold other shard sets.
        prefix: shard names are `{prefix}-NNNNNN.tar`.
        maxcount: at most this many samples per shard.
        maxsize: start a new shard once a shard's payload reaches this many bytes.
        source: a JSON-able description of where the samples came from.
        overwrite: replace an existing set of the same prefix (its old shards are removed).

    Returns:
        The manifest of the new set.

    Raises:
        ValueError: bad arguments, an empty stream, or a sample that breaks the schema.
        FileExistsError: the prefix already exists and `overwrite` is False.
    """
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix must match {_PREFIX.pattern}, got {prefix!r}")
    if maxcount < 1 or maxsize < 1:
        raise ValueError(f"maxcount and maxsize must be >= 1, got {maxcount} and {maxsize}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    old = [p for p in directory.iterdir() if is_shard_of(p.name, prefix)]
    if (old or prefix in read_manifests(directory)) and not overwrite:
        raise FileExistsError(f"{directory} already holds shard set {prefix!r}; pass overwrite=True (--overwrite)")

    sink = _ShardSink(directory, prefix, maxcount, maxsize)
    schema: dict[str, Any] | None = None
    keys: set[str] = set()
    try:
        for index, sample in enumerate(samples):
            record, shapes = encode_sample(sample, index)
            this = {"keys": sorted(k for k in record if k != "__key__"), "images": shapes, "dtype": "uint8"}
            if schema is None:
                schema = this
            elif this != schema:
                raise ValueError(f"sample {record['__key__']!r} has keys {this['keys']} and image shapes "
                                 f"{this['images']}, but the set has {schema['keys']} and {schema['images']}")
            if record["__key__"] in keys:
                raise ValueError(f"duplicate sample key {record['__key__']!r}")
            keys.add(record["__key__"])
            sink.write(record)
        finished = sink.close()
    except BaseException:
        sink.discard()
        raise
    if schema is None:
        raise ValueError("no samples to write")

    infos = [info for _, info in finished]
    manifest = Manifest(prefix=prefix, count=sum(i.count for i in infos), shards=infos, schema=schema,
                        source=dict(source or {}), pattern=brace_names(prefix, len(infos)),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with locked(directory):
        for tmp, info in finished:
            os.replace(tmp, directory / info.name)
        new = {i.name for i in infos}
        for path in old:
            if path.name not in new:
                path.unlink(missing_ok=True)  # shards of the replaced, larger set
        sets = read_manifests(directory)
        sets[prefix] = manifest
        write_manifests(directory, sets)
    return manifest


# --------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------


def scan_shard(path: Path, schema: dict[str, Any], expected: int | None = None) -> int:
    """Read every sample of one shard, check it against `schema`; return the sample count.

    The training reader's own tar stream (`stream.shard_samples`) reads it, so a shard
    passes verification exactly when the workers can read it.

    Raises:
        ShardError: a truncated or corrupt tar, a duplicated key, a bad sample (see
            `check_sample`), or fewer samples than `expected`, naming the shard and the key.
    """
    count = 0
    for sample in shard_samples(str(path), SkipBudget(0), expected):
        check_sample(sample, schema, str(path))
        count += 1
    return count


def verify_shards(directory: str | Path, prefix: str | None = None, deep: bool = True) -> Manifest:
    """Check a shard set against its manifest.

    Shallow checks: every listed shard exists with the recorded size and sha256, the counts add
    up, and the directory holds no `.tar` file that no manifest set lists. `deep` also reads every
    sample: the tar is complete, each sample has exactly the schema's keys, every member decodes
    and images have the schema's shape, and each shard holds its recorded count.

    Args:
        directory: the shard directory.
        prefix: the set to check; may be omitted when the directory holds one set.
        deep: decode every sample too.

    Returns:
        The verified manifest.

    Raises:
        ShardError: the first problem found, naming the shard file (and sample key).
        FileNotFoundError: no manifest.

    Example:
        >>> verify_shards("data/shards", "mnist-train").count
        50000
    """
    directory = Path(directory)
    manifest = load_manifest(directory, prefix)
    listed = {s.name for m in read_manifests(directory).values() for s in m.shards}
    unlisted = sorted(p.name for p in directory.glob("*.tar") if p.name not in listed)
    if unlisted:
        raise ShardError(f"{directory / unlisted[0]}: shard not listed in {directory / MANIFEST} "
                         f"({len(unlisted)} unlisted: {unlisted[:5]})")
    if manifest.count != sum(s.count for s in manifest.shards):
        raise ShardError(f"{directory / MANIFEST}: set {manifest.prefix!r} count {manifest.count} "
                         f"!= sum of shard counts {sum(s.count for s in manifest.shards)}")
    for info in manifest.shards:
        path = directory / info.name
        if not path.is_file():
            raise ShardError(f"{path}: shard listed in the manifest is missing")
        digest, size = file_digest(path)
        problem: ShardError | None = None
        count = None
        if deep:
            try:
                count = scan_shard(path, manifest.schema, info.count)
            except ShardError as e:
                problem = e
        if digest != info.sha256 or size != info.bytes:
            detail = f"; {problem}" if problem else ""
            raise ShardError(f"{path}: checksum mismatch: manifest has sha256 {info.sha256[:16]}... "
                             f"({info.bytes} bytes), file has {digest[:16]}... ({size} bytes){detail}")
        if problem is not None:
            raise problem
        if count is not None and count != info.count:
            raise ShardError(f"{path}: holds {count} samples, manifest says {info.count}")
    return manifest


def verify_all(directory: str | Path, deep: bool = True) -> dict[str, Manifest]:
    """`verify_shards` for every set recorded in the directory."""
    sets = read_manifests(directory)
    if not sets:
        raise FileNotFoundError(f"no {MANIFEST} in {directory}")
    return {prefix: verify_shards(directory, prefix, deep) for prefix in sets}
