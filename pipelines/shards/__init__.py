"""The data stage: datasets to verified WebDataset shards, and shards back to batches.

    python -m pipelines.shards write --source mnist --split train --out data/shards --maxcount 1000
    python -m pipelines.shards verify data/shards

Modules: `format` (the sample encoding and the manifest), `writer` (writing and verification),
`stream` (the tar reader shared by the workers and deep verification), `reader` (rank-balanced
batches for training workers), `cli` (the dataset sources and the command line).
"""

from __future__ import annotations

from .cli import (brace_pattern, collate, decode_sample, digits_samples, folder_samples, hf_samples, iter_batches,
                  load_manifest, main, make_webdataset, Manifest, mnist_samples, open_source, read_manifests,
                  Samples, shard_urls, ShardError, ShardInfo, SOURCES, verify_all, verify_shards, write_shards)

__all__ = [
    "brace_pattern", "collate", "decode_sample", "digits_samples", "folder_samples", "hf_samples", "iter_batches",
    "load_manifest", "main", "make_webdataset", "Manifest", "mnist_samples", "open_source", "read_manifests",
    "Samples", "shard_urls", "ShardError", "ShardInfo", "SOURCES", "verify_all", "verify_shards", "write_shards",
]
