"""Reading shard sets back as batches of tensors, the same number of batches on every rank.

Why the care: data-parallel training runs a collective (all-reduce) every step, so a rank that
runs out of batches early leaves the others waiting forever. Splitting shards across ranks
(`split_by_node`) gives each rank whole shards: 3 shards of 100 samples on 2 ranks give 200 and
100 samples. The strategy here:

- `resampled=True` (what `iter_batches` uses): every rank (and every DataLoader worker) draws
  shards at random, with replacement, from the whole set, seeded by `(seed, rank, worker)`: an
  endless stream, so any number of batches exists on every rank. Over many steps every sample
  is seen equally often in expectation; the ranks' streams are independent.
- `resampled=False`: an exact partition. The shard list is permuted once by `seed` (the same
  permutation on every rank), rank r keeps shards r, r + world, ... for good and reshuffles
  its own shards on every pass. With more than one rank an `epoch_len` is required:
  `with_epoch` cycles a rank's shards until it has produced exactly `epoch_len` batches, so the
  ranks stay in step even when their shards differ in size.

Batches are dicts: `image` float `[B, C, H, W]` in [0, 1], `label` long `[B]`, one float image
tensor per extra PNG field (e.g. `target`), one long tensor per extra integer field (e.g.
`style`), lists for JSON fields and for `__key__` / `__url__`, and `__skipped__`, the number of
damaged samples skipped since the previous batch (always 0 unless `max_skipped > 0`; see
`pipelines.shards.stream`).

Example:
    >>> batches = iter_batches("data/shards", "mnist-train", batch_size=256, rank=r, world_size=2, seed=0, steps=1000)
    >>> for batch in batches:
    ...     loss = kind.loss(model, batch)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import Tensor

from .format import ShardError, check_sample, field_name, load_manifest
from .stream import SkipBudget, tar_samples

SHUFFLE_BUFFER = 1000


def shard_urls(directory: str | Path, prefix: str | None = None) -> list[str]:
    """Paths of a set's shards, in order, from the manifest (each must exist)."""
    directory = Path(directory)
    manifest = load_manifest(directory, prefix)
    urls = [str(directory / s.name) for s in manifest.shards]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise ShardError(f"{missing[0]}: shard listed in the manifest is missing ({len(missing)} missing)")
    return urls


def brace_pattern(directory: str | Path, prefix: str | None = None) -> str:
    """The brace pattern of a set's shards, e.g. `data/shards/mnist-train-{000000..000049}.tar`,
    as `webdataset.WebDataset` or `ray.data.read_webdataset` accept it."""
    return str(Path(directory) / load_manifest(directory, prefix).pattern)


def decode_sample(sample: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decode a raw WebDataset sample into named tensors (see the module docstring).

    Args:
        sample: `{"__key__", "__url__", ext: bytes, ...}` as `tarfile_to_samples` yields it.
        schema: when given (from the manifest), keys and image shapes are checked as well.

    Raises:
        ShardError: naming the shard and the sample key.
    """
    where = str(sample.get("__url__", "?"))
    if schema is None:
        schema = {"keys": sorted(k for k in sample if not k.startswith("__")), "images": {}}
    decoded = check_sample(sample, schema, where)
    out: dict[str, Any] = {"__key__": sample["__key__"], "__url__": where}
    for ext, value in decoded.items():
        name = field_name(ext)
        if isinstance(value, np.ndarray):
            out[name] = torch.from_numpy(value.copy()).permute(2, 0, 1).float().div_(255.0)
        else:
            out[name] = value
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples: tensors -> `[B, ...]`, ints -> long `[B]`, `__skipped__` -> its sum,
    anything else -> list."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "__skipped__":
            batch[name] = sum(values)
        elif isinstance(values[0], Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], int) and not name.startswith("__"):
            batch[name] = torch.tensor(values, dtype=torch.long)
        else:
            batch[name] = values
    return batch


# Stages are module-level functions bound with `partial` (not lambdas), so that the pipeline
# pickles into DataLoader workers under any multiprocessing start method.


def _worker_seed(rank: int) -> int:
    info = torch.utils.data.get_worker_info()
    return rank * 1_000_003 + (0 if info is None else info.id)


def _split_by_rank(src: Iterator[Any], rank: int, world_size: int) -> Iterator[Any]:
    return itertools.islice(src, rank, None, world_size)


def _decode(src: Iterator[dict[str, Any]], schema: dict[str, Any] | None, budget: SkipBudget
            ) -> Iterator[dict[str, Any]]:
    """Decode stage: a damaged sample raises, or is skipped when the budget allows it; every
    decoded sample carries the skips since the previous one (`__skipped__`)."""
    for sample in src:
        try:
            decoded = decode_sample(sample, schema)
        except ShardError as e:
            budget.skip(e)
            continue
        decoded["__skipped__"] = budget.take_unreported()
        yield decoded


def make_webdataset(urls: list[str] | str, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                    world_size: int = 1, resampled: bool = False, epoch_len: int | None = None,
                    schema: dict[str, Any] | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
                    max_skipped: int = 0, counts: dict[str, int] | None = None) -> wds.DataPipeline:
    """A WebDataset pipeline of decoded, batched samples for one rank.

    Args:
        urls: shard paths or a brace pattern.
        batch_size: samples per batch; incomplete batches are dropped.
        shuffle: shuffle shard order (per epoch) and samples (through a buffer).
        seed: base seed; everything random is derived from `(seed, rank, worker, epoch)`.
        rank, world_size: this process's data-parallel position.
        resampled: draw shards with replacement (an endless stream); see the module docstring.
        epoch_len: batches per epoch for this rank (required when `world_size > 1` and not
            resampled; with `resampled`, it bounds the otherwise endless stream).
        schema: the manifest schema; when given, every sample's keys and image shapes are checked.
        shuffle_buffer: samples held by the shuffle buffer.
        max_skipped: damaged samples this stream (each DataLoader worker's) may skip, counted in
            the batches' `__skipped__`; 0 stops at the first damaged sample or shard.
        counts: samples per shard url (from the manifest): a shard that ends early is damaged.

    Returns:
        A `webdataset.DataPipeline` (an `IterableDataset`; wrap it in `wds.WebLoader(ds,
        batch_size=None, num_workers=k)` for parallel decoding) yielding batch dicts.

    Raises:
        ValueError: bad arguments, or a configuration that would give ranks unequal batch counts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    urls = list(wds.shardlists.expand_urls(urls)) if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("no shard urls given")
    if world_size > 1 and not resampled:
        if epoch_len is None:
            raise ValueError("world_size > 1 without resampling needs epoch_len (batches per rank per epoch) "
                             "so that every rank yields the same number of batches")
        if len(urls) < world_size:
            raise ValueError(f"{len(urls)} shards cannot be split over {world_size} ranks; write more shards "
                             "(smaller maxcount) or use resampled=True")
    stages: list[Any] = []
    if resampled:
        # Explicit seeds: WebDataset(resampled=True) would seed from pid and time (not reproducible).
        stages.append(wds.ResampledShards(urls, seed=seed, deterministic=True,
                                          worker_seed=partial(_worker_seed, rank)))
    else:
        # The permutation depends on the seed only, never on a pass counter: ranks that cycle
        # through their shards at different rates still never share a shard.
        stages.append(wds.SimpleShardList(urls, seed=seed if shuffle else None))
        stages.append(partial(_split_by_rank, rank=rank, world_size=world_size))  # explicit node split
        stages.append(wds.split_by_worker)
        if shuffle:  # a new order of this rank's shards on every pass, seeded by (seed, rank, pass)
            stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed * 1_000_003 + rank))
    # One budget shared by the two stages that can meet damage (a DataLoader worker gets its own copy).
    budget = SkipBudget(max_skipped)
    stages.append(partial(tar_samples, budget=budget, counts=dict(counts or {})))
    if shuffle:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed * 1_000_003 + rank))
    stages.append(partial(_decode, schema=schema, budget=budget))
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=False))
    pipeline = wds.DataPipeline(*stages)
    return pipeline.with_epoch(epoch_len) if epoch_len is not None else pipeline


def iter_batches(directory: str | Path, prefix: str | None, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, steps: int = 1, num_workers: int = 0, max_skipped: int = 0
                 ) -> Iterator[dict[str, Any]]:
    """Exactly `steps` batches for this rank, from a verified-by-manifest shard set.

    Every rank gets the same number of batches (the stream is resampled, hence endless), so a
    data-parallel loop never waits on a rank that ran dry.

    Args:
        directory, prefix: the shard set (`prefix` may be None when the directory holds one).
        batch_size: per-rank batch size.
        rank, world_size: this process's data-parallel position.
        seed: base seed (ranks and workers derive distinct streams from it).
        steps: number of batches to yield.
        num_workers: DataLoader worker processes decoding in parallel (0 decodes in-process).
        max_skipped: damaged samples each reading process may skip (0: stop at the first);
            skips are counted in the batches' `__skipped__`.

    Yields:
        Batch dicts (see the module docstring).

    Raises:
        ShardError: a damaged shard or sample (named), or a stream that ended early.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    manifest = load_manifest(directory, prefix)
    urls = shard_urls(directory, manifest.prefix)
    dataset = make_webdataset(urls, batch_size, shuffle=True, seed=seed, rank=rank, world_size=world_size,
                              resampled=True, schema=manifest.schema, max_skipped=max_skipped,
                              counts={str(Path(directory) / s.name): s.count for s in manifest.shards})
    source = dataset if num_workers == 0 else wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)
    produced = 0
    for batch in itertools.islice(iter(source), steps):
        produced += 1
        yield batch
    if produced != steps:
        raise ShardError(f"{directory}: set {manifest.prefix!r} gave {produced} batches of {batch_size} on rank "
                         f"{rank}, {steps} were asked for (the set holds {manifest.count} samples)")
