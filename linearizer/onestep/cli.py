"""`linearizer onestep train | sample | invert | interpolate | evaluate`: the one-step model from the shell.

Training here is the single-process path (`linearizer.training.fit`); the distributed pipelines
train the same kind. Images come from MNIST (offline, `--data mnist`) or an image folder
(`--data PATH`).

Example:
    $ linearizer onestep train --out runs/mnist --steps 2000 --batch-size 64
    $ linearizer onestep sample --model runs/mnist/model --n 64 --out samples.png
    $ linearizer onestep sample --model runs/mnist/model --steps 100 --out samples_100.png
    $ linearizer onestep invert --model runs/mnist/model --n 8 --out inversion.png
    $ linearizer onestep interpolate --model runs/mnist/model --pair 0 1 --n 10 --out path.png
    $ linearizer onestep evaluate --model runs/mnist/model --n 1000 --out metrics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ConfigError, ModelConfig, TrainConfig, dump_config, from_dict, load_config
from ..io import load_model, save_model
from ..kinds import add_param_options, get_kind
from ..viz import save_grid
from .evaluation import in_batches, require_B
from .inversion import interpolate, invert, reconstruct
from .kind import SPEC
from .model import OneStepLinearizer, noise_like
from ..cli import add_kind_parser, add_verb, positive_int


# ----- data and model helpers ----------------------------------------------------------------


def load_images(source: str, shape: tuple[int, ...], split: str = "train", limit: int | None = None) -> Tensor:
    """Images `[N, C, H, W]` in [0, 1] of the model's shape from "mnist" or an image folder."""
    c, h, w = shape
    if h != w:
        raise ValueError(f"the CLI loads square images only, the model wants {h}x{w}")
    if source == "mnist":
        if c != 1:
            raise ValueError(f"MNIST is grayscale, the model wants {c} channels")
        from ..data import load_mnist

        return load_mnist(split, size=h, limit=limit)[0]
    from ..data import ImageFolderDataset

    ds = ImageFolderDataset(source, size=h, channels=c)
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0] for i in tqdm(range(n), desc=f"load {source}", unit="img")])


def _load(args: argparse.Namespace) -> OneStepLinearizer:
    model, cfg = load_model(args.model)
    if cfg.kind != "onestep":
        raise ValueError(f"{args.model} holds a {cfg.kind!r} model; these commands need a 'onestep' model")
    return model.to(args.device)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(model: OneStepLinearizer, n: int, seed: int) -> Tensor:
    like = torch.empty(n, *model.image_shape, dtype=model.B_b.dtype, device=model.B_b.device)
    return noise_like(like, _generator(seed))


# ----- commands ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(ModelConfig, args.config, args.set)
    if cfg.kind != "onestep":
        raise ConfigError(f"kind must be 'onestep' for `linearizer onestep train`, got {cfg.kind!r}")
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("weight_decay", args.weight_decay), ("seed", args.seed)) if v is not None}
    train_cfg = from_dict(TrainConfig, overrides, "train")
    torch.manual_seed(train_cfg.seed)
    images = load_images(args.data, cfg.image_shape, "train", args.limit)
    from ..training import TensorBatches, fit

    kind = get_kind("onestep")
    model = kind.build(cfg).to(args.device)
    history = fit(kind, model, TensorBatches({"image": images}, train_cfg.batch_size, train_cfg.seed),
                  train_cfg, progress=not args.no_progress)
    kind.finalize(model)
    out = Path(args.out)
    save_model(model, cfg, out / "model")
    dump_config(train_cfg, out / "train_config.json")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    save_grid(kind.samples(model, 64, _generator(train_cfg.seed)), out / "samples.png")
    info = model.B_info
    print(f"trained {len(history)} steps, final loss {history[-1]['loss']:.4g}; B collapses {info.steps} "
          f"{info.method} steps to t = {info.t_end:.4g}; model in {out / 'model'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    model = _load(args)
    x0 = _noise(model, args.n, args.seed)
    if args.steps is None:
        require_B(model, "one-step sampling (without --steps)")
        x = in_batches(model.sample, x0, args.batch_size, "sample (one step)")
    else:
        x = in_batches(lambda b: model.sample_multistep(b, args.method, args.steps, args.t_end), x0,
                        args.batch_size, f"sample ({args.steps} steps)")
    print(save_grid(x.clamp(0, 1), args.out, nrow=args.nrow))
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    model = _load(args)
    require_B(model, "inversion")
    x = load_images(args.data, model.image_shape, args.split, args.n).to(model.B_b)
    with torch.no_grad():
        x0 = invert(model, x, args.solve)
        back = reconstruct(model, x, args.solve)
    from ..metrics import agreement_db

    # rows: the images, their noise pre-images (shown as 0.5 + x0 / 4), the reconstructions
    save_grid(torch.cat([x, (0.5 + x0 / 4).clamp(0, 1), back.clamp(0, 1)]), args.out, nrow=x.shape[0])
    print(f"inversion -> reconstruction: {agreement_db(back, x):.2f} dB over {x.shape[0]} images; grid in {args.out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    model = _load(args)
    i, j = args.pair
    x = load_images(args.data, model.image_shape, args.split, max(i, j) + 1)[[i, j]].to(model.B_b)
    with torch.no_grad():
        rows = [interpolate(model, x[0:1], x[1:2], args.n, "induced")]
        if model.has_B:  # the reference's pixel-noise line needs B^-1
            rows.append(interpolate(model, x[0:1], x[1:2], args.n, "noise", args.solve))
    save_grid(torch.cat(rows).clamp(0, 1), args.out, nrow=args.n)
    print(f"interpolation (row 1: induced space{', row 2: pixel-space noise' if len(rows) > 1 else ''}) in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import agreement_db, fid, get_extractor
    from ..metrics.classifier import IMAGE_SHAPE as MNIST_SHAPE, NAME as MNIST_CLASSIFIER
    from .evaluation import agreement, collapse_summary, inversion_db, reference_samples

    model = _load(args)
    require_B(model, "evaluation")
    x0 = _noise(model, args.n, args.seed)
    a = agreement(model, x0, args.steps, args.batch_size, progress=True)
    steps = a.steps
    result = {"B": collapse_summary(model), "n": args.n, f"agreement_db_1_vs_{steps}_steps": a.db}
    if model.B_info.method == "rk4":  # what the reference's un-nested RK4 collapse would give instead
        ref_one = reference_samples(model, x0, args.batch_size, progress=True)
        result[f"reference_rk4_agreement_db_1_vs_{steps}_steps"] = agreement_db(ref_one.clamp(0, 1), a.many)
    real = load_images(args.data, model.image_shape, args.split, args.n).to(model.B_b)
    result["inversion_db"] = inversion_db(model, real, args.batch_size, progress=True)
    if args.no_fid:
        pass
    elif args.extractor != "inception" and model.image_shape != MNIST_SHAPE:
        result["fid"] = f"skipped: the offline {MNIST_CLASSIFIER} extractor needs {MNIST_SHAPE} images"
    else:
        extractor = get_extractor(args.extractor)  # its name goes into every FID result
        result["fid_1_step"] = fid(real.cpu(), a.one.cpu(), extractor).to_dict()
        result[f"fid_{steps}_steps"] = fid(real.cpu(), a.many.cpu(), extractor).to_dict()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


# ----- argument parsing ----------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", required=True, help="saved model directory (config.json + model.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default: 256)")


def _data(p: argparse.ArgumentParser, split: str = "test") -> None:
    p.add_argument("--data", default="mnist", help="'mnist' (offline) or an image folder (default: mnist)")
    p.add_argument("--split", default=split, help=f"MNIST split: train, val or test (default: {split})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linearizer onestep <verb>` to the `linearizer` console script."""
    verbs = add_kind_parser(subparsers, SPEC.name, help="one-step generator: train, sample, invert, interpolate, "
                            "evaluate", description="One-step flow-matching Linearizers: x = g_x^-1(B g_y(noise)).")
    p = add_verb(verbs, "train", cmd_train, help="train a one-step model (single process) and build its B")
    p.add_argument("--out", required=True, help="run directory: model/, history.json, samples.png")
    p.add_argument("--config", help="model config file (JSON or YAML); defaults: MNIST 1x32x32, depth 4, rank 8")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --set operator.rank=16 (repeatable)")
    p.add_argument("--data", default="mnist", help="'mnist' (offline) or an image folder (default: mnist)")
    p.add_argument("--limit", type=positive_int, help="use only the first N training images")
    p.add_argument("--steps", type=positive_int, help="optimiser steps (TrainConfig default if omitted)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add_verb(verbs, "sample", cmd_sample, help="one-step samples through B, or --steps N multi-step samples")
    _common(p)
    p.add_argument("--n", type=positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--steps", type=positive_int, help="integrate with N steps instead of the one-step B")
    add_param_options(p, SPEC.mode("sample_multistep"), only=("method", "t_end"), defaults={"method": "rk4"})
    p.add_argument("--nrow", type=positive_int, help="images per grid row")
    p.add_argument("--out", required=True, help="PNG grid")

    p = add_verb(verbs, "invert", cmd_invert, help="real images -> noise -> images (rows: input, noise, "
                 "reconstruction)")
    _common(p)
    _data(p)
    p.add_argument("--n", type=positive_int, default=8, help="first N images of the split (default: 8)")
    add_param_options(p, SPEC.mode("invert"), only=("solve",))
    p.add_argument("--out", required=True, help="PNG grid")

    p = add_verb(verbs, "interpolate", cmd_interpolate, help="induced-space path between two real images (PNG strip)")
    _common(p)
    _data(p)
    p.add_argument("--pair", type=int, nargs=2, default=(0, 1), metavar=("I", "J"), help="image indices (default: 0 1)")
    p.add_argument("--n", type=positive_int, default=8, help="points on the path, ends included (default: 8)")
    add_param_options(p, SPEC.mode("interpolate"), only=("solve",))
    p.add_argument("--out", required=True, help="PNG: induced path, then the reference's pixel-noise path")

    p = add_verb(verbs, "evaluate", cmd_evaluate, help="one-step vs multi-step agreement, inversion dB, FID")
    _common(p)
    _data(p)
    p.add_argument("--n", type=positive_int, default=1000, help="samples and real images (default: 1000)")
    p.add_argument("--steps", type=positive_int, help="multi-step reference (default: the steps B collapses)")
    p.add_argument("--extractor", choices=("auto", "mnist-classifier", "inception"), default="auto",
                   help="FID feature network; the result names it (default: auto)")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--out", help="also write the metrics as JSON here")
