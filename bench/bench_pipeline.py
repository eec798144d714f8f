"""Pipeline throughput: Ray Train + DeepSpeed steps against a bare torch loop, and the shard loader.

Three measurements, on MNIST 1x32x32 shards written by `pipelines.shards.write_shards` and the
"onestep" kind (flow depth 2, hidden 16, rank 4 by default), global batch 64:

- the bare loop: `linearizer.training.fit` in this process (one torch thread), fed by
  `pipelines.shards.reader.iter_batches` from the same shards;
- the pipeline (`pipelines.train.train`) with 1 worker and with 2 workers (ZeRO stage 1 on
  CPU/gloo, MLflow in a throwaway SQLite store, no registry, no validation, no sample grids);
- the shard loader alone: `iter_batches` batches per second, single process, no training.

Steady state only, never start-up (Ray, DeepSpeed initialisation, ActNorm's data-dependent init,
the first steps):

- pipeline: a job of `2 N` steps with `train.log_every = N`. The worker reports `samples_per_s`
  per logging window; the final report is the window of steps N+1..2N alone, so time per step
  = `batch / samples_per_s` of that window;
- bare loop: an `on_step` callback stamps the wall and CPU clock after every step; the first
  `--warmup` steps are dropped and the next N averaged;
- loader: the first `--warmup` batches are dropped (shard opening, shuffle-buffer fill).

Goals of the issue: pipeline time per step <= 1.15x the bare loop's with 1 worker; loader
throughput >= 5x what the trainer consumes. Headroom is given against each trainer's per-process
consumption (a 2-worker run reads `batch / 2` per rank, each rank from its own loader).

Run:
    python -m bench.bench_pipeline                    # N = 50: 2 x 50 pipeline steps per job
    python -m bench.bench_pipeline --steps 100 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from linearizer.config import ModelConfig, TrainConfig, from_dict
from linearizer.kinds import get_kind
from linearizer.training import fit

from .common import add_json_flag, fmt_ratio, fmt_seconds, machine_line, table, warm_up, write_results

PREFIX = "mnist-train"
#: `python -m bench.run_all --quick`: a smoke test of every stage (about a minute), not a measurement.
QUICK_ARGS = ["--steps", "3", "--warmup", "2", "--workers", "1", "--loader-batches", "5", "--limit", "1000"]


def model_dict(depth: int, hidden: int, rank: int) -> dict[str, Any]:
    """The benchmarked "onestep" model as a config section (operator/sampler at their defaults)."""
    return {"kind": "onestep", "image_shape": [1, 32, 32], "flow": {"depth": depth, "hidden": hidden},
            "operator": {"rank": rank}}


def write_mnist_shards(directory: Path, limit: int, maxcount: int) -> int:
    """MNIST train images as a shard set `mnist-train` in `directory`; returns the sample count."""
    from pipelines.shards import mnist_samples, write_shards

    source = {"name": "mnist", "split": "train", "size": 32, "limit": limit}
    return write_shards(mnist_samples("train", 32, limit), directory, PREFIX, maxcount, source=source).count


def bare_loop(shards: Path, model: dict[str, Any], batch: int, warmup: int, steps: int, seed: int
              ) -> tuple[float, float]:
    """Steady-state (wall, CPU) seconds per step of `linearizer.training.fit` on the shards."""
    from pipelines.shards.reader import iter_batches

    cfg = from_dict(ModelConfig, model)
    kind = get_kind(cfg.kind)
    torch.manual_seed(seed)
    net = kind.build(cfg)
    total = warmup + steps
    stamps: list[tuple[float, float]] = []
    batches = iter_batches(shards, PREFIX, batch, seed=seed, steps=total)
    fit(kind, net, batches, TrainConfig(steps=total, batch_size=batch, seed=seed, log_every=0),
        on_step=lambda _: stamps.append((time.perf_counter(), time.process_time())), progress=False)
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[-1]
    return (w1 - w0) / steps, (c1 - c0) / steps


def pipeline_run(root: Path, shards: Path, model: dict[str, Any], batch: int, steps: int, workers: int,
                 seed: int) -> tuple[float, float]:
    """Steady-state seconds per step of the pipeline (window N+1..2N) and the job's wall time."""
    from pipelines.config import load_job_config
    from pipelines.train import train

    name = f"bench-pipeline-w{workers}"
    store = root / "mlflow"
    store.mkdir(exist_ok=True)
    cfg = load_job_config(base={
        "name": name,
        "output_dir": str(root / "runs"),
        "data": {"shards": str(shards), "source": "mnist", "split": "train", "heldout_split": None,
                 "verify": "off"},
        "model": model,
        "train": {"steps": 2 * steps, "batch_size": batch, "seed": seed, "log_every": steps,
                  "sample_every": 0, "checkpoint_every": 0},
        "distributed": {"num_workers": workers, "cpus_per_worker": 0.5, "zero_stage": 1},
        "mlflow": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
                   "artifact_location": (store / "artifacts").as_uri(), "experiment": name,
                   "registered_model": None, "sample_grid": 0},
    })
    outcome = train(cfg)
    if int(outcome.metrics.get("step", -1)) != 2 * steps:
        raise RuntimeError(f"the last report is of step {outcome.metrics.get('step')}, expected {2 * steps}")
    return batch / float(outcome.metrics["samples_per_s"]), outcome.seconds


def loader_rate(shards: Path, batch: int, warmup: int, batches: int, seed: int) -> float:
    """Samples per second `iter_batches` yields in this process, after `warmup` batches."""
    from pipelines.shards.reader import iter_batches

    stream = iter_batches(shards, PREFIX, batch, seed=seed, steps=warmup + batches)
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    n = sum(1 for _ in stream)
    return n * batch / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    """Measure and print the tables; returns the figures (for `--json`)."""
    torch.set_num_threads(1)
    warm_up()
    model = model_dict(args.depth, args.hidden, args.rank)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        shards = root / "shards"
        count = write_mnist_shards(shards, args.limit, args.maxcount)
        print(machine_line())
        print(f"# onestep depth {args.depth}, hidden {args.hidden}, rank {args.rank}; MNIST 1x32x32, {count} samples "
              f"in shards of {args.maxcount}; batch {args.batch}; N = {args.steps} steady-state steps")

        # The bare loop runs before and after the pipeline jobs and the mean is the baseline: on a
        # shared machine the load drifts during the run, and this brackets the pipeline's window.
        before = bare_loop(shards, model, args.batch, args.warmup, args.steps, args.seed)
        pipeline = {w: pipeline_run(root, shards, model, args.batch, args.steps, w, args.seed) for w in args.workers}
        after = bare_loop(shards, model, args.batch, args.warmup, args.steps, args.seed)
        bare_wall = (before[0] + after[0]) / 2
        rows = [["bare loop (`linearizer.training.fit`, 1 process)", fmt_seconds(bare_wall),
                 f"{args.batch / bare_wall:.0f}", "1.00x", "-"]]
        consumption = [args.batch / bare_wall]
        for workers, (per_step, job_seconds) in pipeline.items():
            rows.append([f"pipeline, {workers} worker{'s' if workers > 1 else ''}", fmt_seconds(per_step),
                         f"{args.batch / per_step:.0f}", fmt_ratio(per_step / bare_wall), fmt_seconds(job_seconds)])
            consumption.append(args.batch / per_step / workers)
        print(table(["trainer", "time / step", "samples/s", "vs bare loop", "whole job"], rows))
        print(f"# bare loop per step, wall (CPU): before the pipeline jobs {fmt_seconds(before[0])} "
              f"({fmt_seconds(before[1])}), after {fmt_seconds(after[0])} ({fmt_seconds(after[1])})")

        rate = loader_rate(shards, args.batch, args.warmup, args.loader_batches, args.seed)
        print(table(["shard loader", "samples/s", "fastest per-process consumption", "headroom"],
                    [[f"`iter_batches`, batch {args.batch}, in-process", f"{rate:.0f}", f"{max(consumption):.0f}",
                      fmt_ratio(rate / max(consumption))]]))
        print(machine_line())
    return {"bare_loop": {"before": {"seconds": before[0], "cpu_seconds": before[1]},
                          "after": {"seconds": after[0], "cpu_seconds": after[1]}, "mean_seconds": bare_wall},
            "pipeline": [{"workers": w, "seconds_per_step": per_step, "job_seconds": job_seconds,
                          "over_bare_loop": per_step / bare_wall} for w, (per_step, job_seconds) in pipeline.items()],
            "loader": {"samples_per_s": rate, "headroom": rate / max(consumption)}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="steady-state steps N per trainer (default: 50)")
    parser.add_argument("--warmup", type=int, default=10, help="bare loop / loader steps dropped (default: 10)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pipeline worker counts (default: 1 2)")
    parser.add_argument("--batch", type=int, default=64, help="global batch size (default: 64)")
    parser.add_argument("--depth", type=int, default=2, help="flow depth (default: 2)")
    parser.add_argument("--hidden", type=int, default=16, help="flow hidden channels (default: 16)")
    parser.add_argument("--rank", type=int, default=4, help="operator rank (default: 4)")
    parser.add_argument("--limit", type=int, default=4000, help="MNIST samples written to shards (default: 4000)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default: 1000)")
    parser.add_argument("--loader-batches", type=int, default=200, help="loader batches timed (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1, got {args.steps} and {args.warmup}")
    if any(args.batch % w for w in args.workers):
        parser.error(f"--batch {args.batch} must divide by every worker count, got {args.workers}")
    figures = run(args)
    write_results(args.json, "bench.bench_pipeline", argv, {"settings": vars(args) | {"json": None}, **figures})
    return 0


if __name__ == "__main__":
    from pipelines.runtime import prepare_environment

    prepare_environment()  # before Ray is imported anywhere
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
