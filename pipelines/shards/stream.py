"""Tar shards to raw samples, naming the member that broke, and the opt-in skip of bad samples.

Why not `webdataset.tarfile_to_samples`: when a tar is cut short, its error carries the shard
but not the member being read, and a tar cut at a header boundary simply ends early, so the
rest of the shard vanishes without an error. Here every shard is read member by member:

- a member that cannot be read names the shard, the member and the last complete sample;
- a shard that ends before the number of samples its manifest lists is an error too;
- members are grouped into samples the way WebDataset does (the key is the member name up to
  the first dot of its base name), so the samples are the same as `webdataset.WebDataset`'s.

By default any damage stops the stream (`ShardError`). With `SkipBudget(limit=N)` (the job's
`data.max_skipped`) up to N damaged samples are skipped, each logged with its shard and key; the
next good sample carries the count in `__skipped__`, which `collate` sums per batch so the
trainer can report it. A shard cut short counts every sample it should still have held. The
budget counts reads: with resampled shards a damaged sample is skipped (and counted) each time
its shard is drawn.

Example:
    >>> budget = SkipBudget(limit=0)                          # stop at the first damage
    >>> for sample in tar_samples(iter([{"url": "shards/set-000000.tar"}]), budget, {}):
    ...     print(sample["__key__"], sorted(sample))
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from .format import ShardError

log = logging.getLogger(__name__)

@dataclass
class SkipBudget:
    """How many damaged samples a stream may skip, and how many it has.

    Attributes:
        limit: damaged samples that may be skipped; 0 (the default) stops at the first.
        skipped: damaged samples skipped so far.
        unreported: skipped samples not yet handed to a batch (see `take_unreported`).
    """

    limit: int = 0
    skipped: int = 0
    unreported: int = 0

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"the skip limit must be >= 0, got {self.limit}")

    def skip(self, error: ShardError, samples: int = 1) -> None:
        """Count `samples` damaged samples described by `error`, or raise `error` when that
        would pass the limit."""
        if self.skipped + samples > self.limit:
            if self.limit:
                raise ShardError(f"{error} (skip limit reached: {self.skipped} of {self.limit} damaged samples "
                                 f"already skipped, data.max_skipped)") from error
            raise error
        self.skipped += samples
        self.unreported += samples
        log.warning("skipped %d damaged sample(s) (%d of %d): %s", samples, self.skipped, self.limit, error)

    def take_unreported(self) -> int:
        n, self.unreported = self.unreported, 0
        return n


class _Broken(Exception):
    """A tar that could not be read on: the member being read (None: between members) and why."""

    def __init__(self, member: str | None, cause: Exception):
        super().__init__(member, cause)
        self.member, self.cause = member, cause


def _members(url: str) -> Iterator[tuple[str, bytes]]:
    """Regular members of one tar as `(name, bytes)`; a read error is re-raised as `_Broken`
    carrying the member being read (None: the error came while looking for the next header)."""
    current: str | None = None
    try:
        with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                current = info.name
                data = tar.extractfile(info).read()
                yield info.name, data
                current = None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise _Broken(current, e) from e


def shard_samples(url: str, budget: SkipBudget, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one shard: `{"__key__", "__url__", field: bytes, ...}`.

    Args:
        url: path (or any URL `webdataset.gopen` opens) of a tar shard.
        budget: the stream's skip budget.
        expected: samples the manifest lists for this shard (None: unknown, not checked).

    Raises:
        ShardError: naming the shard and the member or sample, unless `budget` skips it.
    """
    sample: dict[str, Any] | None = None
    done: str | None = None  # the last complete sample's key
    count = 0
    seen: set[str] = set()
    try:
        for name, data in _members(url):
            key, field = base_plus_ext(name)
            if key is None:
                raise ShardError(f"{url}: member {name!r} is not named KEY.EXT")
            if sample is not None and sample["__key__"] != key:
                done, count = sample["__key__"], count + 1
                yield sample
                sample = None
            if sample is None:
                if key in seen:
                    raise ShardError(f"{url}: sample {key!r}: key appears twice (members not contiguous)")
                seen.add(key)
                sample = {"__key__": key, "__url__": url}
            if field in sample:
                raise ShardError(f"{url}: sample {key!r}: duplicate member {name!r}")
            sample[field] = data
    except _Broken as broken:
        member = f"member {broken.member!r}" if broken.member else "the next member header"
        after = f"after sample {done!r}" if done else "before any complete sample"
        pending = f"; sample {sample['__key__']!r} is incomplete" if sample else ""
        lost = max(1, expected - count) if expected is not None else 1
        budget.skip(ShardError(f"{url}: cannot read {member} ({type(broken.cause).__name__}: {broken.cause}) "
                               f"{after}{pending}: the shard is truncated or corrupt"), lost)
        return
    if sample is not None:
        done, count = sample["__key__"], count + 1
        yield sample
    if expected is not None and count < expected:
        budget.skip(ShardError(f"{url}: holds {count} samples, manifest says {expected}: the shard ends early "
                               f"(truncated) after sample {done!r}"), expected - count)


def tar_samples(src: Iterator[Mapping[str, Any]], budget: SkipBudget,
                counts: Mapping[str, int]) -> Iterator[dict[str, Any]]:
    """Pipeline stage: shard dicts (`{"url": ...}`, as WebDataset's shard lists yield them) ->
    raw samples. `counts` maps a shard url to its manifest sample count (missing: not checked)."""
    for item in src:
        url = str(item["url"])
        yield from shard_samples(url, budget, counts.get(url))
