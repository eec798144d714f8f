"""Training throughput of the default one-step model, per CPU core: the old recipe vs the new one.

Both recipes train the default model (`ModelConfig()`: MNIST 1x32x32, depth 4, hidden 32,
rank 8) from the same initial weights on the same images for the same number of samples, in one
process with one torch thread, and the bench reports:

- images per CPU-second (the process's CPU time: one thread, so images/s per core, and steadier
  than wall time on a shared machine), with the ratio new / old;
- the loss after those samples, two ways: the mean training loss of the last steps, and the
  loss of each final model (what it samples with: the new recipe's EMA weights) on the same
  held-out test images with the same noise and times, so "equal or better loss" is measured on
  identical inputs;
- an ablation of the throughput: each change of the new recipe added in turn;
- a third run, "fast step": the new recipe's step (two passes, bfloat16) with the old
  optimisation, which separates what the faster step costs in loss from what the schedule and
  the average change.

The recipes:

| | old | new |
|---|---|---|
| objective | 5 passes of `g` (2 encodings, 3 decodings) | the same loss in 2 passes (both roles batched) |
| conditioner convolutions | float32 | bfloat16 (`flow.conditioner_precision`), channels-last |
| lr | 1e-3 constant | 2e-3, warmup over 5% of the steps, then cosine to 0 (`train.lr_schedule`) |
| weights sampled | last | EMA (`train.ema_decay`) |

"old" reproduces the code before these changes: its loss is `five_pass_loss` below, the objective
as it was (same random draws, same value; `tests/test_training_recipe.py` checks the two agree).

Example:
    $ OMP_NUM_THREADS=1 nice .venv/bin/python -m bench.bench_train_step --steps 100 --ablation-steps 3 \\
          --json docs/results/bench_train_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import base_parser, machine_line
from linearizer.config import ModelConfig, TrainConfig, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.onestep import OneStepLinearizer
from linearizer.onestep.model import noise_like
from linearizer.onestep.objective import onestep_loss
from linearizer.perceptual import get_perceptual
from linearizer.training import TensorBatches, fit

#: `python -m bench.run_all --quick`: a smoke test of every phase, not a measurement.
QUICK_ARGS = ["--steps", "3", "--limit", "512", "--heldout", "256", "--ablation-steps", "1"]

LossFn = Callable[[OneStepLinearizer, Tensor, torch.Generator], tuple[Tensor, dict[str, float]]]


def five_pass_loss(model: OneStepLinearizer, x1: Tensor, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, dict[str, float]]:
    """The one-step objective as it was computed before the two-pass fusion: `g` run five times.

    Same random draws in the same order as `onestep_loss`, hence the same value to round-off, for
    the default loss config (all four weights 1, which is what this bench trains with).
    """
    cfg = model.cfg.loss
    perceptual = get_perceptual(cfg.perceptual)
    x0 = noise_like(x1, generator)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype)
    z0, z1 = model.encode_noise(x0), model.encode_data(x1)
    z0_flat, z1_flat = model.flat(z0), model.flat(z1)
    z1_hat = model.A.apply((1 - t)[:, None] * z0_flat + t[:, None] * z1_flat, t)
    latent = F.mse_loss(z1_hat, z1_flat)
    noise = F.mse_loss(model.decode_noise(z0 + cfg.s * noise_like(z0, generator)), x0)
    data = perceptual(x1, model.decode_data(z1 + cfg.s * noise_like(z1, generator)))
    pred = perceptual(x1, model.decode_data(model.unflat(z1_hat)))
    loss = latent + noise + data + pred
    terms = {k: float(v.detach()) for k, v in zip(("latent", "noise", "data", "pred"), (latent, noise, data, pred))}
    return loss, {**terms, "loss": float(loss.detach())}


class LossKind:
    """The "onestep" kind's loss hook with a chosen loss function (what `fit` calls)."""

    name = "onestep"
    batch_keys = ("image",)

    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn

    def loss(self, model: OneStepLinearizer, batch: dict[str, Tensor], generator: torch.Generator | None = None):
        return self.loss_fn(model, batch["image"], generator)


def new_model_config(base: ModelConfig) -> ModelConfig:
    return replace(base, flow=replace(base.flow, conditioner_precision="bfloat16"))


def new_train_config(base: TrainConfig, steps: int) -> TrainConfig:
    """The new recipe's optimisation: twice the lr, warmed up over 5% of the steps, cosine to 0, EMA."""
    return replace(base, lr=2 * base.lr, lr_schedule="cosine", warmup_steps=max(steps // 20, 1), min_lr_ratio=0.0,
                   ema_decay=0.99)


def cpu_rate(model: OneStepLinearizer, loss_fn: LossFn, images: Tensor, steps: int, warmup: int = 2) -> float:
    """Images per CPU-second of `steps` optimiser steps on one batch (after `warmup` steps)."""
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.process_time()
        loss, _ = loss_fn(model, images, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * images.shape[0] / (time.process_time() - start)


def train(model: OneStepLinearizer, loss_fn: LossFn, images: Tensor, cfg: TrainConfig) -> dict[str, Any]:
    """Train a copy of `model` with `cfg`; its throughput, last losses and final model."""
    model = copy.deepcopy(model)
    wall, cpu = time.perf_counter(), time.process_time()
    history = fit(LossKind(loss_fn), model, TensorBatches({"image": images}, cfg.batch_size, cfg.seed), cfg,
                  progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(history) * cfg.batch_size
    tail = history[-max(len(history) // 10, 1):]
    return {"model": model, "steps": len(history), "samples": n, "cpu_s": cpu, "wall_s": wall,
            "images_per_cpu_s": n / cpu, "train_loss_tail": sum(r["loss"] for r in tail) / len(tail),
            "tail_steps": len(tail)}


@torch.no_grad()
def heldout_loss(model: OneStepLinearizer, images: Tensor, batch_size: int, seed: int) -> dict[str, float]:
    """The objective of `model` on held-out images with fixed noise and times (mean over batches)."""
    model.eval()
    totals: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    batches = images.split(batch_size)
    for x in batches:
        _, terms = onestep_loss(model, x, gen)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v / len(batches)
    return totals


def init_model(cfg: ModelConfig, images: Tensor, seed: int) -> OneStepLinearizer:
    """The model both recipes start from: seeded weights, ActNorm initialised on a data batch."""
    torch.manual_seed(seed)
    model = OneStepLinearizer(cfg)
    model.initialize(images[:256], torch.Generator().manual_seed(seed))
    return model


def with_precision(model: OneStepLinearizer, cfg: ModelConfig) -> OneStepLinearizer:
    """The same weights in a model built with `cfg` (the conditioner precision is not a weight)."""
    other = OneStepLinearizer(cfg)
    other.load_state_dict(model.state_dict())
    return other


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="optimiser steps per recipe (same samples for both)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=10000, help="training images (MNIST train split)")
    p.add_argument("--heldout", type=int, default=1024, help="test images of the held-out loss")
    p.add_argument("--ablation-steps", type=int, default=4, help="timed steps per ablation row")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "cpu":
        raise ValueError(f"bench_train_step measures CPU throughput per core; --device {args.device} is not supported")
    torch.set_num_threads(1)
    print(machine_line())
    images = load_mnist("train", limit=args.limit)[0]
    test = load_mnist("test", limit=args.heldout)[0]
    old_cfg = ModelConfig()
    new_cfg = new_model_config(old_cfg)
    old_train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, seed=args.seed, log_every=0)
    new_train = new_train_config(old_train, args.steps)
    start = init_model(old_cfg, images, args.seed)

    batch = images[: args.batch_size]
    ablation = [("old: 5 passes, float32", start, five_pass_loss, batch),
                ("+ 2 passes (fused roles)", start, onestep_loss, batch),
                ("+ bfloat16 conditioners (new)", with_precision(start, new_cfg), onestep_loss, batch),
                ("  with batch 2x", with_precision(start, new_cfg), onestep_loss, images[: 2 * args.batch_size])]
    rows = []
    for name, model, loss_fn, x in ablation:
        rate = cpu_rate(model, loss_fn, x, args.ablation_steps)
        rows.append({"recipe": name, "batch": x.shape[0], "images_per_cpu_s": rate})
        print(f"{name:34s} batch {x.shape[0]:4d}: {rate:7.1f} images/cpu-s ({rate / rows[0]['images_per_cpu_s']:.2f}x)",
              flush=True)

    runs = {}
    for name, cfg, train_cfg, loss_fn in (("old", old_cfg, old_train, five_pass_loss),
                                          ("fast step", new_cfg, old_train, onestep_loss),
                                          ("new", new_cfg, new_train, onestep_loss)):
        run = train(with_precision(start, cfg), loss_fn, images, train_cfg)
        run["heldout"] = heldout_loss(run.pop("model"), test, 256, args.seed + 1)
        run["train_config"] = to_dict(train_cfg)
        runs[name] = run
        print(f"{name}: {run['samples']} samples, {run['images_per_cpu_s']:.1f} images/cpu-s, "
              f"train loss (last {run['tail_steps']} steps) {run['train_loss_tail']:.4f}, "
              f"held-out loss {run['heldout']['loss']:.4f}", flush=True)
    for name in ("fast step", "new"):
        run = runs[name]
        run["speedup"] = run["images_per_cpu_s"] / runs["old"]["images_per_cpu_s"]
        run["heldout_loss_ratio"] = run["heldout"]["loss"] / runs["old"]["heldout"]["loss"]
        print(f"{name} / old: {run['speedup']:.2f}x images per CPU-second; held-out loss "
              f"{run['heldout_loss_ratio']:.3f}x ({'equal or better' if run['heldout_loss_ratio'] <= 1.0 else 'worse'})")
    ratio, loss_ratio = runs["new"]["speedup"], runs["new"]["heldout_loss_ratio"]
    if args.json:
        payload = {"command": shlex.join(["python", "-m", "bench.bench_train_step", *(argv or sys.argv[1:])]),
                   "machine": machine_line(), "model": to_dict(old_cfg), "ablation": rows, "runs": runs,
                   "speedup": ratio, "heldout_loss_ratio": loss_ratio}
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
