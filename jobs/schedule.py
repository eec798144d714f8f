"""Scheduled evaluation: find registered versions not evaluated yet and evaluate them.

    python -m jobs.schedule --once                          # cron / Kubernetes CronJob
    python -m jobs.schedule --watch --interval 300          # a long-running watcher
    python -m jobs.schedule --once --model linearizer-onestep --model linearizer-style

A version needs evaluation when it carries no evaluation state, when its evaluation was
abandoned (claimed longer than `promotion.claim_ttl_s` ago), or when it failed fewer than
`promotion.max_attempts` times (`pipelines.evaluate.promotion.needs_evaluation`). Each is
evaluated with `evaluate_version`, which claims it under the registry lock first, so two
schedulers running at once never evaluate one version twice. One Ray session serves the whole
round. A failing version is reported and the round goes on.

Exit status of `--once`: 0 when every pending version was evaluated (pass or fail), 1 when
some evaluation raised, 2 for a bad config, 3 when the store cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from linearizer.config import ConfigError
from pipelines.evaluate.common import EvaluationError, check_reachable, client_for, resolve_tracking
from pipelines.evaluate.config import EvalConfig, load_eval_config
from pipelines.evaluate.job import EvalOutcome, evaluate_version
from pipelines.evaluate.promotion import needs_evaluation
from pipelines.runtime import prepare_environment, ray_session

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

LOCK_SUFFIX = ".evaluation-lock"


@dataclass
class Round:
    """What one scheduling round did."""

    pending: list[str] = field(default_factory=list)
    outcomes: list[EvalOutcome] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"pending": self.pending, "outcomes": [o.summary() for o in self.outcomes], "errors": self.errors}


def watched_models(client: MlflowClient, names: list[str], every: bool) -> list[str]:
    """The registered models to scan: `names`, or with `every` all of them (locks excluded)."""
    if not every:
        return names
    found = []
    token = None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        found += [m.name for m in page if not m.name.endswith(LOCK_SUFFIX)]
        token = page.token
        if not token:
            return sorted(found)


def pending_versions(client: MlflowClient, names: list[str], cfg: EvalConfig) -> list[ModelVersion]:
    """Versions of `names` that need an evaluation, oldest first per model."""
    pending = []
    for name in names:
        versions = client.search_model_versions(f"name='{name}'")
        pending += sorted((mv for mv in versions if needs_evaluation(mv.tags or {}, cfg.promotion)),
                          key=lambda mv: int(mv.version))
    return pending


def run_once(cfg: EvalConfig, names: list[str] | None = None, every: bool = False,
             stop: threading.Event | None = None) -> Round:
    """One round: evaluate every pending version of the watched models.

    Args:
        cfg: the evaluation config (its `mlflow.alias` / `version` are ignored: the round picks
            versions itself).
        names: registered models to watch (default: `mlflow.registered_model`).
        every: watch every registered model.
        stop: when set, the round ends after the version being evaluated.

    Returns:
        The round's pending versions, outcomes and errors.

    Raises:
        EvaluationError: the store cannot be reached.
    """
    uri, artifact_location = resolve_tracking(cfg)
    check_reachable(uri, cfg.mlflow.request_timeout_s)
    client = client_for(uri)
    pending = pending_versions(client, watched_models(client, names or [cfg.mlflow.registered_model], every), cfg)
    result = Round(pending=[f"{mv.name}/{mv.version}" for mv in pending])
    if not pending:
        return result
    # one Ray for the whole round
    session = ray_session(cfg.ray.address) if cfg.ray.enabled else contextlib.nullcontext()
    with session:
        for mv in pending:
            if stop is not None and stop.is_set():
                break
            try:
                result.outcomes.append(evaluate_version(client, uri, artifact_location, mv, cfg))
            except Exception as e:  # noqa: BLE001 - one broken version must not stop the round
                result.errors[f"{mv.name}/{mv.version}"] = f"{type(e).__name__}: {e}"
    return result


def watch(cfg: EvalConfig, interval_s: float, names: list[str] | None = None, every: bool = False,
          stop: threading.Event | None = None, rounds: int | None = None) -> None:
    """Run rounds every `interval_s` seconds until `stop` is set (SIGTERM / SIGINT set it from
    the command line) or `rounds` rounds ran. An unreachable store is reported, not fatal."""
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            report = run_once(cfg, names, every, stop).summary()
        except Exception as e:  # noqa: BLE001 - the watcher outlives a store that is briefly down
            report = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **report}), flush=True)
        done += 1
        if rounds is not None and done >= rounds:
            return
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m jobs.schedule", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="one round, then exit (cron)")
    mode.add_argument("--watch", action="store_true", help="a round every --interval seconds until stopped")
    p.add_argument("--interval", type=float, default=300.0, help="seconds between rounds of --watch (default 300)")
    p.add_argument("--model", dest="models", action="append", default=[],
                   help="registered model to watch (repeatable; default: mlflow.registered_model)")
    p.add_argument("--all", dest="every", action="store_true", help="watch every registered model")
    p.add_argument("--config", help="YAML or JSON evaluation config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an evaluation config value (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.add_argument("--local", action="store_true", help="compute in this process instead of Ray tasks")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error(f"--interval must be > 0, got {args.interval}")
    overrides = ([f"mlflow.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []) + \
                (["ray.enabled=false"] if args.local else []) + list(args.overrides)
    try:
        cfg = load_eval_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    prepare_environment(cfg.ray.address)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # job logs, not a terminal
    if args.watch:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the version under evaluation, then exit
        watch(cfg, args.interval, args.models, args.every, stop)
        return 0
    try:
        result = run_once(cfg, args.models, args.every)
    except EvaluationError as e:
        print(f"evaluation error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result.summary(), indent=2))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
