"""After a sweep: one row per trial, the results table, the rank x depth heat-map, the best model.

Everything here is idempotent, because a resumed sweep summarises again: trial runs already
closed stay closed, files are rewritten, and the best model is registered only when the parent
run does not already record a registration of that same trial.

Example:
    >>> rows = trial_rows(cfg, ExperimentAnalysis(grid.experiment_path).trials)
    >>> write_results_csv(rows, "runs/rank-depth/results.csv")
    >>> plot_heatmap(rows, "val_loss", "runs/rank-depth/heatmap.png")
    >>> best = best_trial(rows, "val_loss", "min")
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..tracking import RankZero, TrackingRun
from .config import SWEEP_RUN_TAG, TRIAL_TAG, trial_job

if TYPE_CHECKING:
    from linearizer.kinds import ModelKind

    from .config import SweepConfig

#: parent-run tag recording "<trial id>:<version>" of the registered best model.
REGISTERED_TAG = "linearizer.registered_trial"
EARLY_STOP_TAG = "linearizer.early_stopped"


@dataclass
class SweepOutcome:
    """What a sweep produced.

    Attributes:
        name: the sweep.
        experiment_path: the Tune experiment (storage path or URI).
        resumed: an earlier run of this sweep was continued.
        max_concurrent_trials: the limit derived for this run (a restored Tune experiment keeps
            the limit it was started with).
        interrupted: the sweep stopped before every trial ended (Ctrl-C, a lost driver): nothing
            was registered; rerun the same name to continue.
        run_id: the MLflow parent run.
        trials: one row per trial (see `TrialRow`), as dicts.
        best: the best completed trial's row (None when no trial completed).
        model_name, model_version, alias: the registry entry of the best model (None if none).
        results_csv, heatmap: local copies of the logged artifacts.
        seconds: wall time.
    """

    name: str
    experiment_path: str
    resumed: bool
    run_id: str
    max_concurrent_trials: int
    interrupted: bool = False
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None
    results_csv: str | None = None
    heatmap: str | None = None
    seconds: float = 0.0


@dataclass
class TrialRow:
    """One trial as the results table shows it.

    Attributes:
        trial_id: Tune's trial id.
        run_id: the trial's MLflow run ("" if it never started).
        rank, depth, lr: the trial's point of the search space.
        status: "completed" (ran every step), "stopped" (by ASHA), "error" or "interrupted".
        step: the last reported step.
        reports: reports Tune received (since the trial last started).
        val_loss, val_fid: the last reported validation metrics (NaN when absent).
        checkpoint: the last reported checkpoint (path or URI; "" when none).
    """

    trial_id: str
    run_id: str
    rank: int
    depth: int
    lr: float
    status: str
    step: int
    reports: int
    val_loss: float
    val_fid: float
    checkpoint: str


def trial_rows(cfg: SweepConfig, trials: list[Any], run_ids: dict[str, str] | None = None) -> list[TrialRow]:
    """Rows of Tune's trials, ordered by (rank, depth, lr, trial id).

    Args:
        cfg: the sweep (a trial is "completed" when it reported `job.train.steps`).
        trials: `ray.tune.ExperimentAnalysis(experiment_path).trials`.
        run_ids: trial id -> MLflow run id.

    Tune marks trials that ended by themselves and trials its scheduler stopped alike
    (TERMINATED); the last reported step tells them apart. Trials still PENDING or RUNNING mean
    the sweep was interrupted ("interrupted": a rerun continues them).
    """
    rows = []
    for trial in trials:
        last = dict(trial.last_result or {})
        step = int(last.get("step", 0))
        if trial.status == "ERROR":
            status = "error"
        elif trial.status != "TERMINATED":
            status = "interrupted"
        else:
            status = "completed" if step == cfg.job.train.steps else "stopped"
        rows.append(TrialRow(
            trial_id=trial.trial_id, run_id=(run_ids or {}).get(trial.trial_id, ""), rank=int(trial.config["rank"]),
            depth=int(trial.config["depth"]), lr=float(trial.config["lr"]), status=status, step=step,
            reports=int(last.get("training_iteration", 0)), val_loss=float(last.get("val_loss", math.nan)),
            val_fid=float(last.get("val_fid", math.nan)), checkpoint=str(last.get("checkpoint_path") or "")))
    return sorted(rows, key=lambda r: (r.rank, r.depth, r.lr, r.trial_id))


def write_results_csv(rows: list[TrialRow], path: str | Path) -> Path:
    """The results table: one line per trial, the columns of `TrialRow`."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(TrialRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def best_trial(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The completed trial with the best final `metric` (stopped trials ran fewer steps and do not
    compete); None when no trial completed with a finite value."""
    sign = 1.0 if mode == "min" else -1.0
    done = [r for r in rows if r.status == "completed" and math.isfinite(getattr(r, metric))]
    return min(done, key=lambda r: sign * getattr(r, metric)) if done else None


def heatmap_cells(rows: list[TrialRow], metric: str, mode: str) -> tuple[list[int], list[int], list[list[float]]]:
    """(ranks, depths, values[depth][rank]): the best final `metric` of each cell over its trials
    (any learning rate, stopped trials included), NaN for cells without a value."""
    ranks = sorted({r.rank for r in rows})
    depths = sorted({r.depth for r in rows})
    pick = min if mode == "min" else max
    values = []
    for depth in depths:
        line = []
        for rank in ranks:
            cell = [getattr(r, metric) for r in rows if (r.rank, r.depth) == (rank, depth)]
            cell = [v for v in cell if math.isfinite(v)]
            line.append(pick(cell) if cell else math.nan)
        values.append(line)
    return ranks, depths, values


def plot_heatmap(rows: list[TrialRow], metric: str, mode: str, path: str | Path) -> Path:
    """A PNG heat-map of `metric` over operator rank (x) and flow depth (y), values written in
    (cells whose best value comes from a trial ASHA stopped say at which step)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    ranks, depths, values = heatmap_cells(rows, metric, mode)
    grid = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(ranks) + 2.5, 0.9 * len(depths) + 1.8))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r" if mode == "min" else "viridis", origin="lower")
    ax.set_xticks(range(len(ranks)), [str(r) for r in ranks])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("operator rank r")
    ax.set_ylabel("flow depth")
    ax.set_title(f"best {metric} per cell ({'lower' if mode == 'min' else 'higher'} is better)")
    for i, depth in enumerate(depths):
        for j, rank in enumerate(ranks):
            value = grid[i, j]
            if math.isnan(value):
                ax.text(j, i, "-", ha="center", va="center")
                continue
            row = next(r for r in rows if (r.rank, r.depth) == (rank, depth) and getattr(r, metric) == value)
            text = f"{value:.4g}" + (f"\nstopped @ {row.step}" if row.status == "stopped" else "")
            red, green, blue, _ = image.cmap(image.norm(value))
            ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # readable on the cell
            ax.text(j, i, text, ha="center", va="center", color=ink, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def close_trial_runs(rows: list[TrialRow], tracking_uri: str) -> None:
    """Give every ended trial's MLflow run the status of how it ended.

    A trial's process may be ended by Tune before it closes its own run: ASHA stops it mid-run
    (KILLED, tagged `linearizer.early_stopped` and the step it reached), or at a rung that falls
    on its last step (FINISHED: it trained every step). An errored trial whose run is still open
    becomes FAILED. Interrupted trials stay open: a rerun continues them.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    final = {"stopped": "KILLED", "completed": "FINISHED", "error": "FAILED"}
    for row in rows:
        if row.status not in final or not row.run_id:
            continue
        status = client.get_run(row.run_id).info.status
        if row.status == "stopped":
            client.set_tag(row.run_id, EARLY_STOP_TAG, "true")
            client.set_tag(row.run_id, "linearizer.stopped_at_step", str(row.step))
            if status != "KILLED":  # RUNNING if its process ended first, FAILED if its workers did
                client.set_terminated(row.run_id, status="KILLED")
        elif status == "RUNNING":
            client.set_terminated(row.run_id, status=final[row.status])


def fail_unless_closed(run: TrackingRun) -> bool:
    """Mark a trial's run FAILED unless the sweep's driver already closed it.

    Returns:
        Whether the run was marked FAILED.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.tracking_uri)
    info = client.get_run(run.run_id)
    if info.info.status != "RUNNING" or EARLY_STOP_TAG in info.data.tags:
        return False
    client.set_terminated(run.run_id, status="FAILED")
    return True


def trial_run_ids(tracking_uri: str, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """Trial id -> MLflow run id of the sweep's trial runs (the latest run per trial)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_RUN_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"], max_results=10000)
    return {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs if TRIAL_TAG in run.data.tags}


def register_best(cfg: SweepConfig, best: TrialRow, parent: TrackingRun, kind: ModelKind, out_dir: Path
                  ) -> tuple[str | None, bool]:
    """Export the best trial's last checkpoint and register it (into the trial's own run).

    Returns:
        (the version, whether it was registered now: False when the parent run already records
        this trial's registration).
    """
    from mlflow.tracking import MlflowClient
    from ray.train import Checkpoint

    from ..registry import register_model
    from ..train.driver import export_model

    client = MlflowClient(parent.tracking_uri)
    done = client.get_run(parent.run_id).data.tags.get(REGISTERED_TAG, "")
    if done.split(":")[0] == best.trial_id:
        return done.split(":", 1)[1], False
    job = trial_job(cfg, best.rank, best.depth, best.lr, best.trial_id)
    with Checkpoint(best.checkpoint).as_directory() as directory:
        _, model_dir = export_model(directory, job.model, kind, job.distributed.zero_stage,
                                    out_dir / "models" / best.trial_id)
    trial_run = TrackingRun(parent.tracking_uri, parent.experiment_id, best.run_id, resumed=True)
    version = register_model(model_dir, job, trial_run, imports=job.imports)
    client.set_model_version_tag(job.mlflow.registered_model, version, "sweep", cfg.name)
    client.set_model_version_tag(job.mlflow.registered_model, version, "trial_id", best.trial_id)
    client.set_tag(parent.run_id, REGISTERED_TAG, f"{best.trial_id}:{version}")
    return version, True


def _jsonable(row: TrialRow) -> dict[str, Any]:
    """The row as a dict, missing metrics as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}


def summarize(cfg: SweepConfig, trials: list[Any], parent: TrackingRun, kind: ModelKind, out_dir: Path,
              outcome: SweepOutcome) -> None:
    """Table, heat-map, parent-run logs and (unless the sweep was interrupted) registration of
    the best model; fills `outcome` in place."""
    rows = trial_rows(cfg, trials, trial_run_ids(parent.tracking_uri, parent.experiment_id, parent.run_id))
    close_trial_runs(rows, parent.tracking_uri)
    try:
        _summarize_rows(cfg, rows, parent, kind, out_dir, outcome)
    finally:
        # Again, once the stopped trials' processes have had the summary's time to end: one may
        # have read its run as open just before the first pass closed it, and written FAILED after.
        close_trial_runs(rows, parent.tracking_uri)


def _summarize_rows(cfg: SweepConfig, rows: list[TrialRow], parent: TrackingRun, kind: ModelKind, out_dir: Path,
                    outcome: SweepOutcome) -> None:
    log = RankZero(0, parent.tracking_uri, parent.run_id)
    outcome.results_csv = str(write_results_csv(rows, out_dir / "results.csv"))
    log.log_artifact(outcome.results_csv)
    if rows:
        outcome.heatmap = str(plot_heatmap(rows, cfg.metric, cfg.mode, out_dir / "heatmap.png"))
        log.log_artifact(outcome.heatmap)
    statuses = ("completed", "stopped", "error", "interrupted")
    log.set_tags({f"linearizer.trials_{k}": sum(r.status == k for r in rows) for k in statuses})
    outcome.trials = [_jsonable(r) for r in rows]
    outcome.interrupted = any(r.status == "interrupted" for r in rows)
    best = best_trial(rows, cfg.metric, cfg.mode)
    if best is None or outcome.interrupted:
        return
    outcome.best = _jsonable(best)
    log.log_metrics({f"best_{cfg.metric}": getattr(best, cfg.metric)}, step=best.step)
    log.set_tags({"linearizer.best_trial_id": best.trial_id, "linearizer.best_run_id": best.run_id,
                  "linearizer.best_rank": best.rank, "linearizer.best_depth": best.depth,
                  "linearizer.best_lr": repr(best.lr)})
    if cfg.job.mlflow.registered_model:
        version, _ = register_best(cfg, best, parent, kind, out_dir)
        outcome.model_name, outcome.model_version, outcome.alias = (cfg.job.mlflow.registered_model, version,
                                                                    cfg.job.mlflow.alias)
