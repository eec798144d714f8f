"""The quality race: the one-step Linearizer against flow matching at equal training compute.

Both models get the same data (MNIST train split, 1x32x32), the same seed, the same batch size
and the same training budget in CPU seconds of one thread (`time.process_time`, which on a
shared machine counts only the compute this process received), and about the same parameter
count (the U-Net's width is searched so its count lies within +-10 % of the Linearizer's). For
every budget each model is trained from scratch with its own learning-rate schedule sized to the
budget: the steps a budget buys are estimated from a few timed steps, and training also stops
when the budget is spent.

Then FID of `--eval-n` samples against the MNIST test split (10,000 digits) in the features of
the evaluations' default offline classifier (`mnist-classifier-v1`, named with its weights hash),
for the baseline at 1, 2, 4, 8, 16 and 100 Euler steps, and for the Linearizer in one step
(`x = g_x^-1(B g_y(x0))`) and with the 100-step latent RK4 sampler B collapses. The same noise
feeds every sampler. Results: `--json` (every number, the command, the machine) and `--png` (FID
against budget, a line per sampler, log scale), plus sample grids per budget in `--out`.

Runs are independent (each budget trains both models from scratch), so `--jobs N` trains N of
them at once, one thread each; budgets count CPU seconds, so parallel runs stay fair. `--extend`
adds budgets to an earlier results file measured with the same models, recipe and FID protocol.
`--goal-n` scores the goal's pair (Linearizer in 1 step, baseline in 4 steps) at the largest
budget with more samples. Each trained model is saved (safetensors + JSON config) in `--out`.

Run (the committed figures, docs/onestep.md "Quality race"):
    OMP_NUM_THREADS=1 python -m bench.quality_race --budgets 1 2 4 --eval-n 500 \\
        --json docs/results/quality_race.json --png docs/img/quality_race.png
    OMP_NUM_THREADS=1 python -m bench.quality_race --budgets 60 --eval-n 500 --goal-n 5000 --jobs 2 \\
        --extend docs/results/quality_race.json --json docs/results/quality_race.json \\
        --png docs/img/quality_race.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import linearizer.baselines  # noqa: F401 - registers the "fm_baseline" kind
from linearizer.config import FlowConfig, ModelConfig, TrainConfig, apply_overrides, from_dict, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.metrics import feature_stats, fid, get_extractor
from linearizer.training import TensorBatches, fit
from linearizer.viz import save_grid

from .common import machine_line

BASELINE_STEPS = (1, 2, 4, 8, 16, 100)
LINEARIZER_STEPS = (1, 100)
KINDS = {"onestep": LINEARIZER_STEPS, "fm_baseline": BASELINE_STEPS}
#: the goal's pair: the Linearizer's one step against the baseline's four.
GOAL = (("onestep", 1), ("fm_baseline", 4))
#: steps timed to estimate what a budget buys (after two warm-up steps).
PROBE_STEPS = 6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[2.0, 4.0, 8.0],
                   help="training budgets, CPU minutes of one thread per model (default: 2 4 8)")
    p.add_argument("--eval-n", type=int, default=5000, help="samples per FID (default: 5000)")
    p.add_argument("--batch-size", type=int, default=None, help="batch of both models (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Linearizer model config override (repeatable); the default is the main job's model")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override of both models (repeatable); default: the main job's recipe")
    p.add_argument("--limit", type=int, default=None, help="training digits (default: all 50,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/quality_race"), help="grids and per-run files")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--png", type=Path, default=None, help="write the FID-vs-budget plot here")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                   help="models to train (default: both); one kind compares design options of one model")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each (default: 1)")
    p.add_argument("--extend", type=Path, default=None, metavar="JSON",
                   help="keep the budgets of this earlier results file (same models and protocol) and add new ones")
    p.add_argument("--goal-n", type=int, default=None,
                   help="also score Linearizer 1-step and baseline 4-step at the largest budget with this many samples")
    p.add_argument("--overlay", type=Path, nargs="+", default=[], metavar="JSON",
                   help="bench.onestep_options results whose --overlay-option to draw on the plot too")
    p.add_argument("--overlay-option", nargs="+", default=["ssim-perceptual"], metavar="OPTION",
                   help="the options of the --overlay files to draw, a line each")
    p.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                   help="only draw --png from the results JSON of an earlier (possibly interrupted) run")
    args = p.parse_args(argv)
    if min(args.budgets) <= 0 or args.eval_n < 2 or args.jobs < 1 or (args.goal_n is not None and args.goal_n < 2):
        p.error("budgets must be > 0, --eval-n and --goal-n >= 2, --jobs >= 1")
    return args


def recipe(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The Linearizer and the training recipe of the main job (pipelines.main.EMBEDDED), plus overrides."""
    from pipelines.main import EMBEDDED

    model = from_dict(ModelConfig, EMBEDDED["model"])
    if args.set:
        model = apply_overrides(model, args.set)
    train_keys = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    train = from_dict(TrainConfig, {k: v for k, v in EMBEDDED["train"].items() if k in train_keys})
    if args.train_set:
        train = apply_overrides(train, args.train_set)
    if args.batch_size is not None:
        train = apply_overrides(train, [f"batch_size={args.batch_size}"])
    return model, apply_overrides(train, [f"seed={args.seed}", "log_every=0"])


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_baseline(cfg: ModelConfig, target: int) -> tuple[ModelConfig, int]:
    """The U-Net whose parameter count is nearest `target`, within 10 %: the baseline's own shape
    (4 resolution levels) with its width searched; fewer levels only when no width fits."""
    kind = get_kind("fm_baseline")
    for levels in (4, 3, 2):
        best = None
        for hidden in range(4, 129, 2):
            candidate = ModelConfig(kind="fm_baseline", image_shape=cfg.image_shape,
                                    flow=FlowConfig(depth=levels, hidden=hidden))
            n = count(kind.build(candidate))
            if best is None or abs(n - target) < abs(best[1] - target):
                best = (candidate, n)
            if n > 2 * target:
                break
        if best is not None and abs(best[1] - target) <= 0.1 * target:
            return best
    raise ValueError(f"no U-Net within 10% of {target:,} parameters")


def cpu_bounded(batches: TensorBatches, deadline_cpu: float) -> Iterator[dict[str, Tensor]]:
    """Batches until this process's CPU time passes `deadline_cpu` (at least one)."""
    first = True
    while True:
        for batch in batches:
            if not first and time.process_time() >= deadline_cpu:
                return
            first = False
            yield batch


def train(kind_name: str, cfg: ModelConfig, train_cfg: TrainConfig, data: dict[str, Tensor], budget_s: float
          ) -> tuple[nn.Module, dict]:
    """One model trained from scratch for `budget_s` CPU seconds, its lr schedule sized to them.

    `data` holds the batch keys: `{"image": ...}`, plus `"noise"` for pairs from a teacher.
    """
    kind = get_kind(kind_name)

    def fresh() -> nn.Module:
        torch.manual_seed(train_cfg.seed)
        return kind.build(cfg)

    # What one step costs: a few timed steps of a throw-away model with the same recipe.
    probe = apply_overrides(train_cfg, [f"steps={PROBE_STEPS + 2}", "ema_decay=0", "warmup_steps=0"])
    marks: list[float] = []
    fit(kind, fresh(), TensorBatches(data, train_cfg.batch_size, train_cfg.seed), probe,
        on_step=lambda record: marks.append(time.process_time()), progress=False)
    step_s = (marks[-1] - marks[1]) / (len(marks) - 2)
    steps = max(1, int(budget_s / step_s))

    model = fresh()
    cfg_t = apply_overrides(train_cfg, [f"steps={steps}"])
    start = time.process_time()
    history = fit(kind, model, cpu_bounded(TensorBatches(data, cfg_t.batch_size, cfg_t.seed),
                                           start + budget_s), cfg_t, progress=True)
    used = time.process_time() - start
    model.eval()
    if kind_name == "onestep":
        kind.finalize(model)  # B is built once per model; not part of the training budget
    return model, {"steps_planned": steps, "steps": len(history), "cpu_s": used, "probe_step_cpu_s": step_s,
                   "images_seen": len(history) * cfg_t.batch_size, "final_loss": history[-1]["loss"],
                   "train": to_dict(cfg_t)}


@torch.no_grad()
def sample(kind_name: str, model: nn.Module, x0: Tensor, steps: int, batch: int = 500) -> tuple[Tensor, float]:
    """Samples of one sampler and the CPU seconds per 1000 of them."""
    kind = get_kind(kind_name)
    if kind_name == "onestep":
        params = {"mode": "sample"} if steps == 1 else {"mode": "sample_multistep", "steps": steps}
    else:
        params = {"mode": "sample", "steps": steps, "method": "euler"}
    start = time.process_time()
    out = torch.cat([kind.predict(model, x0[i:i + batch], params) for i in range(0, x0.shape[0], batch)])
    return out, 1000 * (time.process_time() - start) / x0.shape[0]


def plot(results: dict, path: Path, overlays: Sequence[Path] = (), options: Sequence[str] = ("ssim-perceptual",)
         ) -> None:
    """FID against budget, a line per sampler; `overlays` (bench.onestep_options results) add the
    one-step FID of each of `options` at their budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets = [r["budget_cpu_min"] for r in results["budgets"]]
    for name, key, steps_list, style in (("flow matching", "fm_baseline", BASELINE_STEPS, "--o"),
                                         ("Linearizer", "onestep", LINEARIZER_STEPS, "-s")):
        rows = [r for r in results["budgets"] if key in r]
        if not rows:
            continue
        for steps in steps_list:
            values = [r[key]["fid"][str(steps)] for r in rows]
            hollow = key == "onestep" and steps > 1  # equals the one-step curve: B collapses it
            ax.plot([r["budget_cpu_min"] for r in rows], values, ":x" if hollow else style,
                    markersize=9 if hollow else 6, label=f"{name}, {steps} step{'s' if steps > 1 else ''}")
    loaded = [json.loads(Path(f).read_text()) for f in overlays]
    for option, style in zip(options, itertools.cycle(("-D", "-P", "-*", "-v"))):
        points = sorted((o["budget_cpu_min"], o["options"][option]["fid"]["1"]) for o in loaded
                        if option in o["options"])
        if points:
            ax.plot(*zip(*points), style, color="black", label=f"Linearizer, 1 step, {option}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.set_xlabel("training budget (CPU minutes of one thread, per model)")
    ax.set_ylabel(f"FID [{results['fid_extractor'].split('@')[0]}]")
    ax.set_title(f"MNIST, {results['eval_n']} samples vs the test split")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Run:
    """One model trained for one budget, then scored: what a worker process needs."""

    kind: str
    cfg: ModelConfig
    train_cfg: TrainConfig
    budget_min: float
    limit: int | None
    eval_n: int
    goal_n: int | None
    seed: int
    out: Path
    #: a saved flow-matching model: train on `pairs` (noise, its `teacher_steps`-step sample) instead of data
    teacher: Path | None = None
    teacher_steps: int = 4
    pairs: int = 10_000


def teacher_pairs(job: Run) -> tuple[dict[str, Tensor], dict]:
    """Distillation data: noise and the teacher's samples from it, and what making them cost."""
    teacher, teacher_cfg = load_model(job.teacher)
    if teacher_cfg.kind != "fm_baseline" or tuple(teacher_cfg.image_shape) != tuple(job.cfg.image_shape):
        raise ValueError(f"teacher {job.teacher} must be an fm_baseline model of image shape "
                         f"{tuple(job.cfg.image_shape)}, got {teacher_cfg.kind} {tuple(teacher_cfg.image_shape)}")
    x0 = torch.randn((job.pairs, *job.cfg.image_shape), generator=torch.Generator().manual_seed(job.seed + 2))
    start = time.process_time()
    x1, _ = sample("fm_baseline", teacher.eval(), x0, job.teacher_steps)
    info = {"teacher": str(job.teacher), "teacher_steps": job.teacher_steps, "pairs": job.pairs,
            "pairs_cpu_s": time.process_time() - start}
    return {"image": x1.clamp(0, 1), "noise": x0}, info


def run(job: Run) -> tuple[float, str, dict, str]:
    """Train, sample with every sampler of the kind, score, save the model: (budget, kind, row, key)."""
    torch.set_num_threads(1)
    data, distilled = {"image": load_mnist("train", limit=job.limit)[0]}, None
    if job.teacher is not None:
        data, distilled = teacher_pairs(job)
    extractor = get_extractor("mnist-classifier")
    real = feature_stats(extractor, load_mnist("test")[0])
    model, trained = train(job.kind, job.cfg, job.train_cfg, data, 60 * job.budget_min)
    if distilled is not None:
        trained["distilled"] = distilled
    save_model(model, job.cfg, job.out / f"{job.kind}-{job.budget_min:g}min")
    row = {**trained, "fid": {}, "cpu_s_per_1000_samples": {}}
    n = max(job.eval_n, job.goal_n or 0)
    x0 = torch.randn((n, *job.cfg.image_shape), generator=torch.Generator().manual_seed(job.seed + 1))
    key = ""
    for steps in KINDS[job.kind]:
        goal = job.goal_n is not None and (job.kind, steps) in GOAL
        out, cost = sample(job.kind, model, x0[:job.goal_n] if goal else x0[:job.eval_n], steps)
        scored = fid(real, out[:job.eval_n], extractor)  # the same first eval_n noises as every other sampler
        key = scored.key
        row["fid"][str(steps)] = scored.value
        row["cpu_s_per_1000_samples"][str(steps)] = cost
        if goal:
            row.setdefault("fid_goal_n", {})[str(steps)] = fid(real, out, extractor).value
        save_grid(out[:64], job.out / f"{job.kind}-{job.budget_min:g}min-{steps}steps.png", nrow=8)
        print(f"budget {job.budget_min:g} min  {job.kind:11s} {steps:3d} steps  FID {scored.value:8.2f}  "
              f"({trained['steps']} training steps)", flush=True)
    return job.budget_min, job.kind, row, key


def earlier(path: Path, results: dict) -> list[dict]:
    """The budgets of an earlier results file, refused unless models and FID protocol match."""
    old = json.loads(path.read_text())
    for field in ("eval_n", "models"):
        if old.get(field) != results[field]:
            raise SystemExit(f"--extend {path}: its {field} differs from this run's; budgets measured "
                             f"differently cannot share one curve")
    results["commands"] = old.get("commands", [old["command"]]) + [results["command"]]
    results["fid_extractor"] = old["fid_extractor"]
    return old["budgets"]


def goal(results: dict) -> dict | None:
    """The issue's goal at the largest budget: the Linearizer's 1-step FID below the baseline's 4-step."""
    rows = [r for r in results["budgets"] if all(k in r for k, _ in GOAL)]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["budget_cpu_min"])
    field = "fid_goal_n" if all("fid_goal_n" in row[k] for k, _ in GOAL) else "fid"
    (k1, s1), (k2, s2) = GOAL
    a, b = row[k1][field][str(s1)], row[k2][field][str(s2)]
    n = results.get("goal_n") if field == "fid_goal_n" else results["eval_n"]
    return {"budget_cpu_min": row["budget_cpu_min"], "samples": n, "linearizer_1_step": a,
            "baseline_4_steps": b, "met": a < b}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only is not None:
        if args.png is None:
            raise SystemExit("--plot-only needs --png")
        plot(json.loads(args.plot_only.read_text()), args.png, args.overlay, args.overlay_option)
        return 0
    torch.set_num_threads(1)
    model_cfg, train_cfg = recipe(args)
    n_linearizer = count(get_kind("onestep").build(model_cfg))
    baseline_cfg, n_baseline = matched_baseline(model_cfg, n_linearizer)
    print(f"Linearizer {n_linearizer:,} parameters, U-Net {n_baseline:,} "
          f"(levels {baseline_cfg.flow.depth}, width {baseline_cfg.flow.hidden}); budgets {args.budgets} CPU min, "
          f"{args.jobs} at once", flush=True)

    command = shlex.join(["python", "-m", "bench.quality_race", *(argv if argv is not None else sys.argv[1:])])
    configs = {"onestep": model_cfg, "fm_baseline": baseline_cfg}
    counts = {"onestep": n_linearizer, "fm_baseline": n_baseline}
    results: dict = {"command": command, "commands": [command], "machine": machine_line("cpu"),
                     "eval_n": args.eval_n, "goal_n": args.goal_n, "fid_extractor": None,
                     "real": "MNIST test split (10,000)", "budgets": [],
                     "models": {k: {"parameters": counts[k], "config": to_dict(configs[k])} for k in args.kinds}}
    if args.extend is not None:
        results["budgets"] = earlier(args.extend, results)
    done = {r["budget_cpu_min"] for r in results["budgets"]}
    largest = max(args.budgets)
    jobs = [Run(kind, configs[kind], train_cfg, budget, args.limit, args.eval_n,
                args.goal_n if budget == largest else None, args.seed, args.out)
            for budget in args.budgets if budget not in done for kind in args.kinds]

    def record(budget: float, kind: str, row: dict, key: str) -> None:
        if results["fid_extractor"] not in (None, key):
            raise SystemExit(f"FID feature network changed during the race: {results['fid_extractor']} vs {key}")
        results["fid_extractor"] = key
        rows = {r["budget_cpu_min"]: r for r in results["budgets"]}
        rows.setdefault(budget, {"budget_cpu_min": budget})[kind] = row
        results["budgets"] = sorted(rows.values(), key=lambda r: r["budget_cpu_min"])
        results["goal"] = goal(results)
        if args.json is not None:  # after every run: a long race keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    if args.jobs == 1:
        for job in jobs:
            record(*run(job))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run, job) for job in jobs]):
                record(*future.result())
    if results.get("goal"):
        g = results["goal"]
        print(f"goal at {g['budget_cpu_min']:g} CPU min, {g['samples']} samples: Linearizer 1 step "
              f"{g['linearizer_1_step']:.1f} vs baseline 4 steps {g['baseline_4_steps']:.1f}: "
              f"{'met' if g['met'] else 'not met'}", flush=True)
    if args.png is not None:
        plot(results, args.png, args.overlay, args.overlay_option)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
