"""Train a style model on classical-filter pairs and measure what docs/style.md reports.

The script makes (content, styled) pairs of 3x32x32 photo patches for four classical styles
(`linearizer.style.data`: training photos and held-out photos are disjoint), trains one shared
network with one depthwise-convolution operator per style within a wall-clock budget
(`linearizer.training.fit`), saves the model, and measures on held-out content:

- per style: PSNR / SSIM of `f_s(content)` against the filter's output, next to the identity
  baseline PSNR / SSIM(content, styled) and the same numbers on training content;
- interpolation strips `(1 - a) A_s1 + a A_s2` and strength strips: the largest step-to-step
  change relative to the endpoint difference (1/K is perfectly even), and the exactness of the
  endpoints;
- composition: the operator `A_s2 A_s1` against styles applied in sequence (`composition_gap`),
  and both against the filters applied in sequence;

and draws docs/img/style_*.png.

Example (the documented CPU run, then the measurements again from the saved model):
    $ nice -n 10 .venv/bin/python -m bench.style_figures --minutes 12 --threads 1
    $ nice -n 10 .venv/bin/python -m bench.style_figures --model runs/style_figures/model
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from linearizer.config import FlowConfig, LossConfig, ModelConfig, OperatorConfig, TrainConfig, apply_overrides
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.style import (DEFAULT_STYLES, apply_filter, apply_in_sequence, compose_styles, composition_gap,
                              interpolate_styles, make_filter_pairs, step_smoothness, with_strength)
from linearizer.style.evaluation import quality as image_quality
from linearizer.training import fit
from linearizer.viz import save_grid

INTERPOLATIONS = (("grade", "pencil"), ("stylize", "detail"))
COMPOSITIONS = (("grade", "stylize"), ("detail", "pencil"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", nargs="+", default=list(DEFAULT_STYLES))
    p.add_argument("--size", type=int, default=32, help="patch side")
    p.add_argument("--n-train", type=int, default=1024, help="training content patches (each in every style)")
    p.add_argument("--n-test", type=int, default=128, help="held-out content patches")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--kernel-size", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--minutes", type=float, default=12.0, help="training wall-clock budget")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (the machine is shared)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default="runs/style_figures", help="model and results.json")
    p.add_argument("--model", help="measure this saved model (OUT_DIR/model of an earlier run) instead of training")
    p.add_argument("--img-dir", default="docs/img")
    return p.parse_args(argv)


def until(deadline: float, batches: Iterator[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Pass batches on until the wall clock reaches `deadline` (fit stops when they run out)."""
    for batch in batches:
        if time.perf_counter() >= deadline:
            return
        yield batch


def random_batches(tensors: dict[str, Tensor], batch_size: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Endless uniformly drawn mini-batches of rows of `tensors`."""
    generator = torch.Generator().manual_seed(seed)
    n = next(iter(tensors.values())).shape[0]
    while True:
        i = torch.randint(n, (batch_size,), generator=generator)
        yield {k: v[i] for k, v in tensors.items()}


def train(args: argparse.Namespace, pairs) -> tuple[torch.nn.Module, dict]:
    cfg = ModelConfig(kind="style", image_shape=pairs.image_shape,
                      flow=FlowConfig(depth=args.depth, hidden=args.hidden),
                      operator=OperatorConfig(styles=list(pairs.styles), kernel_size=args.kernel_size),
                      loss=LossConfig())
    cfg = apply_overrides(cfg, args.set) if args.set else cfg
    kind = get_kind("style")
    torch.manual_seed(args.seed)
    model = kind.build(cfg).to(args.device)
    train_cfg = TrainConfig(steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, log_every=50)
    start = time.perf_counter()
    batches = until(start + 60 * args.minutes, random_batches(pairs.tensors(), args.batch_size, args.seed))
    history = fit(kind, model, batches, train_cfg, progress=False)
    seconds = time.perf_counter() - start
    kind.finalize(model)
    out = save_model(model.cpu(), cfg, Path(args.out_dir) / "model")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    model, _ = load_model(out)  # measure what was saved
    last = {k: round(v, 5) for k, v in history[-1].items() if k != "lr"}
    return model.to(args.device), {"steps": len(history), "train_seconds": round(seconds, 1), "last": last,
                                   "config": json.loads((out / "config.json").read_text())["model"]}


def reload(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """A saved model and what its training run recorded (history.json beside the weights)."""
    model, _ = load_model(args.model)
    history = json.loads((Path(args.model) / "history.json").read_text())
    last = {k: round(v, 5) for k, v in history[-1].items() if k != "lr"}
    config = json.loads((Path(args.model) / "config.json").read_text())["model"]
    return model.to(args.device), {"steps": len(history), "last": last, "config": config, "model": args.model}


def quality(y_hat: Tensor, y: Tensor) -> dict[str, float]:
    scored = image_quality(y_hat, y)
    return {"psnr": round(scored["psnr"], 2), "ssim": round(scored["ssim"], 4)}


@torch.no_grad()
def per_style(model, pairs, device: str) -> dict[str, dict]:
    out = {}
    for s in pairs.styles:
        x, y = (t.to(device) for t in pairs.of_style(s))
        out[s] = {"model": quality(model(x, s).clamp(0, 1), y), "identity": quality(x, y)}
    return out


def upscale(images: Tensor, factor: int = 3) -> Tensor:
    return F.interpolate(images.float().cpu(), scale_factor=factor, mode="nearest")


def grid_rows(strip: Tensor, patches: int = 4) -> Tensor:
    """`[K, B, C, H, W]` columns of a figure as grid cells: a row per content patch, upscaled."""
    return upscale(strip[:, :patches].clamp(0, 1).transpose(0, 1).flatten(0, 1))


def smoothness(strip: Tensor, steps: int) -> dict[str, float]:
    return {"max_step_over_span": round(step_smoothness(strip), 4),
            "median_step_over_span": round(step_smoothness(strip, "median"), 4), "uniform": round(1 / steps, 4)}


@torch.no_grad()
def interpolation(model, x: Tensor, a: str, b: str, steps: int = 8) -> tuple[Tensor, dict]:
    alphas = [k / steps for k in range(steps + 1)]
    strip = torch.stack([interpolate_styles(model, a, b, t)(x) for t in alphas])  # [K+1, B, C, H, W]
    ends = max(float((strip[0] - model(x, a)).abs().max()), float((strip[-1] - model(x, b)).abs().max()))
    return strip, {**smoothness(strip, steps), "endpoint_max_abs_error": ends}


@torch.no_grad()
def strength_strip(model, x: Tensor, style: str, steps: int = 8) -> tuple[Tensor, dict]:
    strip = torch.stack([with_strength(model, style, k / steps)(x) for k in range(steps + 1)])
    return strip, {**smoothness(strip, steps), "strength0_max_abs_error": float((strip[0] - x).abs().max())}


@torch.no_grad()
def composition(model, x: Tensor, s1: str, s2: str) -> tuple[Tensor, dict]:
    composed = compose_styles(model, [s1, s2])(x).clamp(0, 1)
    sequential = apply_in_sequence(model, [s1, s2], x).clamp(0, 1)
    truth = apply_filter(s2, apply_filter(s1, x.cpu())).to(x.device)  # the filters in sequence
    gap = composition_gap(model, [s1, s2], x)
    panel = torch.stack([x, model(x, s1).clamp(0, 1), model(x, s2).clamp(0, 1), composed, sequential, truth])
    return panel, {"composed_vs_sequential_psnr": round(gap.psnr_db, 2), "latent_rel": round(gap.latent_rel, 4),
                   "roundtrip_rel": round(gap.roundtrip_rel, 4),
                   "composed_vs_filters": quality(composed, truth), "sequential_vs_filters": quality(sequential, truth),
                   "identity_vs_filters": quality(x, truth)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    img_dir, out_dir = Path(args.img_dir), Path(args.out_dir)
    t0 = time.perf_counter()
    train_pairs = make_filter_pairs(args.styles, "train", args.size, args.n_train, args.seed)
    test_pairs = make_filter_pairs(args.styles, "test", args.size, args.n_test, args.seed)
    data_seconds = time.perf_counter() - t0
    model, run = train(args, train_pairs) if args.model is None else reload(args)
    given = sys.argv[1:] if argv is None else argv
    results = {"command": "python -m bench.style_figures " + " ".join(given), "host": platform.node(),
               "device": args.device, "torch": torch.__version__, "threads": args.threads,
               "data_seconds": round(data_seconds, 1), "pairs": {"train": len(train_pairs), "test": len(test_pairs)},
               **run}
    k = min(len(train_pairs), len(test_pairs))  # as many training pairs as held-out ones (rows are patch-major)
    train_sub = type(train_pairs)(train_pairs.content[:k], train_pairs.styled[:k], train_pairs.style[:k],
                                  train_pairs.styles, train_pairs.names[:k])
    results["held_out"] = per_style(model, test_pairs, args.device)
    results["train_content"] = per_style(model, train_sub, args.device)

    # Figures use the first held-out patches; the strip metrics use all of them.
    show = 6
    x = test_pairs.of_style(args.styles[0])[0].to(args.device)
    rows = [x[:show]]
    for s in args.styles:
        c, y = test_pairs.of_style(s)
        rows += [y[:show].to(args.device), model(c[:show].to(args.device), s).clamp(0, 1)]
    save_grid(upscale(torch.cat(rows)), img_dir / "style_heldout.png", nrow=show)

    results["interpolation"], results["strength"], results["composition"] = {}, {}, {}
    for a, b in INTERPOLATIONS:
        strip, stats = interpolation(model, x, a, b)
        results["interpolation"][f"{a}->{b}"] = stats
        save_grid(grid_rows(strip), img_dir / f"style_interp_{a}_{b}.png", nrow=strip.shape[0])
    for s in args.styles:
        strip, stats = strength_strip(model, x, s)
        results["strength"][s] = stats
        if s == "pencil":
            save_grid(grid_rows(strip), img_dir / "style_strength.png", nrow=strip.shape[0])
    for s1, s2 in COMPOSITIONS:
        panel, stats = composition(model, x, s1, s2)
        results["composition"][f"{s1}+{s2}"] = stats
        save_grid(grid_rows(panel), img_dir / f"style_compose_{s1}_{s2}.png", nrow=panel.shape[0])

    out_dir.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.model is None else "results_remeasured.json"
    (out_dir / name).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
