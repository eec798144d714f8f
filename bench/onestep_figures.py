"""Train the one-step Linearizer and the flow-matching baseline on MNIST and measure what
docs/onestep.md reports.

Phases (`--parts`, run in this order; each writes to disk, so a crash loses only the phase it
interrupts and a rerun skips the trainings whose saved model exists):

1. `train-onestep`: the one-step model (`linearizer.training.fit`, MNIST train split) for
   `--steps` steps or until `--budget-minutes` of wall time run out, whichever comes first;
   `B` (RK4, T = 100, default t_end) is built and the model saved (`linearizer.io.save_model`).
2. `train-baseline`: the flow-matching U-Net (`fm_baseline`, about the same parameter count)
   on the same data and batch size for the same wall-time budget.
3. `eval-onestep`: one-step vs 100-step RK4 agreement in float32 and float64 (and for the
   reference's un-nested RK4 collapse), inversion -> reconstruction on held-out test images,
   FID of the 1-step and 100-step samples, wall time per 1000 samples; sample grids and the
   interpolation strip (induced space vs the reference's pixel-noise line).
4. `eval-baseline`: FID and wall time per 1000 samples at 1, 10 and 100 Euler steps; a grid.
5. `report`: merges the phases' JSON files (one set per device) into `--results`.

Every FID uses `--eval-n` generated samples against the whole MNIST test split (10,000) and
the offline `mnist-classifier-v1` features (`linearizer.metrics.get_extractor`), whose test
accuracy the results state. Evaluation may run on another device than training (`--device`);
results are kept per device.

Example (the documented CPU run: the trainings in parallel, then the evaluations in parallel):
    $ export OMP_NUM_THREADS=1
    $ nice -n 5 .venv/bin/python -m bench.onestep_figures --parts train-onestep \\
          --budget-minutes 20 --steps 250 --batch-size 32 &
    $ nice -n 5 .venv/bin/python -m bench.onestep_figures --parts train-baseline \\
          --budget-minutes 20 --batch-size 32 &
    $ wait
    $ nice -n 5 .venv/bin/python -m bench.onestep_figures --parts eval-onestep --eval-n 200 --f64-n 200 &
    $ nice -n 5 .venv/bin/python -m bench.onestep_figures --parts eval-baseline --eval-n 200 &
    $ wait; .venv/bin/python -m bench.onestep_figures --parts report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

import linearizer.baselines  # noqa: F401 - registers the "fm_baseline" kind
from linearizer.config import FlowConfig, ModelConfig, TrainConfig, apply_overrides, dump_config, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.metrics import agreement_db, fid, get_extractor, load_or_train_classifier
from linearizer.metrics.fid import feature_stats
from linearizer.onestep import interpolate, invert, reconstruct
from linearizer.onestep.evaluation import collapse_summary, in_batches, reference_samples
from linearizer.training import TensorBatches, fit
from linearizer.viz import save_grid

PARTS = ("train-onestep", "train-baseline", "eval-onestep", "eval-baseline", "report")
MODELS = {"train-onestep": "onestep", "train-baseline": "fm_baseline"}
BASELINE_STEPS = (1, 10, 100)
#: test-split indices of the interpolation pairs (a 7 -> 2, a 1 -> 0, a 4 -> 1 of the test split).
PAIRS = ((0, 1), (2, 3), (4, 5))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="phases to run (default: all)")
    p.add_argument("--budget-minutes", type=float, default=18.0, help="training wall-clock budget per model")
    p.add_argument("--steps", type=int, default=100_000,
                   help="one-step model: optimiser steps (training also stops when the budget runs out)")
    p.add_argument("--baseline-steps", type=int, default=100_000,
                   help="baseline: most optimiser steps (it trains for the wall-time budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one-step model config override, e.g. flow.hidden=16 (repeatable)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="save the weights every N steps; a NaN stop falls back to the last checkpoint")
    p.add_argument("--eval-n", type=int, default=2000, help="generated samples per FID (and agreement pairs)")
    p.add_argument("--f64-n", type=int, default=256, help="pairs / images for the float64 measurements")
    p.add_argument("--inversion-n", type=int, default=1000, help="held-out test images inverted")
    p.add_argument("--eval-batch", type=int, default=250, help="images per forward pass at evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/onestep_figures", help="run directory: models, histories, phase JSON")
    p.add_argument("--figures", default="docs/img", help="where the PNG figures go")
    p.add_argument("--results", default="docs/results/onestep_figures.json")
    p.add_argument("--tag", default="cpu", help="name of this run (its trained models) in the results file")
    p.add_argument("--no-fid", action="store_true", help="skip the FIDs (e.g. a timing-only evaluation)")
    return p.parse_args(argv)


# ----- helpers ------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    dev = torch.device(device)
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "niceness": os.nice(0), "device": str(dev),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], "-m", "bench.onestep_figures", *sys.argv[1:]])


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # never a half-written file


def until(deadline: float, batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Pass batches on, epoch after epoch, until the wall clock reaches `deadline` (at least one)."""
    first = True
    while True:
        for batch in batches:
            if time.perf_counter() >= deadline and not first:
                return
            first = False
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def timed_batches(fn: Callable[[Tensor], Tensor], x: Tensor, size: int, device: torch.device) -> tuple[Tensor, dict]:
    """`fn` over `x` in chunks, with the wall and process CPU time it took (per 1000 inputs too).

    On CUDA one untimed chunk runs first, so the timing excludes kernel selection and caching.
    """
    if device.type == "cuda":
        fn(x[:size])
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = in_batches(fn, x, size)
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    n = x.shape[0]
    return out, {"n": n, "wall_s": wall, "cpu_s": cpu, "wall_s_per_1000": 1000 * wall / n,
                 "cpu_s_per_1000": 1000 * cpu / n}


def model_config(kind: str, overrides: list[str]) -> ModelConfig:
    """The one-step model: the library defaults (+ overrides). The baseline: the U-Net defaults,
    about the default one-step model's parameter count (flow.hidden = 32, flow.depth = 4 levels)."""
    if kind == "onestep":
        return apply_overrides(ModelConfig(), overrides) if overrides else ModelConfig()
    return ModelConfig(kind="fm_baseline", flow=FlowConfig(depth=4, hidden=32))


# ----- training -----------------------------------------------------------------------------


def train(args: argparse.Namespace, kind_name: str, images: Tensor) -> dict:
    """Train one model within the budget and save it; skipped when the saved model exists."""
    run = Path(args.out) / kind_name
    if (run / "model" / "config.json").is_file() and (run / "train.json").is_file():
        print(f"[{kind_name}] saved model found in {run / 'model'}: training skipped", flush=True)
        return json.loads((run / "train.json").read_text())
    cfg = model_config(kind_name, args.set)
    kind = get_kind(kind_name)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = kind.build(cfg).to(device)
    steps = args.steps if kind_name == "onestep" else args.baseline_steps
    train_cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, log_every=10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{kind_name}] {n_params:,} parameters; up to {steps} steps of batch {args.batch_size} "
          f"within {args.budget_minutes} min on {device}, {torch.get_num_threads()} threads", flush=True)

    checkpoint = run / "checkpoint"
    last_log = [time.perf_counter()]

    def on_step(record: dict) -> None:
        history.append(record)
        step = int(record["step"])
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save_model(model, cfg, checkpoint)
            (checkpoint / "step.txt").write_text(f"{step}\n")
        if time.perf_counter() - last_log[0] > 30:  # a line per 30 s for the log file
            last_log[0] = time.perf_counter()
            terms = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "lr"))
            print(f"[{kind_name}] step {step} ({time.perf_counter() - start:.0f} s) {terms}", flush=True)

    start = time.perf_counter()
    batches = until(start + 60 * args.budget_minutes, TensorBatches({"image": images}, args.batch_size, args.seed))
    stopped = None
    history: list[dict] = []
    try:
        fit(kind, model, batches, train_cfg, on_step=on_step, progress=False)
    except FloatingPointError as e:  # keep what the last checkpoint holds instead of losing the run
        stopped = str(e)
        print(f"[{kind_name}] stopped: {e}; falling back to {checkpoint}", flush=True)
        model, _ = load_model(checkpoint)
        model = model.to(device)
    seconds = time.perf_counter() - start
    model.eval()
    build_s = None
    if kind_name == "onestep":
        t0 = time.perf_counter()
        kind.finalize(model)  # builds and caches B (cfg.sampler: RK4, T = 100, t_end = 1 - 1/T)
        build_s = time.perf_counter() - t0
    save_model(model.cpu(), cfg, run / "model")
    dump_config(train_cfg, run / "train_config.json")
    (run / "history.json").write_text(json.dumps(history) + "\n")
    trained_steps = int(checkpoint.joinpath("step.txt").read_text()) if stopped else len(history)
    last = {k: v for k, v in history[-1].items() if k != "lr"} if history else {}
    summary = {"kind": kind_name, "parameters": n_params, "config": to_dict(cfg), "steps": trained_steps,
               "step_cap": steps, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW, grad clip 1.0",
               "budget_minutes": args.budget_minutes, "train_wall_s": seconds,
               "budget_ran_out": len(history) < steps and stopped is None, "stopped_by_error": stopped,
               "images_seen": trained_steps * args.batch_size, "epochs": trained_steps * args.batch_size / images.shape[0],
               "last_step": last, "build_B_s": build_s, "machine": machine_info(args.device),
               "command": command_line()}
    write_json(run / "train.json", summary)
    print(f"[{kind_name}] {trained_steps} steps in {seconds:.0f} s; saved to {run / 'model'}", flush=True)
    return summary


# ----- evaluation ---------------------------------------------------------------------------


class Context:
    """What both evaluations share: the device, the noise, the test split and its FID features."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, torch.device(args.device)
        if self.device.type == "cuda":
            # TF32 convolutions round to 10 mantissa bits: they would measure the GPU, not B.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        # one fixed noise set (CPU generator, so every device draws the same numbers)
        self.x0 = torch.randn((args.eval_n, 1, 32, 32), generator=torch.Generator().manual_seed(args.seed + 1))
        self.test = load_mnist("test")[0]
        self.fid_enabled = not args.no_fid and args.eval_n >= 2
        if self.fid_enabled:
            _, info = load_or_train_classifier()  # trains and caches it on first use
            self.classifier_info = {k: info[k] for k in ("extractor", "accuracy", "n_test", "steps", "batch_size",
                                                         "lr", "seed", "sha256", "path")}
            self.extractor = get_extractor("mnist-classifier")
            self.real_stats = feature_stats(self.extractor, self.test)

    def fid(self, images: Tensor) -> dict:
        return fid(self.real_stats, images.clamp(0, 1).cpu(), self.extractor).to_dict()


def goal(value: float, target: float) -> dict:
    return {"value": value, "goal": target, "met": bool(value >= target)}


@torch.no_grad()
def eval_onestep(args: argparse.Namespace, ctx: Context) -> dict:
    """Agreement (float32, float64, the reference's collapse), inversion, FIDs, timings, figures."""
    directory = Path(args.out) / "onestep" / "model"
    model = load_model(directory)[0].to(ctx.device)
    info = model.B_info
    dev, size = ctx.device, args.eval_batch
    x0 = ctx.x0.to(dev)

    def multistep(b: Tensor) -> Tensor:
        return model.sample_multistep(b, info.method, info.steps, info.t_end)

    one, t_one = timed_batches(model.sample, x0, size, dev)
    many, t_many = timed_batches(multistep, x0, size, dev)
    g_only, t_g = timed_batches(lambda b: model.decode_data(model.encode_noise(b)), x0, size, dev)
    ref_one = reference_samples(model, x0, size)
    r: dict = {"n": args.eval_n, "B": collapse_summary(model)}
    r["agreement_db_float32"] = goal(agreement_db(one.clamp(0, 1), many.clamp(0, 1)), 60.0)
    r["agreement_db_float32_unclamped"] = agreement_db(one, many)
    r["reference_collapse_agreement_db_float32"] = agreement_db(ref_one.clamp(0, 1), many.clamp(0, 1))

    # float64: the same weights in double precision, B rebuilt in float64 (the float32 cache
    # would carry its float32 rounding into the double computation)
    model64 = load_model(directory, dtype=torch.float64)[0].to(dev)
    model64.build_B(info.method, info.steps, info.t_end)
    x64 = ctx.x0[:args.f64_n].double().to(dev)
    one64 = model64.sample(x64)
    many64 = model64.sample_multistep(x64, info.method, info.steps, info.t_end)
    r["f64_n"] = x64.shape[0]
    if model64.B_W.numel():  # how much B^-1 amplifies round-off (inversion); dense B only
        r["B_condition_number"] = float(torch.linalg.cond(model64.B_W))
    r["agreement_db_float64"] = goal(agreement_db(one64.clamp(0, 1), many64.clamp(0, 1)), 80.0)
    r["agreement_db_float64_unclamped"] = agreement_db(one64, many64)

    # inversion on held-out images (the test split; training saw only the train split)
    real = ctx.test[:args.inversion_n].to(dev)
    noise, t_inv = timed_batches(lambda b: invert(model, b), real, size, dev)
    back = in_batches(model.sample, noise, size)
    r["inversion_n"] = real.shape[0]
    r["inversion_db_float32"] = goal(agreement_db(back.clamp(0, 1), real), 50.0)
    back64 = reconstruct(model64, real[:args.f64_n].double())
    r["inversion_db_float64"] = agreement_db(back64.clamp(0, 1), real[:args.f64_n].double())
    # the noise pre-images: far outside N(0, I) they sit where g_y^-1 expands exponentially,
    # and float32 cannot carry them back (compare with the std 1 of the noise B was built for)
    r["inversion_noise_preimage"] = {"std": float(noise.std()), "max_abs": float(noise.abs().max()),
                                     "median_abs": float(noise.abs().median())}
    # the float32 round-off floor of the data map alone, g_x^-1(g_x(x)), for comparison
    r["g_x_roundtrip_db_float32"] = agreement_db(
        in_batches(lambda b: model.decode_data(model.encode_data(b)), real, size).clamp(0, 1), real)
    r["timing"] = {"one_step": t_one, f"rk4_{info.steps}_steps": t_many, "g_passes_only": t_g,
                   "invert": t_inv}

    if ctx.fid_enabled:
        f1, fT = ctx.fid(one), ctx.fid(many)
        floor = ctx.fid(load_mnist("train", limit=args.eval_n)[0])
        r["fid"] = {"one_step": f1, f"rk4_{info.steps}_steps": fT, "real_train_images": floor,
                    "relative_difference_1_vs_T": abs(f1["value"] - fT["value"]) / fT["value"],
                    "equal_within_1_percent": abs(f1["value"] - fT["value"]) <= 0.01 * fT["value"]}

    figures = Path(args.figures)
    save_grid(one[:64].clamp(0, 1), figures / "onestep_samples_1step.png", nrow=8)
    save_grid(many[:64].clamp(0, 1), figures / "onestep_samples_100step.png", nrow=8)
    rows = []
    for i, j in PAIRS:  # per pair: the induced-space path, then the reference's pixel-noise path
        a, b = ctx.test[i:i + 1].to(dev), ctx.test[j:j + 1].to(dev)
        rows += [interpolate(model, a, b, 10, "induced"), interpolate(model, a, b, 10, "noise")]
    save_grid(torch.cat(rows).clamp(0, 1), figures / "onestep_interpolation.png", nrow=10)
    return r


@torch.no_grad()
def eval_baseline(args: argparse.Namespace, ctx: Context) -> dict:
    """FID and time per 1000 samples of the flow-matching baseline at 1, 10 and 100 Euler steps."""
    model = load_model(Path(args.out) / "fm_baseline" / "model")[0].to(ctx.device)
    x0 = ctx.x0.to(ctx.device)
    r: dict = {"n": args.eval_n, "method": "euler", "network_evaluations_per_sample": {}, "timing": {}, "fid": {}}
    for steps in BASELINE_STEPS:
        x, t = timed_batches(lambda b: model.sample(b, "euler", steps, 1.0), x0, args.eval_batch, ctx.device)
        r["network_evaluations_per_sample"][str(steps)] = steps
        r["timing"][f"euler_{steps}_steps"] = t
        if ctx.fid_enabled:
            r["fid"][f"euler_{steps}_steps"] = ctx.fid(x)
        if steps == BASELINE_STEPS[-1]:
            save_grid(x[:64].clamp(0, 1), Path(args.figures) / "onestep_baseline_samples.png", nrow=8)
        print(f"[fm_baseline] {steps} steps: {t['wall_s_per_1000']:.1f} s / 1000 samples"
              + (f", FID {r['fid'][f'euler_{steps}_steps']['value']:.4g}" if ctx.fid_enabled else ""), flush=True)
    return r


def report(args: argparse.Namespace) -> dict:
    """Merge this run's training summaries and every device's evaluation into the results file,
    under `args.tag` (other runs already in the file are kept)."""
    out, path = Path(args.out), Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("description", "One-step flow matching on MNIST 1x32x32 (bench/onestep_figures.py). FIDs are "
                                      "against the whole MNIST test split (10,000) with the offline "
                                      "mnist-classifier-v1 features; not comparable to Inception FID.")
    run: dict = {"out": str(out), "training": {}, "evaluation": {}}
    for kind in MODELS.values():
        train_json = out / kind / "train.json"
        if train_json.is_file():
            run["training"][kind] = json.loads(train_json.read_text())
    for part_json in sorted(out.glob("eval-*.json")):
        part, device = part_json.stem.split(".", 1)
        run["evaluation"].setdefault(device, {})[part.removeprefix("eval-")] = json.loads(part_json.read_text())
    results.setdefault("runs", {})[args.tag] = run
    write_json(path, results)
    return run

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ctx = None
    for part in [p for p in PARTS if p in args.parts]:
        if part in MODELS:
            train(args, MODELS[part], load_mnist("train")[0])
        elif part == "report":
            print(f"results of run {args.tag!r} in {args.results}: evaluated on {list(report(args)['evaluation'])}",
                  flush=True)
        else:
            ctx = ctx or Context(args)
            start = time.perf_counter()
            result = (eval_onestep if part == "eval-onestep" else eval_baseline)(args, ctx)
            result.update(seconds=time.perf_counter() - start, machine=machine_info(args.device), command=command_line())
            if ctx.fid_enabled:
                result["fid_extractor"] = ctx.classifier_info
            device = torch.device(args.device).type
            write_json(Path(args.out) / f"{part}.{device}.json", result)
            print(f"[{part}] done in {result['seconds']:.0f} s on {device}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
