"""Train one one-step recipe single-process on the demo's data, then measure its one-step samples.

The quick loop for choosing the recipe `make demo` trains (`pipelines/main.py` EMBEDDED): one
process, one torch thread, the same 10,000 MNIST training images the demo writes as shards,
`linearizer.training.fit` with the recipe's `TrainConfig` (lr schedule, EMA), then `B` (RK4 x
100) and FID of `--eval-n` one-step samples against the 10,000 MNIST test images in the features
of the offline classifier (`mnist-classifier-v1`; not comparable to Inception FID). Each recipe
is a tag in `--results`; its 8x8 one-step grid is `<out>/<tag>/samples.png`.

Example (the demo's recipe before and after; see docs/onestep.md):
    $ export OMP_NUM_THREADS=1
    $ nice .venv/bin/python -m bench.onestep_recipe --tag demo-old \\
          --set flow.depth=2 --set flow.hidden=16 --set operator.rank=4 \\
          --train-set steps=600 --train-set batch_size=64
    $ nice .venv/bin/python -m bench.onestep_recipe --tag demo-new --set flow.conditioner_precision=bfloat16 \\
          --train-set steps=1200 --train-set lr_schedule=cosine --train-set ema_decay=0.999
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.common import machine_line
from linearizer.config import ModelConfig, TrainConfig, apply_overrides, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.io import save_model
from linearizer.kinds import get_kind
from linearizer.metrics import feature_stats, fid, get_extractor, load_or_train_classifier
from linearizer.training import TensorBatches, fit
from linearizer.viz import save_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.onestep_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", required=True, help="name of this recipe in the results file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override, e.g. --train-set lr_schedule=cosine")
    p.add_argument("--limit", type=int, default=10000, help="training images (the demo's shards hold 10,000)")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="stop training after this wall time")
    p.add_argument("--eval-n", type=int, default=1000, help="one-step samples per FID")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/onestep_recipe", help="models and grids, one directory per tag")
    p.add_argument("--results", default="docs/results/onestep_recipe.json")
    return p.parse_args(argv)


def train(args: argparse.Namespace, model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """Train for `train_cfg.steps` steps or until the budget runs out; the record of the run."""
    torch.manual_seed(train_cfg.seed)
    images = load_mnist("train", size=model_cfg.image_shape[1], limit=args.limit)[0]
    kind = get_kind(model_cfg.kind)
    model = kind.build(model_cfg)
    deadline = time.perf_counter() + 60 * args.budget_minutes
    batches = TensorBatches({"image": images}, train_cfg.batch_size, train_cfg.seed)

    def until_deadline():
        while time.perf_counter() < deadline:
            for batch in batches:
                if time.perf_counter() >= deadline:
                    return
                yield batch

    wall, cpu = time.perf_counter(), time.process_time()
    history = fit(kind, model, until_deadline(), train_cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kind.finalize(model)
    tail = history[-50:]
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": len(history), "images_seen": len(history) * train_cfg.batch_size,
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
        "images_per_cpu_s": round(len(history) * train_cfg.batch_size / cpu, 1),
        "final_loss_mean_last_50": sum(r["loss"] for r in tail) / len(tail),
        "final_terms_mean_last_50": {k: sum(r[k] for r in tail) / len(tail)
                                     for k in ("latent", "noise", "data", "pred")},
    }
    return model, record


def evaluate(args: argparse.Namespace, model: torch.nn.Module, out: Path) -> dict:
    """FID of one-step samples against the MNIST test split, and the sample grid."""
    _, info = load_or_train_classifier()  # trains (with gradients) and caches it on first use
    x0 = torch.randn((args.eval_n, *model.image_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        samples = torch.cat([model.sample(x0[i:i + 250]) for i in range(0, args.eval_n, 250)]).clamp(0, 1)
    save_grid(samples[:64], out / "samples.png")
    extractor = get_extractor("mnist-classifier")
    real = feature_stats(extractor, load_mnist("test")[0])
    result = fid(real, samples, extractor).to_dict()
    return {"fid": result, "classifier_accuracy": info["accuracy"], "grid": str(out / "samples.png")}


def merge_results(path: Path, tag: str, entry: dict) -> None:
    """Put `entry` under `tag` in the results file, keeping the other tags."""
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    data["runs"][tag] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_cfg = apply_overrides(ModelConfig(), args.set)
    train_cfg = apply_overrides(TrainConfig(log_every=0), args.train_set)
    out = Path(args.out) / args.tag
    model, record = train(args, model_cfg, train_cfg)
    save_model(model, model_cfg, out / "model")
    record.update(evaluate(args, model, out))
    entry = {"command": " ".join(["python -m bench.onestep_recipe", *(argv if argv is not None else sys.argv[1:])]),
             "machine": machine_line(), "model": to_dict(model_cfg), "train": to_dict(train_cfg), **record}
    merge_results(Path(args.results), args.tag, entry)
    print(json.dumps({k: entry[k] for k in ("steps", "images_seen", "train_wall_s", "images_per_cpu_s",
                                            "final_loss_mean_last_50")}, indent=None),
          f"FID {record['fid']['value']:.1f}", record["grid"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
