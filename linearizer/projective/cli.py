"""`linearizer projective train | project`: train a projective model; project noise, corrupted or
foreign images.

`linearizer projective project` writes one PNG grid: the inputs above, their projections
`f(inputs)` below. Masked inputs are inpainted (`--iterations` alternating projections); every other set is
projected once (noise is sampling, noisy digits denoising). It also prints how idempotent the
outputs are and, where clean images exist, the PSNR of inputs and outputs against them.

Example:
    $ linearizer projective train --out runs/proj16 --rank 16 --steps 3000
    $ linearizer projective project --model runs/proj16 --input noise --n 16 --out samples.png
    $ linearizer projective project --model runs/proj16 --input masked --iterations 10 --out inpaint.png
    $ linearizer projective project --model runs/proj16 --input photos --out ood.png
"""

from __future__ import annotations

import argparse
import json

import torch

from ..cli import add_kind_parser, add_verb, positive_int
from ..config import ConfigError, ModelConfig, TrainConfig, apply_overrides, load_config
from ..io import load_model, save_model
from ..kinds import get_kind
from ..metrics.image import psnr
from ..training import TensorBatches, fit
from ..viz import save_grid
from .defaults import projective_config
from .evaluation import restoration
from .inputs import INPUTS, make_inputs
from .kind import SPEC
from .uses import idempotency_error, inpaint


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linearizer projective train | project` to the `linearizer` console script."""
    verbs = add_kind_parser(subparsers, SPEC.name, help="globally projective model: train; project noise / "
                            "corrupted / foreign images",
                            description="Projective models f = g^-1 P g with P^2 = P: f(f(x)) = f(x) for every input.")
    train = add_verb(verbs, "train", cmd_train, help="train a projective model on MNIST",
                     description="Train f = g^-1 P g on MNIST (linearizer.training.fit) and save it.")
    train.add_argument("--out", required=True, help="directory for the saved model")
    train.add_argument("--rank", type=positive_int, default=16, help="k, the rank of the projector")
    train.add_argument("--oblique", action="store_true", help="oblique projector (default: orthogonal Q Q^T)")
    train.add_argument("--config", help="model config file (JSON/YAML); default: projective_config(--rank)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    train.add_argument("--steps", type=positive_int, default=3000)
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--limit", type=positive_int, default=None, help="use only the first N training digits")
    train.add_argument("--seed", type=int, default=0)

    project = add_verb(verbs, "project", cmd_project, help="project an input set: noise (sampling), noisy digits "
                       "(denoising), masked digits (inpainting), foreign images")
    project.add_argument("--model", required=True, help="saved projective model directory")
    project.add_argument("--input", choices=INPUTS, default="noise",
                         help="what to project (noise = sampling, noisy = denoising, masked = inpainting)")
    project.add_argument("--n", type=positive_int, default=16, help="number of inputs")
    project.add_argument("--seed", type=int, default=0, help="seed of noise, digits and patches")
    project.add_argument("--sigma", type=float, default=0.3, help="noise level of --input noisy")
    project.add_argument("--iterations", type=positive_int, default=1,
                         help="projections of --input masked, re-imposing the known pixels in between")
    project.add_argument("--out", required=True, help="output PNG grid (inputs above, projections below)")


def train_config(args: argparse.Namespace) -> ModelConfig:
    """The model config of `projective train`: a file, or the recommended one, then overrides."""
    if args.config:
        cfg = load_config(ModelConfig, args.config, args.set)
        if cfg.kind != "projective":
            raise ConfigError(f"{args.config}: kind must be 'projective' for `linearizer projective train`, "
                              f"got {cfg.kind!r}")
        return cfg
    cfg = projective_config(rank=args.rank, symmetric=not args.oblique)
    return apply_overrides(cfg, args.set) if args.set else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.mnist import load_mnist

    cfg = train_config(args)
    C, H, W = cfg.image_shape
    if C != 1 or H != W:
        raise ConfigError(f"projective train trains on MNIST, which needs image_shape (1, S, S), "
                          f"got {cfg.image_shape}")
    images, _ = load_mnist("train", size=H, limit=args.limit)
    kind = get_kind("projective")
    torch.manual_seed(args.seed)
    model = kind.build(cfg)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    history = fit(kind, model, TensorBatches({"image": images}, args.batch_size, seed=args.seed), train_cfg)
    kind.finalize(model)
    out = save_model(model, cfg, args.out)
    (out / "history.json").write_text(json.dumps(history) + "\n")
    save_grid(kind.samples(model, 64, torch.Generator().manual_seed(args.seed)), out / "samples.png", nrow=8)
    print(f"saved projective model (rank {cfg.operator.rank}) to {out}; final terms "
          + ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k not in ("step", "lr")))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    if args.n < 1 or args.iterations < 1:
        raise ValueError(f"--n and --iterations must be >= 1, got {args.n} and {args.iterations}")
    model, cfg = load_model(args.model)
    if cfg.kind != "projective":
        raise ValueError(f"{args.model} holds a {cfg.kind!r} model, not a projective one")
    probe = make_inputs(args.input, args.n, model.image_shape, torch.Generator().manual_seed(args.seed), args.sigma)
    if probe.mask is not None:
        outputs = inpaint(model, probe.inputs, probe.mask, iterations=args.iterations)
    else:
        mode = "sample" if args.input == "noise" else "project"
        outputs = get_kind("projective").predict(model, probe.inputs, {"mode": mode})
    nrow = min(args.n, 16)
    path = save_grid(torch.cat([probe.inputs, outputs.float()]), args.out, nrow=nrow)
    report = f"wrote {path}: {args.n} {args.input} inputs above, projections below; " \
             f"idempotency max {float(idempotency_error(model, outputs).max()):.2e}"
    if probe.clean is probe.inputs:
        report += f"; PSNR of projections vs inputs {float(psnr(outputs.float().clamp(0, 1), probe.clean)):.2f} dB"
    elif probe.clean is not None:
        scored = restoration(probe.inputs, outputs, probe.clean)
        report += f"; PSNR vs clean {scored.before_db:.2f} dB -> {scored.after_db:.2f} dB"
    print(report)
    return 0
