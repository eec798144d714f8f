"""Design options of the one-step Linearizer, side by side at one training budget.

Every option is the main job's Linearizer and recipe with a few config overrides, trained and
scored exactly as in the quality race (`bench/quality_race.py`: MNIST train split, CPU-second
budget of one thread, FID of `--eval-n` one-step samples against the test split in the offline
classifier's features, the same seed and noise). The flow-matching baseline's FIDs at the same
budget are copied from the race's results file when it measured that budget with the same
protocol, so each option reads against the baseline's 1-, 4- and 100-step samples.

An existing `--json` of the same budget and protocol keeps its other options, so options can be
added one run at a time.

Run (the committed figures, docs/onestep.md "Design options"):
    OMP_NUM_THREADS=1 python -m bench.onestep_options --budget 4 --eval-n 500 --jobs 2 \\
        --json docs/results/onestep_options.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from linearizer.config import apply_overrides, to_dict

from .common import machine_line
from .quality_race import Run, recipe, run

#: name -> model config overrides of the main job's Linearizer. Each names its perceptual term,
#: so an option means the same whatever the main job's default is.
OPTIONS: dict[str, list[str]] = {
    "paper": ["loss.perceptual=mse"],
    "classifier-perceptual": ["loss.perceptual=classifier"],
    "ssim-perceptual": ["loss.perceptual=ssim"],
    "rank-32": ["loss.perceptual=mse", "operator.rank=32"],
    "wider-g": ["loss.perceptual=mse", "flow.hidden=32"],
    "ssim-rank-32": ["loss.perceptual=ssim", "operator.rank=32"],
    # Glow's multi-scale split: a second (third) level of `depth` blocks on half the channels at 8x8 (4x4)
    "ssim-multiscale": ["loss.perceptual=ssim", "flow.scales=2"],
    "ssim-multiscale-3": ["loss.perceptual=ssim", "flow.scales=3"],
    # the paper's objective on (noise, teacher sample) pairs instead of independent data and noise
    "distilled": ["loss.perceptual=mse"],
    "distilled-ssim": ["loss.perceptual=ssim"],
}
#: options that need `--teacher`.
NEEDS_TEACHER = {"distilled", "distilled-ssim"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=4.0, help="CPU minutes of one thread per option (default: 4)")
    p.add_argument("--options", nargs="+", default=None, choices=list(OPTIONS),
                   help="default: all (the distilled one only with --teacher)")
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--goal-n", type=int, default=None,
                   help="also score the one-step samples with this many, as the race's goal does")
    p.add_argument("--jobs", type=int, default=1, help="options trained at once, one thread each")
    p.add_argument("--limit", type=int, default=None, help="training digits (default: all 50,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--race", type=Path, default=Path("docs/results/quality_race.json"),
                   help="the race's results, for the baseline at the same budget")
    p.add_argument("--teacher", type=Path, default=None,
                   help="a saved flow-matching model (e.g. the race's outputs/quality_race/fm_baseline-60min), "
                        "for the distilled option")
    p.add_argument("--teacher-steps", type=int, default=4, help="Euler steps of the teacher's samples")
    p.add_argument("--pairs", type=int, default=10_000, help="(noise, sample) pairs the teacher makes")
    p.add_argument("--out", type=Path, default=Path("outputs/onestep_options"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None, help="the options' one-step grids side by side, with FIDs")
    p.add_argument("--plot-only", action="store_true", help="only draw --png from --json")
    p.add_argument("--refresh-baseline", action="store_true",
                   help="only copy the baseline's row from --race into --json (a race that finished later)")
    args = p.parse_args(argv)
    if args.budget <= 0 or args.eval_n < 2 or args.jobs < 1:
        p.error("--budget must be > 0, --eval-n >= 2, --jobs >= 1")
    if args.options is None:
        args.options = [name for name in OPTIONS if name not in NEEDS_TEACHER or args.teacher is not None]
    if NEEDS_TEACHER & set(args.options) and args.teacher is None:
        p.error(f"options {sorted(NEEDS_TEACHER & set(args.options))} need --teacher (a saved fm_baseline model)")
    if args.teacher is not None and not args.teacher.is_dir():
        p.error(f"--teacher {args.teacher} is not a saved model directory")
    return args


def baseline_at(race: Path, budget: float, eval_n: int) -> dict | None:
    """The baseline's row of the race at this budget, if the race measured it with this protocol."""
    if not race.is_file():
        return None
    results = json.loads(race.read_text())
    if results.get("eval_n") != eval_n:
        return None
    rows = [r for r in results["budgets"] if r["budget_cpu_min"] == budget and "fm_baseline" in r]
    if not rows:
        return None
    baseline = rows[0]["fm_baseline"]
    return {"fid": baseline["fid"], "fid_goal_n": baseline.get("fid_goal_n"), "goal_n": results.get("goal_n"),
            "steps": baseline["steps"], "source": str(race)}


def plot(results: dict, out: Path, path: Path) -> None:
    """One panel per option: its one-step sample grid (from `out`), titled with its FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(results["options"], key=lambda name: results["options"][name]["fid"]["1"])
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        grid = out / name / f"onestep-{results['budget_cpu_min']:g}min-1steps.png"
        if grid.is_file():
            ax.imshow(plt.imread(grid), cmap="gray")
        ax.set_title(f"{name}\nFID {results['options'][name]['fid']['1']:.0f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"one step, {results['budget_cpu_min']:g} CPU minutes each, FID of {results['eval_n']} samples",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.1 / rows), h_pad=2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.onestep_options", *(argv if argv is not None else sys.argv[1:])])
    if args.refresh_baseline:
        if args.json is None or not args.json.is_file():
            raise SystemExit("--refresh-baseline needs an existing --json")
        results = json.loads(args.json.read_text())
        results["baseline"] = baseline_at(args.race, results["budget_cpu_min"], results["eval_n"])
        results.setdefault("commands", [results["command"]]).append(command)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0 if results["baseline"] is not None else 1
    if args.plot_only:
        if args.json is None or args.png is None:
            raise SystemExit("--plot-only needs --json and --png")
        plot(json.loads(args.json.read_text()), args.out, args.png)
        return 0
    base = argparse.Namespace(set=[], train_set=[], batch_size=None, seed=args.seed)
    model_cfg, train_cfg = recipe(base)
    jobs = {name: Run("onestep", apply_overrides(model_cfg, OPTIONS[name]),
                      train_cfg, args.budget, args.limit, args.eval_n, args.goal_n, args.seed, args.out / name,
                      teacher=args.teacher if name in NEEDS_TEACHER else None,
                      teacher_steps=args.teacher_steps, pairs=args.pairs)
            for name in args.options}
    results: dict = {"command": command, "commands": [command], "machine": machine_line("cpu"),
                     "budget_cpu_min": args.budget, "seed": args.seed, "eval_n": args.eval_n, "goal_n": args.goal_n,
                     "fid_extractor": None, "baseline": None, "options": {}}
    if args.json is not None and args.json.is_file():  # add to the options already measured there
        old = json.loads(args.json.read_text())
        protocol = ("budget_cpu_min", "eval_n", "seed")
        theirs = tuple(old.get(k, 0 if k == "seed" else None) for k in protocol)  # files before seeds: seed 0
        if theirs != (args.budget, args.eval_n, args.seed):
            raise SystemExit(f"--json {args.json} holds options measured with {dict(zip(protocol, theirs))}, this run "
                             f"is {dict(zip(protocol, (args.budget, args.eval_n, args.seed)))}; write to a new file")
        results["options"] = {k: v for k, v in old["options"].items() if k not in jobs}
        results["commands"] = old.get("commands", [old["command"]]) + [command]
        results["fid_extractor"] = old["fid_extractor"]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(run, job) for name, job in jobs.items()}
        for name, future in futures.items():
            _, _, row, key = future.result()
            # read after each option: a race that runs alongside may finish its baseline meanwhile
            results["baseline"] = baseline_at(args.race, args.budget, args.eval_n)
            if results["fid_extractor"] not in (None, key):
                raise SystemExit(f"{args.json} was scored in other features ({results['fid_extractor']}); "
                                 f"write to a new file")
            results["fid_extractor"] = key
            results["options"][name] = {"overrides": OPTIONS[name], "config": to_dict(jobs[name].cfg), **row}
            print(f"{name:22s} FID {row['fid']['1']:8.1f}  ({row['steps']} steps)", flush=True)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.png is not None:
        plot(results, args.out, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
