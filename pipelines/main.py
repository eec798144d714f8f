"""The main job: MNIST shards -> distributed one-step Linearizer -> registry -> evaluation -> report.

    python -m pipelines.main                      # ~10 minutes on 2 CPU cores
    python -m pipelines.main --full               # the reference configuration (hours; use a cluster)
    python -m pipelines.main --set train.steps=50 --set name=smoke

Runs on embedded defaults (`EMBEDDED`; `--full` applies `FULL` on top, `--set` comes last):

1. MNIST 32x32 as WebDataset shards in `data/shards` (written once, verified on later runs);
2. a small one-step Linearizer trained by Ray Train on 2 CPU workers with DeepSpeed ZeRO-1,
   tracked in MLflow (`runs/mlflow.db`), checkpointed and resumable under the same name;
3. registered as a new version of `linearizer-onestep` with the alias `challenger`;
4. evaluated from the registry by `pipelines.evaluate` like any downstream job: one-step vs
   100-step agreement (PSNR, dB), FID with its extractor named, samples/s, a sample grid, an
   evaluation run linked to the version, and the promotion decision (`champion`);
5. `runs/<name>/report.md` says what happened and where to look.

With `RAY_ADDRESS` / `MLFLOW_TRACKING_URI` set, the same job runs on a cluster (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .config import JobConfig, config_hash, load_job_config
from .evaluate import EvalOutcome, load_eval_config
from .evaluate import evaluate as evaluate_registered
from .runtime import prepare_environment, run_cli
from .tracking import RankZero, redact_uri, resolve_tracking
from .train.driver import TrainOutcome, train

#: the default job: every stage of the pipeline in ~10 minutes on 2 idle cores. The recipe is the
#: fast one of docs/onestep.md ("Training fast on CPU"): bfloat16 conditioners, rank 8 (rank 4 drew
#: blobs), twice the lr with warmup and cosine decay, EMA weights, MSE + SSIM as the perceptual
#: term and a two-level (multi-scale) g (docs/onestep.md "Design options": at equal CPU time SSIM
#: turns blurs into legible digits, and the second level lowers the FID further). Its steps cost
#: 1.6x in this 2-worker job (1.3x on one thread), so 800 of them: 9.3 minutes of job and FID 140.9,
#: against 7.3 minutes and 174.6 for 1,000 single-level steps (docs/results/onestep_demo.json).
EMBEDDED: dict[str, Any] = {
    "name": "onestep-mnist",
    "output_dir": "runs",
    "data": {"shards": "data/shards", "source": "mnist", "split": "train", "limit": 10000,
             "heldout_split": "test", "heldout_limit": 1000, "maxcount": 1000},
    "model": {"kind": "onestep", "image_shape": [1, 32, 32],
              "flow": {"depth": 2, "hidden": 16, "conditioner_precision": "bfloat16", "scales": 2},
              "operator": {"rank": 8},
              "sampler": {"method": "rk4", "steps": 100}, "loss": {"perceptual": "ssim"}},
    "train": {"steps": 800, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 50,
              "ema_decay": 0.995, "grad_clip": 1.0, "log_every": 10, "sample_every": 250,
              "checkpoint_every": 500},
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


def evaluate(cfg: JobConfig, outcome: TrainOutcome, overrides: list[str] | None = None) -> EvalOutcome:
    """The registry's one-step sampling evaluation (`pipelines.evaluate`) of the version just trained.

    It loads `models:/<name>/<version>` like any downstream job, measures one-step vs multi-step
    agreement, FID (extractor named) and samples/s, logs an evaluation run linked to the version,
    writes a report and decides on promotion to `champion`.
    """
    uri, artifacts = resolve_tracking(cfg)
    settings = [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={json.dumps(artifacts)}",
                f"mlflow.registered_model={outcome.model_name}", f"mlflow.version={outcome.model_version}",
                f"output_dir={cfg.output_dir}", f"seed={cfg.train.seed}",
                f"sampling.multistep_steps={cfg.model.sampler.steps}"]
    return evaluate_registered(load_eval_config(None, settings + list(overrides or [])))


def _versus_champion(cfg: JobConfig, evaluation: EvalOutcome) -> list[str]:
    """Report lines comparing the new version with the champion it was judged against."""
    from .evaluate.common import client_for, version_tags
    from .evaluate.promotion import METRIC

    decision = evaluation.decision
    previous = decision.replaced if decision.action == "promoted" else decision.champion
    if previous is None or str(previous) == str(evaluation.version):
        return ["- previous champion: none"]
    uri, _ = resolve_tracking(cfg)
    tags = version_tags(client_for(uri), evaluation.model, previous)
    theirs = {k[len(METRIC):]: float(v) for k, v in tags.items() if k.startswith(METRIC)}
    shown = [f"{k} {evaluation.metrics[k]:.4g} (v{evaluation.version}) vs {theirs[k]:.4g} (v{previous})"
             for k in ("fid", "agreement_db") if k in theirs and k in evaluation.metrics]
    return [f"- previous champion: v{previous}" + (f"; {'; '.join(shown)}" if shown else "")]


def write_report(cfg: JobConfig, outcome: TrainOutcome, evaluation: EvalOutcome, seconds: float) -> Path:
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
        f"- final loss {m.get('loss', float('nan')):.4g}; "
        f"throughput {m.get('samples_per_s', float('nan')):.1f} samples/s",
        f"- checkpoint: `{outcome.checkpoint}`",
        f"- exported model: `{outcome.model_dir}` (safetensors + JSON)",
    ]
    if outcome.model_version:
        lines.append(f"- registry: `models:/{outcome.model_name}@{outcome.alias}` = version {outcome.model_version}")
    lines += ["", "## Evaluation (`pipelines.evaluate`, from the registry)", ""]
    m = evaluation.metrics
    if "agreement_db" in m:
        lines.append(f"- one-step vs multi-step agreement: {m['agreement_db']:.2f} dB PSNR "
                     f"(same noise, pooled MSE)")
    if "fid" in m:
        lines.append(f"- FID {m['fid']:.3f} (extractor and sample counts in the evaluation report)")
    if "samples_per_s" in m:
        lines.append(f"- one-step sampling: {m['samples_per_s']:.1f} samples/s ({m.get('speedup', float('nan')):.1f}x "
                     f"the multi-step sampler)")
    if evaluation.decision is not None:
        lines.append(f"- promotion: {evaluation.decision.action} ({evaluation.decision.reason})")
        lines += _versus_champion(cfg, evaluation)
    lines.append(f"- report: `{evaluation.report_dir}` (evaluation run `{evaluation.run_id}`)")
    grid = evaluation.report_dir / "images" / "samples.png" if evaluation.report_dir else None
    if grid is not None and grid.is_file():
        shutil.copyfile(grid, outcome.run_dir / "samples.png")
        lines += ["", "## One-step samples (from the registered model)", "", "![samples](samples.png)"]
    lines += ["", "## Where to look", "",
              f"- run directory: `{outcome.run_dir}`",
              f"- MLflow: `mlflow ui --backend-store-uri {redact_uri(uri)}` (experiment `{cfg.mlflow.experiment}`, "
              f"run `{outcome.run_id}`)",
              f"- job wall time: {seconds / 60:.1f} min", ""]
    path = outcome.run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(overrides: list[str] | None = None, full: bool = False,
        eval_overrides: list[str] | None = None) -> dict[str, Any]:
    """The whole main job; returns a summary (also printed by `main`)."""
    started = time.perf_counter()
    cfg = load_job_config(base=_merge(EMBEDDED, FULL) if full else EMBEDDED, overrides=overrides)
    outcome = train(cfg)
    evaluation = evaluate(cfg, outcome, eval_overrides)
    seconds = time.perf_counter() - started
    report = write_report(cfg, outcome, evaluation, seconds)
    uri, _ = resolve_tracking(cfg)
    log = RankZero(0, uri, outcome.run_id)
    log.log_metrics({f"eval_{k}": v for k, v in evaluation.metrics.items()}, step=int(outcome.metrics["step"]))
    log.log_artifact(report)
    return {"run_dir": str(outcome.run_dir), "report": str(report),
            "model": f"models:/{outcome.model_name}@{outcome.alias}", "version": outcome.model_version,
            "evaluation": evaluation.summary(), "minutes": round(seconds / 60, 2),
            "mlflow_ui": f"mlflow ui --backend-store-uri {redact_uri(uri)}"}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.main", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the reference configuration instead of the quick one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--eval-set", dest="eval_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluation setting, e.g. --eval-set sampling.n=256 (repeatable)")
    args = parser.parse_args(argv)
    prepare_environment()
    summary, status = run_cli(lambda: run(args.overrides, args.full, args.eval_overrides))
    if status:
        return status
    print(json.dumps(summary, indent=2))
    print(f"\nreport: {summary['report']}\nrun directory: {summary['run_dir']}\nMLflow: {summary['mlflow_ui']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
