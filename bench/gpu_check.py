"""GPU check: the pipeline's DeepSpeed training step on one CUDA device, images/s and peak memory.

For each model size and ZeRO stage it builds the job config the pipeline would (`pipelines.config`:
`distributed.use_gpu=true`, one worker, the ZeRO stage's `infra/deepspeed/zeroN.json` through
`deepspeed_settings`), joins a one-rank NCCL process group, wraps the model kind in a DeepSpeed
engine with the pipeline's torch AdamW, and runs the per-step calls of
`pipelines.train.worker.Trainer.run`: the kind's loss under bf16 autocast, `engine.backward`,
`engine.step`. What it leaves out is Ray and the shard reader (a fixed random batch in [0, 1] on
the GPU stands in for the data), so the figures are the training step's own.

Models (the one-step kind):

| name | image | flow | operator |
|---|---|---|---|
| `default` | 1x32x32 (MNIST) | depth 4, hidden 32 | rank 8 |
| `celeba` | 3x64x64 (CelebA size) | depth 4, hidden 32 | rank 8 (d = 12288) |

Per case it reports images/s over `--steps` timed steps after `--warmup` steps (CUDA synchronised
around the timed window), the peak of allocated and reserved device memory over the whole case
(model, engine and steps), the last loss and whether it was finite. A failing case is recorded
with its error and the others still run; the exit status is 1 if any failed.

Run on a machine with one GPU (`bench/gpu_check.sh` sets the environment and writes the JSON):
    python -m bench.gpu_check --json docs/results/gpu_check.json
    python -m bench.gpu_check --models celeba --zero 3 --steps 50
    python -m bench.gpu_check --dry-run          # the cases and their DeepSpeed configs (no GPU needed)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.config import JobConfig, deepspeed_settings, load_job_config

from .common import add_json_flag, machine_line, write_results

#: model sizes: `--set`-style overrides of the pipeline's job config.
MODELS: dict[str, list[str]] = {
    "default": [],
    "celeba": ["model.image_shape=[3,64,64]", "model.flow.depth=4", "model.operator.rank=8"],
}
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Case:
    """One measured configuration.

    Attributes:
        model: a key of `MODELS`.
        zero_stage: the DeepSpeed ZeRO stage.
        precision: "bf16" (autocast over fp32 weights, as the pipeline runs it) or "fp32".
        job: the pipeline's job config for it.
        deepspeed: the dict `deepspeed.initialize` receives.
    """

    model: str
    zero_stage: int
    precision: str
    job: JobConfig
    deepspeed: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.model}/zero{self.zero_stage}/{self.precision}"


def build_cases(models: Sequence[str], zero_stages: Sequence[int], precisions: Sequence[str],
                batch: int, extra: Sequence[str] = ()) -> list[Case]:
    """The job and DeepSpeed configs of every (model, ZeRO stage, precision), in that order.

    Args:
        models: keys of `MODELS`.
        zero_stages: ZeRO stages, each in 0-3.
        precisions: "fp32" and/or "bf16".
        batch: images per step (one rank takes them all).
        extra: further `dotted.key=value` overrides of the job config (applied last).

    Returns:
        The cases.

    Raises:
        ValueError: an unknown model, stage or precision, or an empty selection.
        ConfigError: overrides the pipeline's config rejects.
    """
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ValueError(f"--models must name some of {sorted(MODELS)}, got {list(models)}")
    if not zero_stages or any(z not in ZERO_STAGES for z in zero_stages):
        raise ValueError(f"--zero must be stages among {list(ZERO_STAGES)}, got {list(zero_stages)}")
    if not precisions or any(p not in PRECISIONS for p in precisions):
        raise ValueError(f"--precisions must be among {list(PRECISIONS)}, got {list(precisions)}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    cases = []
    for model in models:
        for stage in zero_stages:
            for precision in precisions:
                overrides = ["name=gpu-check", "data.source=none", "data.prefix=synthetic", "distributed.use_gpu=true",
                             "distributed.num_workers=1", f"distributed.zero_stage={stage}",
                             f"distributed.precision={precision}", f"train.batch_size={batch}",
                             *MODELS[model], *extra]
                job = load_job_config(base={}, overrides=overrides)
                cases.append(Case(model, stage, precision, job, deepspeed_settings(job)))
    return cases


def init_process_group(device: torch.device) -> str:
    """Join a one-rank process group on loopback, NCCL on CUDA (what Ray Train sets up for one GPU
    worker), gloo on CPU; returns the backend."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_backend()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: Case, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Train `warmup + steps` steps of one case; returns its figures (see the module docstring).

    On CPU (a smoke run of the same loop) the memory figures are None."""
    import deepspeed

    from linearizer.kinds import get_kind

    kind = get_kind(case.job.model.kind)
    t = case.job.train
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    torch.manual_seed(t.seed)
    model = kind.build(case.job.model).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    images = torch.rand(t.batch_size, *case.job.model.chw(), device=device,
                        generator=torch.Generator(device).manual_seed(t.seed))
    batch = {"image": images}
    model.train()
    with torch.no_grad():  # data-dependent initialisation (ActNorm), as the pipeline's workers do first
        kind.loss(model, batch, torch.Generator().manual_seed(t.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=case.deepspeed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16")

    def step(i: int) -> torch.Tensor:
        with autocast:
            loss, _ = kind.loss(engine.module, batch, torch.Generator().manual_seed(i))
        engine.backward(loss)
        engine.step()
        return loss.detach()

    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loss = step(i)
    _sync(device)
    seconds = time.perf_counter() - start
    last = float(loss)
    figures = {"parameters": parameters, "batch": t.batch_size, "warmup_steps": warmup, "timed_steps": steps,
               "seconds_per_step": seconds / steps, "images_per_s": steps * t.batch_size / seconds,
               "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) - base if cuda else None,
               "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None, "last_loss": last,
               "loss_finite": math.isfinite(last)}
    del engine, optimizer, model, batch, images
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); bad values exit with a usage error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"of {list(MODELS)} (default: all)")
    parser.add_argument("--zero", type=int, nargs="+", default=[1, 3], help="ZeRO stages (default: 1 3)")
    parser.add_argument("--precisions", nargs="+", default=["bf16"], help="fp32 and/or bf16 (default: bf16)")
    parser.add_argument("--batch", type=int, default=64, help="images per step (default: 64, the pipeline's)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further job-config override, e.g. model.flow.hidden=64 (repeatable)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda (default), or cpu: the same loop on gloo, a smoke run without memory figures")
    parser.add_argument("--dry-run", action="store_true", help="print the cases and their DeepSpeed configs only")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")
    try:
        args.cases = build_cases(args.models, args.zero, args.precisions, args.batch, args.set)
    except ValueError as e:  # ConfigError is a ValueError
        parser.error(str(e))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for case in args.cases:
            print(f"{case.name}: image {case.job.model.chw()}, flow depth {case.job.model.flow.depth}, "
                  f"rank {case.job.model.operator.rank}, batch {case.job.train.batch_size}")
            print(json.dumps(case.deepspeed, sort_keys=True))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    print(machine_line(device), flush=True)
    backend = init_process_group(device)
    results = []
    for case in args.cases:
        try:
            figures = run_case(case, args.warmup, args.steps, device)
        except Exception as e:  # noqa: BLE001 - record the failure, measure the other cases
            figures = {"error": f"{type(e).__name__}: {e}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append({"case": case.name, "model": case.model, "zero_stage": case.zero_stage,
                        "precision": case.precision, "image_shape": list(case.job.model.chw()), **figures})
        peak = figures.get("peak_allocated_bytes")
        shown = figures.get("error") or (f"{figures['images_per_s']:.1f} images/s, peak "
                                         f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'} allocated, "
                                         f"loss {figures['last_loss']:.4g}")
        print(f"{case.name}: {shown}", flush=True)
    write_results(args.json, "bench.gpu_check", argv,
                  {"backend": backend, "deepspeed": __import__("deepspeed").__version__,
                   "cases": results}, device)
    ok = all("error" not in r and r["loss_finite"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
