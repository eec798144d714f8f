"""MLflow tracking: where the store is, the run of a job, and the one helper that writes to it.

Every write a training job makes to MLflow (params, metrics, sample grids, artifacts, tags) goes
through `RankZero`. On a worker whose rank is not 0 its methods do nothing, so the training loop
calls them unconditionally and exactly one process writes; the driver uses it with rank 0.

Credentials never reach a log: `redact_uri` masks passwords in URIs (`user:***@host`) and
secret-looking query parameters, and `redact` applies it to a whole config before it is dumped
(both defined in `pipelines.config`, which dumps configs, and re-exported here).

MLflow is imported inside functions: reading or checking a config must not pay its import.

Example:
    >>> run = start_run(cfg)                                # driver: create or resume the run
    >>> log = RankZero(rank, run.tracking_uri, run.run_id)  # any process
    >>> log.log_metrics({"loss": 0.1}, step=10)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# redaction lives with the config it masks (pipelines.config); re-exported for the trackers' callers
from .config import JobConfig, redact, redact_uri  # noqa: F401

if TYPE_CHECKING:
    from torch import Tensor

#: tag that ties an MLflow run to a job name, so a resubmitted job logs into the same run.
RUN_NAME_TAG = "linearizer.run_name"


# --------------------------------------------------------------------------------------------
# The store and the run
# --------------------------------------------------------------------------------------------


def resolve_tracking(cfg: JobConfig) -> tuple[str, str | None]:
    """The tracking URI and the artifact location for new experiments.

    Order: `mlflow.tracking_uri`, then `$MLFLOW_TRACKING_URI`, then a local SQLite store under
    `output_dir` (with artifacts beside it, not in `./mlruns` of whatever directory we run in).
    """
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, cfg.mlflow.artifact_location
    root = Path(cfg.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", cfg.mlflow.artifact_location or (root / "mlartifacts").as_uri()


class UnreachableError(ConnectionError):
    """A service the job needs (MLflow tracking server, Ray cluster) does not answer."""


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast when an MLflow tracking server does not answer `GET /health`, instead of
    MLflow's minutes of retries. Local stores (sqlite, file) are not checked here.

    Raises:
        UnreachableError: naming the (redacted) URI and the reason.
    """
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
            if reply.status != 200:
                raise UnreachableError(f"MLflow tracking server {redact_uri(uri)} answered /health with {reply.status}")
    except (urllib.error.URLError, OSError) as e:
        if isinstance(e, UnreachableError):
            raise
        reason = getattr(e, "reason", e)
        raise UnreachableError(f"MLflow tracking server {redact_uri(uri)} is unreachable ({reason}); start it, or "
                               f"point mlflow.tracking_uri / $MLFLOW_TRACKING_URI at a running one") from e


@dataclass
class TrackingRun:
    """An MLflow run that a job logs into."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    resumed: bool


def start_run(cfg: JobConfig, tags: dict[str, str] | None = None) -> TrackingRun:
    """Create the job's MLflow run, or reopen the latest run of the same job name.

    Args:
        cfg: the job config (experiment, name, store).
        tags: extra tags for a new run.

    Returns:
        The run (status RUNNING).
    """
    from mlflow.tracking import MlflowClient

    uri, artifact_location = resolve_tracking(cfg)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location))
    previous = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{cfg.name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return TrackingRun(uri, experiment_id, run_id, resumed=True)
    run = client.create_run(experiment_id, run_name=cfg.name, tags={RUN_NAME_TAG: cfg.name, **(tags or {})})
    return TrackingRun(uri, experiment_id, run.info.run_id, resumed=False)


def end_run(run: TrackingRun, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    from mlflow.tracking import MlflowClient

    MlflowClient(run.tracking_uri).set_terminated(run.run_id, status=status)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists become JSON strings (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


# --------------------------------------------------------------------------------------------
# The one writer
# --------------------------------------------------------------------------------------------


class RankZero:
    """All MLflow writes of a job; a no-op on every rank but 0 (and without a run).

    Args:
        rank: this process's world rank (the driver passes 0).
        tracking_uri: the MLflow store.
        run_id: the run to write into; None disables tracking.

    Example:
        >>> log = RankZero(ray.train.get_context().get_world_rank(), uri, run_id)
        >>> log.log_metrics({"loss": 0.3, "samples_per_s": 812.0}, step=20)   # rank 0 writes
    """

    def __init__(self, rank: int, tracking_uri: str | None, run_id: str | None):
        self.rank = rank
        self.run_id = run_id
        self.active = rank == 0 and run_id is not None and tracking_uri is not None
        self._client = None
        if self.active:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log a nested mapping as flat params, once: a resumed run keeps its first values and
        records changed ones in the tag `linearizer.changed_params` (MLflow params are immutable)."""
        if not self.active:
            return
        from mlflow.entities import Param

        flat = {k: v[:6000] for k, v in flatten(params).items()}
        logged = self._client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in flat.items() if k not in logged]
        changed = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
        for i in range(0, len(new), 100):  # the store accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=new[i:i + 100])
        if changed:
            self.set_tags({"linearizer.changed_params": json.dumps(changed, sort_keys=True)[:5000]})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at `step` (non-numeric entries are skipped)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if rows:
            self._client.log_batch(self.run_id, metrics=rows)

    def log_images(self, images: Tensor, key: str, step: int) -> None:
        """Log `[N, C, H, W]` images in [0, 1] as one grid, a step of the image series `key`."""
        if not self.active:
            return
        from linearizer.viz import make_grid, to_pil

        self._client.log_image(self.run_id, to_pil(make_grid(images)), key=key, step=step)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Log a JSON artifact (URIs redacted)."""
        if self.active:
            self._client.log_dict(self.run_id, redact(data), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file or directory into the run's artifacts."""
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values as strings)."""
        if not self.active:
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))
