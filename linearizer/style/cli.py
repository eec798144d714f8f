"""`linearizer style ...`: train a style model, apply, interpolate and compose its styles.

Each command that renders writes one PNG strip: the input, then the results left to right
(`linearizer.viz.save_strip`: 2 white pixels between and around the panels).

Example:
    $ linearizer style train --out runs/style --styles stylize,pencil,detail,grade --size 32 --steps 2000
    $ linearizer style train --out runs/mine --pairs my_pairs/ --steps 2000     # ROOT/STYLE/{content,styled}/NAME.png
    $ linearizer style apply --model runs/style --input cat.png --style pencil --strengths 0.25,0.5,1 --out a.png
    $ linearizer style interpolate --model runs/style --input cat.png --styles stylize grade --steps 6 --out i.png
    $ linearizer style compose --model runs/style --input cat.png --styles grade stylize --out c.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..config import ConfigError, ModelConfig, TrainConfig, apply_overrides, from_dict, read_config_file
from ..data.transforms import to_image_tensor
from ..io import load_model, save_model
from ..kinds import add_param_options, get_kind
from ..training import TensorBatches, fit
from ..viz import save_strip
from .data import DEFAULT_STYLES, load_pair_folder, make_filter_pairs
from .kind import SPEC
from .model import StyleModel
from ..cli import add_kind_parser, add_verb, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linearizer style train | apply | interpolate | compose` to the `linearizer` console script."""
    verbs = add_kind_parser(subparsers, SPEC.name, help="modular style transfer: train, apply, interpolate, compose",
                            description="Style models f_s = g_y^-1 A_s g_x: one network, one operator per style.")
    train = add_verb(verbs, "train", cmd_train, help="train a style model on filter-made or folder pairs")
    train.add_argument("--out", required=True, help="directory for the saved model")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--styles", default=",".join(DEFAULT_STYLES),
                        help="comma-separated classical styles (linearizer.style.data.STYLE_FILTERS)")
    source.add_argument("--pairs", help="folder ROOT/STYLE/content/NAME.png + ROOT/STYLE/styled/NAME.png")
    train.add_argument("--size", type=positive_int, default=32, help="patch side of filter-made pairs")
    train.add_argument("--n", type=positive_int, default=1024, help="content patches of filter-made pairs")
    train.add_argument("--config", help="model config file (JSON/YAML) for flow, operator and loss")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    train.add_argument("--steps", type=positive_int, default=2000)
    train.add_argument("--batch-size", type=positive_int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)

    for name, helptext in (("apply", "apply one style (optionally at several strengths)"),
                           ("interpolate", "strip from one style to another (operator interpolation)"),
                           ("compose", "compose styles into one operator (or apply them in sequence)")):
        p = add_verb(verbs, name, cmd_render, help=helptext)
        p.add_argument("--model", required=True, help="saved style model directory")
        p.add_argument("--input", required=True, help="content image (PNG/JPEG)")
        p.add_argument("--out", required=True, help="output PNG strip")
        p.add_argument("--resize", action="store_true",
                       help="centre-crop and resize the input to the model's size (else sizes must match)")
        if name == "apply":
            p.add_argument("--style", required=True)
            p.add_argument("--strengths", default="1", help="comma-separated strengths (0: content, 1: style)")
        elif name == "interpolate":
            p.add_argument("--styles", nargs=2, required=True, metavar=("STYLE_A", "STYLE_B"))
            p.add_argument("--steps", type=positive_int, default=5, help="intervals from STYLE_A to STYLE_B (>= 1)")
        else:
            p.add_argument("--styles", nargs="+", required=True, help="styles, first applied first")
            add_param_options(p, SPEC.mode("compose"), only=("how",))
        p.set_defaults(render=name)


# --------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    if args.pairs:
        pairs = load_pair_folder(args.pairs)
    else:
        pairs = make_filter_pairs([s.strip() for s in args.styles.split(",") if s.strip()], "train", args.size,
                                  args.n, args.seed)
    cfg = train_config(args.config, args.set, pairs.image_shape, pairs.styles)
    kind = get_kind("style")
    torch.manual_seed(args.seed)
    model = kind.build(cfg)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    history = fit(kind, model, TensorBatches(pairs.tensors(), args.batch_size, seed=args.seed), train_cfg)
    kind.finalize(model)
    out = save_model(model, cfg, args.out)
    (out / "history.json").write_text(json.dumps(history) + "\n")
    print(f"saved style model with styles {list(pairs.styles)} to {out} (final loss {history[-1]['loss']:.4g})")
    return 0


def train_config(path: str | None, overrides: list[str], image_shape: tuple[int, int, int],
                 styles: tuple[str, ...] | list[str]) -> ModelConfig:
    """The model config of `style train`: a file (or defaults) of kind "style", fitted to the pairs.

    The kind, image shape and styles come from the pairs, before the config is built, so that its
    loss weights are the style kind's; overrides apply last.

    Raises:
        ConfigError: the file names another kind, or a value is invalid.
    """
    data = read_config_file(path) if path else {}
    if data.get("kind", "style") != "style":
        raise ConfigError(f"{path}: kind must be 'style' for `linearizer style train`, got {data['kind']!r}")
    operator = {**data.get("operator", {}), "styles": list(styles)}
    cfg = from_dict(ModelConfig, {**data, "kind": "style", "image_shape": list(image_shape), "operator": operator})
    return apply_overrides(cfg, overrides) if overrides else cfg


def read_image(path: str | Path, model: StyleModel, resize: bool) -> Tensor:
    """The image at `path` as a `[1, C, H, W]` batch fit for `model`.

    Raises:
        FileNotFoundError, ValueError: a missing or undecodable file, or a size other than the
            model's without `resize` (the message names both sizes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {path}")
    C, H, W = model.image_shape
    try:
        with Image.open(path) as image:
            if not resize and (image.height, image.width) != (H, W):
                raise ValueError(f"{path} is {image.width}x{image.height}, but the model maps {W}x{H} images "
                                 f"(pass --resize to centre-crop and resize it)")
            if resize and H != W:
                raise ValueError(f"--resize makes square images, but the model maps {W}x{H} images")
            x = to_image_tensor(image, H if resize else None, C)
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e
    return x[None]


def cmd_render(args: argparse.Namespace) -> int:
    model, cfg = load_model(args.model)
    if cfg.kind != "style":
        raise ValueError(f"{args.model} holds a {cfg.kind!r} model, not a style model")
    kind = get_kind("style")
    x = read_image(args.input, model, args.resize).to(next(model.parameters()).dtype)
    if args.render == "apply":
        strengths = [float(s) for s in args.strengths.split(",")]
        outs = [kind.predict(model, x, {"mode": "style", "style": args.style, "strength": a}) for a in strengths]
    elif args.render == "interpolate":
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        a, b = args.styles
        outs = [kind.predict(model, x, {"mode": "interpolate", "style_a": a, "style_b": b, "alpha": k / args.steps})
                for k in range(args.steps + 1)]
    else:
        outs = [kind.predict(model, x, {"mode": "style", "style": s}) for s in args.styles]
        outs.append(kind.predict(model, x, {"mode": "compose", "styles": args.styles, "how": args.how}))
    path = save_strip(torch.cat([x] + outs).float(), args.out)
    print(f"wrote {path} ({1 + len(outs)} panels: input, then results)")
    return 0
