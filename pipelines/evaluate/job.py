"""One evaluation job: registry version -> metrics on Ray -> evaluation run, version tags, report,
promotion decision.

Steps of `evaluate_version`:
1. download the version and read its kind; pick the evaluation (a wrong kind fails here,
   before anything is written);
2. claim the version (`promotion.claim`): an already evaluated version is skipped unless forced;
3. open an evaluation run linked to the version (tags name the model, version and training
   run; metrics are also attached to the version's logged model);
4. compute the metrics in a Ray task (or in this process with `ray.enabled=false`); the task
   receives the model files themselves, so it needs no access to MLflow;
5. record the result on the version and decide promotion (`promotion.record_and_promote`);
6. write the report (Markdown + HTML + PNGs) and log it under the run's `report/` artifacts.

Example:
    >>> outcome = evaluate(load_eval_config(None, ["mlflow.alias=challenger"]))
    >>> outcome.status, outcome.decision.action
    ('evaluated', 'promoted')
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linearizer.config import from_dict, to_dict
from linearizer.io import load_model, read_model_config
from pipelines.runtime import ray_session
from pipelines.tracking import flatten, redact

from .common import (TAG, EvalResult, check_reachable, choose_evaluation, client_for, download_model, resolve_tracking,
                     resolve_version, set_version_tags)
from .config import EVALUATION_KINDS, EvalConfig
from .promotion import Decision, claim, evaluation_state, mark_failed, needs_evaluation, record_and_promote
from .report import write_report

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

#: evaluation name -> module with `run(model, model_cfg, cfg) -> EvalResult`: the evaluation a kind
#: declares in its `KindSpec` lives in `pipelines.evaluate.<name>`.
EVALUATIONS = {name: f"{__package__}.{name}" for name in EVALUATION_KINDS}


@dataclass
class EvalOutcome:
    """What one call did to one registered version.

    Attributes:
        model, version: the registry entry.
        status: "evaluated", or "skipped" (already evaluated, or being evaluated elsewhere).
        state: the version's evaluation state found when claiming ("new", "done", "running", ...).
        evaluation: the evaluation that ran.
        run_id: the evaluation run.
        passed, metrics: the result.
        decision: the promotion decision.
        report_dir: local folder of the report.
    """

    model: str
    version: str
    status: str
    state: str
    evaluation: str | None = None
    run_id: str | None = None
    passed: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    decision: Decision | None = None
    report_dir: Path | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what the command line prints)."""
        decision = None if self.decision is None else {"action": self.decision.action, "reason": self.decision.reason,
                                                       "champion": self.decision.champion}
        return {"model": self.model, "version": self.version, "status": self.status, "state": self.state,
                "evaluation": self.evaluation, "run_id": self.run_id, "passed": self.passed, "metrics": self.metrics,
                "decision": decision, "report_dir": None if self.report_dir is None else str(self.report_dir)}


def compute(evaluation: str, files: dict[str, bytes], cfg_data: dict[str, Any]) -> EvalResult:
    """Rebuild the model from its saved files and run `evaluation` on it.

    Runs unchanged in this process or as a Ray task (arguments are plain bytes and dicts).
    """
    cfg = from_dict(EvalConfig, cfg_data)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        model, model_cfg = load_model(tmp)
    return importlib.import_module(EVALUATIONS[evaluation]).run(model, model_cfg, cfg)


def _compute(evaluation: str, files: dict[str, bytes], cfg: EvalConfig) -> EvalResult:
    if not cfg.ray.enabled:
        return compute(evaluation, files, to_dict(cfg))
    with ray_session(cfg.ray.address):
        import ray

        task = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(compute)
        return ray.get(task.remote(evaluation, files, to_dict(cfg)))


def _start_run(client: MlflowClient, cfg: EvalConfig, artifact_location: str | None, mv: ModelVersion,
               evaluation: str, kind: str) -> str:
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location))
    run = client.create_run(experiment_id, run_name=f"eval-{mv.name}-v{mv.version}", tags={
        "linearizer.model_name": mv.name, "linearizer.model_version": str(mv.version),
        "linearizer.evaluation": evaluation, "linearizer.kind": kind, "linearizer.source_run_id": mv.run_id or "",
    })
    return run.info.run_id


def _log_result(client: MlflowClient, run_id: str, result: EvalResult, cfg: EvalConfig, mv: ModelVersion) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    model_id = getattr(mv, "model_id", None)  # MLflow 3: the metrics also show on the logged model
    metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in result.metrics.items()]
    settings = {"evaluation": result.evaluation, "seed": cfg.seed, "fid": to_dict(cfg.fid),
                result.evaluation: to_dict(getattr(cfg, result.evaluation)), "info": result.info}
    params = [Param(k, v[:6000]) for k, v in flatten(redact(settings)).items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_tag(run_id, "linearizer.passed", str(result.passed).lower())


def evaluate_version(client: MlflowClient, uri: str, artifact_location: str | None, mv: ModelVersion,
                     cfg: EvalConfig) -> EvalOutcome:
    """Evaluate one registered version (see the module docstring).

    Returns:
        The outcome; "skipped" when the version needs no evaluation and `cfg.force` is False.

    Raises:
        EvaluationError: wrong kind, malformed model, unusable data for this model.
        ConfigError: settings that do not fit the chosen evaluation (`EvalConfig.check_for`).
        Exception: whatever the computation raised (the version is then tagged `eval.status=failed`).
    """
    name, version = mv.name, str(mv.version)
    state = evaluation_state(mv.tags or {}, cfg.promotion)
    if not cfg.force and not needs_evaluation(mv.tags or {}, cfg.promotion):
        return EvalOutcome(name, version, "skipped", state)  # fast path; `claim` decides under the lock
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_model(client, uri, mv, tmp)
        kind = read_model_config(model_dir).kind
        evaluation = choose_evaluation(cfg.evaluation, kind, f"{name} v{version}")
        cfg.check_for(evaluation)
        files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}

    token = uuid.uuid4().hex
    claimed, state = claim(client, name, version, cfg.promotion, token, force=cfg.force)
    if not claimed:
        return EvalOutcome(name, version, "skipped", state)
    run_id = _start_run(client, cfg, artifact_location, mv, evaluation, kind)
    decision = None
    try:
        result = _compute(evaluation, files, cfg)
        _log_result(client, run_id, result, cfg, mv)
        decision = record_and_promote(client, name, version, result, run_id, cfg.promotion, token, cfg.force)
        client.set_tag(run_id, "linearizer.decision", decision.action)
        client.set_tag(run_id, "linearizer.forced", str(decision.forced).lower())
        client.set_tag(run_id, "linearizer.decision_reason", decision.reason[:4000])
        report_dir = cfg.report_root / f"{name}-v{version}"
        shutil.rmtree(report_dir, ignore_errors=True)  # a forced re-evaluation replaces the old report
        header = {"model": f"{name} v{version}", "kind": kind, "training run": mv.run_id or "-",
                  "evaluation run": run_id, "evaluated": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        write_report(result, header, decision, report_dir)
        client.log_artifacts(run_id, str(report_dir), "report")
    except BaseException as e:
        if decision is None:
            mark_failed(client, name, version, cfg.promotion, token, f"{type(e).__name__}: {e}")
        else:  # the decision stands; only the report is missing
            set_version_tags(client, name, version, {f"{TAG}report_error": f"{type(e).__name__}: {e}"[:4000]})
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return EvalOutcome(name, version, "evaluated", state, evaluation, run_id, result.passed, dict(result.metrics),
                       decision, report_dir.resolve())


def evaluate(cfg: EvalConfig) -> EvalOutcome:
    """Resolve `mlflow.registered_model` at `mlflow.version` (else `mlflow.alias`) and evaluate it.

    Raises:
        EvaluationError: unreachable store, missing model / alias / version, wrong kind.
    """
    uri, artifact_location = resolve_tracking(cfg)
    check_reachable(uri, cfg.mlflow.request_timeout_s)
    client = client_for(uri)
    mv = resolve_version(client, cfg.mlflow.registered_model, cfg.mlflow.alias, cfg.mlflow.version)
    return evaluate_version(client, uri, artifact_location, mv, cfg)
