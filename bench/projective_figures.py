"""Train projective models on MNIST 32x32 and measure what docs/projective.md reports.

For each rank k (default 16 and 64) the script trains `f = g^-1 P g` within a wall-clock budget
(`linearizer.training.fit`; training stops early when the budget runs out), saves it, and
measures:

- idempotency `||f(f(x)) - f(x)|| / ||f(x)||` in float32 (and float64) on N(0, I) noise, uniform
  noise, MNIST test digits, scikit-learn digits and scikit-image photo patches;
- the fixed-point error on held-out MNIST (test split);
- denoising PSNR at two noise levels, inpainting PSNR of a central 12x12 hole (1 and 10
  alternating projections);
- FID of `f(noise)` against the test split with the offline `mnist-classifier-v1` extractor
  (next to the FID of real training digits, the floor, and of a one-step model when given);

and draws one figure per rank: each input set (noise, uniform, noisy, masked, other digits,
photos) in one row, its projections in the row below.

Example (the documented CPU run; results JSON and models under --out-dir):
    $ nice -n 10 .venv/bin/python -m bench.projective_figures --minutes 9 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from linearizer.config import TrainConfig, apply_overrides
from linearizer.data.mnist import load_mnist
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.metrics import fid, get_extractor, psnr
from linearizer.projective import (
    add_noise,
    apply_mask,
    box_mask,
    fixed_point_error,
    idempotency_error,
    inpaint,
    project,
    projective_config,
)
from linearizer.projective.evaluation import project_batched, restoration
from linearizer.projective.inputs import make_inputs, mask_box
from linearizer.training import fit
from linearizer.viz import save_grid

IDEMPOTENCY_SETS = ("noise", "uniform", "mnist", "digits", "photos")
FIGURE_SETS = ("noise", "uniform", "noisy", "masked", "digits", "photos")
SIGMAS = (0.1, 0.3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--minutes", type=float, default=9.0, help="training wall-clock budget per rank")
    p.add_argument("--max-steps", type=int, default=100_000, help="stop earlier than the budget after this many steps")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--oblique", action="store_true", help="oblique projectors instead of orthogonal ones")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--eval-n", type=int, default=1000, help="images per measurement (FID uses this many too)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true",
                   help="measure the models already saved in OUT_DIR (their training record from the previous "
                        "results file) instead of training new ones")
    p.add_argument("--onestep-model", help="a saved onestep model whose FID to report alongside")
    p.add_argument("--out-dir", default="runs/projective_figures", help="saved models")
    p.add_argument("--results", help="results JSON, rewritten after each rank (default: OUT_DIR/results.json)")
    p.add_argument("--figure-dir", default="docs/img")
    return p.parse_args(argv)


def until(deadline: float, batches: Iterator[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Pass batches on until the wall clock reaches `deadline` (fit stops when they run out);
    the first batch always passes, so every run trains at least one step."""
    for i, batch in enumerate(batches):
        if i and time.perf_counter() >= deadline:
            return
        yield batch


def random_batches(images: Tensor, batch_size: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Endless uniformly drawn mini-batches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield {"image": images[torch.randint(images.shape[0], (batch_size,), generator=generator)]}


def train(args: argparse.Namespace, rank: int, images: Tensor) -> tuple[torch.nn.Module, dict]:
    """Train one rank within the budget, save it and reload it (the measured model is the saved one).
    With `--reuse`, load the saved model of this rank and the training record of its last results."""
    saved = Path(args.out_dir) / f"rank{rank}"
    if args.reuse:
        if not (saved / "model.safetensors").is_file():
            raise FileNotFoundError(f"--reuse: no saved model in {saved}")
        record = args.previous.get("ranks", {}).get(str(rank), {}).get("training", {})
        model, _ = load_model(saved)
        return model.to(args.device), {**record, "reused": True}
    cfg = projective_config(rank=rank, symmetric=not args.oblique, depth=args.depth, hidden=args.hidden)
    cfg = apply_overrides(cfg, args.set) if args.set else cfg
    kind = get_kind("projective")
    torch.manual_seed(args.seed)
    model = kind.build(cfg).to(args.device)
    train_cfg = TrainConfig(steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, log_every=50)
    start = time.perf_counter()
    batches = until(start + 60 * args.minutes, random_batches(images, args.batch_size, args.seed))
    history = fit(kind, model, batches, train_cfg, progress=False)
    seconds = time.perf_counter() - start
    out = save_model(model.cpu(), cfg, Path(args.out_dir) / f"rank{rank}")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    model, _ = load_model(out)  # measure what was saved
    marks = sorted({0, len(history) // 4, len(history) // 2, 3 * len(history) // 4, len(history) - 1})
    curve = [{k: round(v, 5) for k, v in history[i].items() if k != "lr"} for i in marks]
    return model.to(args.device), {"steps": len(history), "train_seconds": round(seconds, 1), "curve": curve,
                                   "dir": str(out)}


def summary(values: Tensor) -> dict[str, float]:
    values = values.double().cpu()
    return {"max": float(values.max()), "median": float(values.median())}


@torch.no_grad()
def batched(fn, x: Tensor, size: int = 250) -> Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


@torch.no_grad()
def measure(model, args: argparse.Namespace, test: Tensor, extractor) -> dict:
    """Every number of one rank's column in docs/projective.md."""
    device, n = args.device, args.eval_n
    gen = lambda: torch.Generator().manual_seed(args.seed + 1)  # noqa: E731 - the same draws for every rank
    shape = tuple(model.image_shape)
    results: dict = {"idempotency_float32": {}, "idempotency_float64": {}}
    model64 = type(model)(model.cfg).double().to(device)
    model64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    model64.eval()
    for name in IDEMPOTENCY_SETS:
        try:
            x = make_inputs(name, min(n, 256), shape, gen()).inputs.to(device)
        except Exception as e:  # noqa: BLE001 - an optional dataset missing must not lose the run
            results["idempotency_float32"][name] = results["idempotency_float64"][name] = {"error": repr(e)}
            continue
        results["idempotency_float32"][name] = summary(batched(lambda b: idempotency_error(model, b), x))
        results["idempotency_float64"][name] = summary(batched(lambda b: idempotency_error(model64, b.double()), x))

    x = test[:n].to(device)
    recon = project_batched(model, x, 250)
    results["fixed_point"] = {"relative_error": summary(batched(lambda b: fixed_point_error(model, b), x)),
                              "psnr_db": float(psnr(recon.clamp(0, 1), x))}

    results["denoise"] = {}
    for sigma in SIGMAS:
        noisy = add_noise(test[:n], sigma, gen()).to(device)
        scored = restoration(noisy, project_batched(model, noisy, 250), x)
        results["denoise"][f"sigma={sigma}"] = {"input_psnr_db": scored.before_db, "output_psnr_db": scored.after_db}

    mask = box_mask(x.shape, *mask_box(shape)).to(device)
    masked = apply_mask(x, mask)
    hole = (1 - mask).sum() / x.shape[0]
    results["inpaint"] = {"input_psnr_db": float(psnr(masked, x))}
    for iterations in (1, 10):
        filled = torch.cat([inpaint(model, masked[i:i + 250], mask[i:i + 250], iterations=iterations)
                            for i in range(0, n, 250)]).clamp(0, 1)
        hole_mse = ((filled - x) * (1 - mask)).square().flatten(1).sum(1) / hole
        results["inpaint"][f"iterations={iterations}"] = {
            "output_psnr_db": float(psnr(filled, x)),
            "hole_psnr_db": float((-10 * torch.log10(hole_mse)).mean()),
        }

    noise = make_inputs("noise", n, shape, gen()).inputs.to(device)
    samples = project_batched(model, noise, 250).clamp(0, 1).cpu()
    results["fid_samples"] = fid(test[:n], samples, extractor).to_dict()
    results["sample_range"] = [float(samples.min()), float(samples.max())]
    return results


@torch.no_grad()
def figure(model, args: argparse.Namespace, path: Path, columns: int = 10) -> Path:
    rows = []
    for name in FIGURE_SETS:
        try:
            probe = make_inputs(name, columns, tuple(model.image_shape), torch.Generator().manual_seed(args.seed + 2))
        except Exception as e:  # noqa: BLE001 - draw the other rows
            print(f"figure: skipping input set {name!r}: {e!r}")
            continue
        x = probe.inputs.to(args.device)
        y = inpaint(model, x, probe.mask.to(args.device), iterations=10) if probe.mask is not None else project(model, x)
        rows += [probe.inputs, y.cpu().float()]
    return save_grid(torch.cat(rows), path, nrow=columns)


def onestep_fid(args: argparse.Namespace, test: Tensor, extractor) -> dict | None:
    if not args.onestep_model:
        return None
    model, cfg = load_model(args.onestep_model)
    kind = get_kind(cfg.kind)
    if cfg.kind != "onestep":
        raise ValueError(f"--onestep-model {args.onestep_model} holds a {cfg.kind!r} model")
    noise = torch.randn(args.eval_n, *cfg.image_shape, generator=torch.Generator().manual_seed(args.seed + 1))
    samples = torch.cat([kind.predict(model, noise[i:i + 250], {"mode": "sample"}) for i in range(0, args.eval_n, 250)])
    return fid(test[:args.eval_n], samples.float(), extractor).to_dict()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results_file = Path(args.results or Path(args.out_dir) / "results.json")
    # read before this run rewrites it: --reuse carries the training records over
    args.previous = json.loads(results_file.read_text()) if args.reuse and results_file.is_file() else {}
    # TF32 would round convolutions to 10-bit mantissas: float32 must mean float32 here, both for
    # the idempotency figures and for comparing with the CPU run.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    train_images, _ = load_mnist("train")
    test, _ = load_mnist("test")
    extractor = get_extractor("mnist-classifier")
    report = {
        "command": "python -m bench.projective_figures " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                            f"{args.threads} thread(s))",
        "torch": torch.__version__,
        "fid_floor_train_vs_test": fid(test[:args.eval_n], train_images[:args.eval_n], extractor).to_dict(),
        "fid_onestep": onestep_fid(args, test, extractor),
        "ranks": {},
    }
    for rank in args.ranks:
        model, trained = train(args, rank, train_images)
        record = {"training": trained, **measure(model, args, test, extractor)}
        path = figure(model, args, Path(args.figure_dir) / f"projective_k{rank}.png")
        record["figure"] = str(path)
        report["ranks"][str(rank)] = record
        print(json.dumps({str(rank): record}, indent=1), flush=True)
        out = Path(args.results or Path(args.out_dir) / "results.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
