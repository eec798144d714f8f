"""The tar reader of the training workers against WebDataset's own, on the same shards.

`pipelines.shards.stream.tar_samples` reads shards member by member so that damage is named
(member, last complete sample) and a shard cut at a member header is caught by the manifest's
count (docs/reliability.md). This bench asks what that costs: raw samples per second (no
decoding) of `tar_samples` and of `webdataset.tarfile_to_samples` over the same MNIST shards,
alternating the two `--repeats` times in one process, and their ratio.

Run:
    python -m bench.bench_reader                       # 4,000 MNIST images in 4 shards, 5 rounds
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import webdataset as wds

from .bench_pipeline import PREFIX, write_mnist_shards
from .common import add_json_flag, base_parser, machine_line, table, write_results

#: arguments of the short run of `python -m bench.run_all --quick`.
QUICK_ARGS = ["--limit", "400", "--maxcount", "100", "--repeats", "2"]


def samples_per_s(read: Callable[[], Iterator[dict]]) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for _ in read():
        n += 1
    return n / (time.perf_counter() - start), n


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.shards import load_manifest, shard_urls
    from pipelines.shards.stream import SkipBudget, tar_samples

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4000, help="MNIST images written (default: 4000)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default: 1000)")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    print(machine_line("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        written = write_mnist_shards(Path(tmp), args.limit, args.maxcount)
        urls = shard_urls(tmp, PREFIX)
        counts = {str(Path(tmp) / s.name): s.count for s in load_manifest(tmp, PREFIX).shards}
        readers = {
            "pipelines.shards.stream.tar_samples": lambda: tar_samples(iter({"url": u} for u in urls), SkipBudget(),
                                                                      counts),
            "webdataset.tarfile_to_samples": lambda: wds.DataPipeline(wds.SimpleShardList(urls),
                                                                      wds.tarfile_to_samples()),
        }
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(max(args.repeats, 1)):
            for name, read in readers.items():
                rate, n = samples_per_s(read)
                if n != written:
                    raise RuntimeError(f"{name} read {n} samples, {written} were written")
                rates[name].append(rate)
    ours, theirs = (statistics.median(r) for r in rates.values())
    print(f"# {written} samples in {len(urls)} shards, raw (undecoded) samples, median of {args.repeats} rounds")
    print(table(["reader", "samples/s (median)", "runs"],
                [[name, f"{statistics.median(r):.0f}", len(r)] for name, r in rates.items()]))
    print(f"\nours / WebDataset's: {ours / theirs:.2f}x")
    write_results(args.json, "bench.bench_reader", argv, {
        "settings": {"samples": written, "shards": len(urls), "rounds": args.repeats},
        "samples_per_s": rates, "ours_over_webdataset": ours / theirs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
