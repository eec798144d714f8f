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

Run (the committed figures, docs/onestep.md "Quality race"):
    OMP_NUM_THREADS=1 python -m bench.quality_race --budgets 2 4 8 --eval-n 5000 \\
        --json docs/results/quality_race.json --png docs/img/quality_race.png
    # a user with time: --budgets 15 30 60 (CPU minutes per model and budget)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import linearizer.baselines  # noqa: F401 - registers the "fm_baseline" kind
from linearizer.config import FlowConfig, ModelConfig, TrainConfig, apply_overrides, from_dict, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.kinds import get_kind
from linearizer.metrics import feature_stats, fid, get_extractor
from linearizer.training import TensorBatches, fit
from linearizer.viz import save_grid

from .common import machine_line

BASELINE_STEPS = (1, 2, 4, 8, 16, 100)
LINEARIZER_STEPS = (1, 100)
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
    p.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                   help="only draw --png from the results JSON of an earlier (possibly interrupted) run")
    args = p.parse_args(argv)
    if min(args.budgets) <= 0 or args.eval_n < 2:
        p.error("budgets must be > 0 and --eval-n >= 2")
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


def train(kind_name: str, cfg: ModelConfig, train_cfg: TrainConfig, images: Tensor, budget_s: float
          ) -> tuple[nn.Module, dict]:
    """One model trained from scratch for `budget_s` CPU seconds, its lr schedule sized to them."""
    kind = get_kind(kind_name)

    def fresh() -> nn.Module:
        torch.manual_seed(train_cfg.seed)
        return kind.build(cfg)

    # What one step costs: a few timed steps of a throw-away model with the same recipe.
    probe = apply_overrides(train_cfg, [f"steps={PROBE_STEPS + 2}", "ema_decay=0", "warmup_steps=0"])
    marks: list[float] = []
    fit(kind, fresh(), TensorBatches({"image": images}, train_cfg.batch_size, train_cfg.seed), probe,
        on_step=lambda record: marks.append(time.process_time()), progress=False)
    step_s = (marks[-1] - marks[1]) / (len(marks) - 2)
    steps = max(1, int(budget_s / step_s))

    model = fresh()
    cfg_t = apply_overrides(train_cfg, [f"steps={steps}"])
    start = time.process_time()
    history = fit(kind, model, cpu_bounded(TensorBatches({"image": images}, cfg_t.batch_size, cfg_t.seed),
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


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets = [r["budget_cpu_min"] for r in results["budgets"]]
    for name, key, steps_list, style in (("flow matching", "fm_baseline", BASELINE_STEPS, "--o"),
                                         ("Linearizer", "onestep", LINEARIZER_STEPS, "-s")):
        for steps in steps_list:
            values = [r[key]["fid"][str(steps)] for r in results["budgets"]]
            hollow = key == "onestep" and steps > 1  # equals the one-step curve: B collapses it
            ax.plot(budgets, values, ":x" if hollow else style, markersize=9 if hollow else 6,
                    label=f"{name}, {steps} step{'s' if steps > 1 else ''}")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only is not None:
        if args.png is None:
            raise SystemExit("--plot-only needs --png")
        plot(json.loads(args.plot_only.read_text()), args.png)
        return 0
    torch.set_num_threads(1)
    model_cfg, train_cfg = recipe(args)
    n_linearizer = count(get_kind("onestep").build(model_cfg))
    baseline_cfg, n_baseline = matched_baseline(model_cfg, n_linearizer)
    images = load_mnist("train", limit=args.limit)[0]
    extractor = get_extractor("mnist-classifier")
    real = feature_stats(extractor, load_mnist("test")[0])
    x0 = torch.randn((args.eval_n, *model_cfg.image_shape), generator=torch.Generator().manual_seed(args.seed + 1))
    print(f"Linearizer {n_linearizer:,} parameters, U-Net {n_baseline:,} "
          f"(levels {baseline_cfg.flow.depth}, width {baseline_cfg.flow.hidden}); budgets {args.budgets} CPU min",
          flush=True)

    command = shlex.join(["python", "-m", "bench.quality_race", *(argv if argv is not None else sys.argv[1:])])
    results: dict = {"command": command, "machine": machine_line("cpu"), "eval_n": args.eval_n,
                     "fid_extractor": None, "real": "MNIST test split (10,000)", "budgets": [],
                     "models": {"onestep": {"parameters": n_linearizer, "config": to_dict(model_cfg)},
                                "fm_baseline": {"parameters": n_baseline, "config": to_dict(baseline_cfg)}}}
    for budget in args.budgets:
        row: dict = {"budget_cpu_min": budget}
        for kind_name, cfg, steps_list in (("onestep", model_cfg, LINEARIZER_STEPS),
                                           ("fm_baseline", baseline_cfg, BASELINE_STEPS)):
            model, trained = train(kind_name, cfg, train_cfg, images, 60 * budget)
            row[kind_name] = {**trained, "fid": {}, "cpu_s_per_1000_samples": {}}
            for steps in steps_list:
                out, cost = sample(kind_name, model, x0, steps)
                scored = fid(real, out, extractor)
                results["fid_extractor"] = scored.key
                row[kind_name]["fid"][str(steps)] = scored.value
                row[kind_name]["cpu_s_per_1000_samples"][str(steps)] = cost
                save_grid(out[:64], args.out / f"{kind_name}-{budget:g}min-{steps}steps.png", nrow=8)
                print(f"budget {budget:g} min  {kind_name:11s} {steps:3d} steps  FID {scored.value:8.2f}  "
                      f"({trained['steps']} training steps)", flush=True)
        results["budgets"].append(row)
        if args.json is not None:  # after every budget: a long run keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.png is not None:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
