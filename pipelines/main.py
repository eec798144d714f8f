"""The main job: MNIST shards -> distributed one-step Linearizer -> registry -> evaluation -> report.

    python -m pipelines.main                      # ~10 minutes on 2 CPU cores
    python -m pipelines.main --full               # the reference configuration (hours; use a cluster)
    python -m pipelines.main --set train.steps=50 --set name=smoke

Runs on embedded defaults (`EMBEDDED`; `--full` applies `FULL` on top, `--set` comes last):

1. MNIST 32x32 as WebDataset shards in `data/shards` (written once, verified on later runs);
2. a small one-step Linearizer trained by Ray Train on 2 CPU workers with DeepSpeed ZeRO-1,
   tracked in MLflow (`runs/mlflow.db`), checkpointed and resumable under the same name;
3. registered as a new version of `linearizer-onestep` with the alias `challenger`;
4. evaluated in this process: agreement of one-step and 100-step samples from the same noise
   (PSNR, dB), a sample grid, and FID against held-out images when the metrics package is there;
5. `runs/<name>/report.md` says what happened and where to look.

With `RAY_ADDRESS` / `MLFLOW_TRACKING_URI` set, the same job runs on a cluster (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from linearizer.config import ConfigError
from linearizer.io import load_model
from linearizer.kinds import get_kind

from .config import JobConfig, config_hash, load_job_config
from .runtime import prepare_environment
from .tracking import RankZero, redact_uri, resolve_tracking
from .train import TrainOutcome, train

#: the default job: every stage of the pipeline in ~10 minutes on 2 idle cores. At this budget the
#: samples are digit-shaped blurs; digits need the `--full` budget (a cluster or a GPU).
EMBEDDED: dict[str, Any] = {
    "name": "onestep-mnist",
    "output_dir": "runs",
    "data": {"shards": "data/shards", "source": "mnist", "split": "train", "limit": 10000,
             "heldout_split": "test", "heldout_limit": 1000, "maxcount": 1000},
    "model": {"kind": "onestep", "image_shape": [1, 32, 32],
              "flow": {"depth": 2, "hidden": 16}, "operator": {"rank": 4},
              "sampler": {"method": "rk4", "steps": 100}},
    "train": {"steps": 600, "batch_size": 64, "lr": 1e-3, "grad_clip": 1.0, "log_every": 10,
              "sample_every": 100, "checkpoint_every": 200},
    "distributed": {"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 1, "max_failures": 1},
    "mlflow": {"experiment": "linearizer", "registered_model": "linearizer-onestep", "alias": "challenger"},
}
#: `--full`: the reference configuration (method.md §2): 4 blocks, rank 8, batch 256, ~200 epochs.
FULL: dict[str, Any] = {
    "name": "onestep-mnist-full",
    "data": {"limit": None, "heldout_limit": 10000, "shards": "data/shards-full"},
    "model": {"flow": {"depth": 4, "hidden": 32}, "operator": {"rank": 8}},
    "train": {"steps": 39000, "batch_size": 256, "lr": 1e-4, "log_every": 50, "sample_every": 1000,
              "checkpoint_every": 1000},
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def heldout_images(cfg: JobConfig, n: int) -> Tensor | None:
    """Up to `n` images of the held-out shard set, in shard order (None without one)."""
    from .data import load_manifest, make_webdataset, shard_urls

    prefix = cfg.data.heldout_prefix
    if prefix is None:
        return None
    urls = shard_urls(cfg.data.shards, prefix)
    schema = load_manifest(cfg.data.shards, prefix).schema
    images, count = [], 0
    for batch in make_webdataset(urls, batch_size=min(n, 250), shuffle=False, schema=schema):
        images.append(batch["image"])
        count += batch["image"].shape[0]
        if count >= n:
            break
    return torch.cat(images)[:n] if images else None


def evaluate(cfg: JobConfig, outcome: TrainOutcome, n_agree: int = 64, n_fid: int = 1000) -> dict[str, Any]:
    """One-step sampling evaluation of the exported model, in this process.

    Returns:
        `agreement_db` (one-step vs `cfg.model.sampler.steps`-step samples from the same noise),
        `grid` (PNG path), and `fid` / `fid_extractor` / `fid_n` when FID could be computed
        (or `fid_skipped` with the reason).
    """
    from linearizer.viz import save_grid

    model, model_cfg = load_model(outcome.model_dir)
    kind = get_kind(model_cfg.kind)
    g = torch.Generator().manual_seed(cfg.train.seed + 1)
    x0 = torch.randn(n_agree, *model_cfg.image_shape, generator=g)
    results: dict[str, Any] = {}
    one = kind.predict(model, x0, {"mode": "sample"})
    results["grid"] = str(save_grid(one, outcome.run_dir / "samples.png", nrow=8))
    if "sample_multistep" in kind.modes:
        from linearizer.metrics import agreement_db

        many = kind.predict(model, x0, {"mode": "sample_multistep", "steps": model_cfg.sampler.steps})
        results["agreement_db"] = agreement_db(one, many)
        results["agreement_steps"] = model_cfg.sampler.steps
    try:
        from linearizer.metrics import fid, get_extractor
    except ImportError as e:
        results["fid_skipped"] = f"linearizer.metrics unavailable: {e}"
        return results
    real = heldout_images(cfg, n_fid)
    if real is None:
        results["fid_skipped"] = "no held-out split configured"
        return results
    fake = torch.cat([kind.predict(model, torch.randn(min(250, n_fid - i), *model_cfg.image_shape, generator=g),
                                   {"mode": "sample"}) for i in range(0, real.shape[0], 250)])
    try:
        result = fid(real, fake[:real.shape[0]], get_extractor("auto"))
    except (ValueError, RuntimeError) as e:  # e.g. a feature network that does not fit the image size
        results["fid_skipped"] = f"{type(e).__name__}: {e}"
        return results
    results.update(fid=result.value, fid_extractor=result.extractor, fid_n=result.n_fake, fid_n_real=result.n_real)
    return results


def write_report(cfg: JobConfig, outcome: TrainOutcome, evaluation: dict[str, Any], seconds: float) -> Path:
    """`<run_dir>/report.md`: the run in one page."""
    uri, _ = resolve_tracking(cfg)
    m = outcome.metrics
    lines = [
        f"# {cfg.name}: one-step Linearizer on {cfg.data.source.upper()}",
        "",
        f"- config: `config.json` (hash `{config_hash(cfg)}`); model {cfg.model.kind}, image "
        f"{'x'.join(map(str, cfg.model.image_shape))}, flow depth {cfg.model.flow.depth}, hidden "
        f"{cfg.model.flow.hidden}, rank {cfg.model.operator.rank}",
        f"- training: {m.get('step')} steps of batch {cfg.train.batch_size} on {m.get('world_size')} Ray Train "
        f"workers ({m.get('nodes')} node(s)), DeepSpeed ZeRO-{cfg.distributed.zero_stage}, "
        f"{cfg.distributed.precision}; resumed from step {m.get('start_step')}",
        f"- final loss {m.get('loss', float('nan')):.4g}; throughput {m.get('samples_per_s', float('nan')):.1f} samples/s",
        f"- checkpoint: `{outcome.checkpoint}`",
        f"- exported model: `{outcome.model_dir}` (safetensors + JSON)",
    ]
    if outcome.model_version:
        lines.append(f"- registry: `models:/{outcome.model_name}@{outcome.alias}` = version {outcome.model_version}")
    lines += ["", "## Evaluation (in process)", ""]
    if "agreement_db" in evaluation:
        lines.append(f"- one-step vs {evaluation['agreement_steps']}-step agreement: "
                     f"{evaluation['agreement_db']:.2f} dB PSNR (same noise, pooled MSE)")
    if "fid" in evaluation:
        lines.append(f"- FID {evaluation['fid']:.3f} [{evaluation['fid_extractor']}, {evaluation['fid_n']} samples vs "
                     f"{evaluation['fid_n_real']} held-out images]; values from different extractors do not compare")
    else:
        lines.append(f"- FID skipped: {evaluation.get('fid_skipped')}")
    lines += ["", "![one-step samples](samples.png)", "", "## Where to look", "",
              f"- run directory: `{outcome.run_dir}`",
              f"- MLflow: `mlflow ui --backend-store-uri {redact_uri(uri)}` (experiment `{cfg.mlflow.experiment}`, "
              f"run `{outcome.run_id}`)",
              f"- job wall time: {seconds / 60:.1f} min", ""]
    path = outcome.run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(overrides: list[str] | None = None, full: bool = False) -> dict[str, Any]:
    """The whole main job; returns a summary (also printed by `main`)."""
    started = time.perf_counter()
    cfg = load_job_config(base=_merge(EMBEDDED, FULL) if full else EMBEDDED, overrides=overrides)
    outcome = train(cfg)
    evaluation = evaluate(cfg, outcome)
    RankZero(0, resolve_tracking(cfg)[0], outcome.run_id).log_metrics(
        {f"eval_{k}": v for k, v in evaluation.items() if isinstance(v, float)}, step=int(outcome.metrics["step"]))
    seconds = time.perf_counter() - started
    report = write_report(cfg, outcome, evaluation, seconds)
    uri, _ = resolve_tracking(cfg)
    return {"run_dir": str(outcome.run_dir), "report": str(report), "model": f"models:/{outcome.model_name}@{outcome.alias}",
            "version": outcome.model_version, "evaluation": evaluation, "minutes": round(seconds / 60, 2),
            "mlflow_ui": f"mlflow ui --backend-store-uri {redact_uri(uri)}"}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.main", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the reference configuration instead of the quick one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    args = parser.parse_args(argv)
    prepare_environment()
    try:
        summary = run(args.overrides, args.full)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"\nreport: {summary['report']}\nrun directory: {summary['run_dir']}\nMLflow: {summary['mlflow_ui']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
