"""`python -m pipelines.evaluate`: evaluate one registered version and decide its promotion.

    python -m pipelines.evaluate --model linearizer-onestep --alias challenger
    python -m pipelines.evaluate --model linearizer-onestep --version 3 --force --set sampling.max_fid=40

Exit status: 0 when the version was evaluated (whatever the verdict) or needed no evaluation,
1 when it failed a quality floor and `--strict` is given, 2 for a bad config, 3 when the evaluation
could not run (unreachable store, missing model / alias / version, wrong kind).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from linearizer.config import ConfigError
from pipelines.runtime import prepare_environment

from .common import EvaluationError
from .config import load_eval_config
from .job import evaluate


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The shortcut flags as `--set` overrides (shortcuts first, so explicit `--set`s win)."""
    out = []
    if args.model:
        out.append(f"mlflow.registered_model={args.model}")
    if args.alias:
        out += [f"mlflow.alias={args.alias}", "mlflow.version=null"]
    if args.version is not None:
        out.append(f"mlflow.version={args.version}")
    if args.tracking_uri:
        out.append(f"mlflow.tracking_uri={args.tracking_uri}")
    if args.evaluation:
        out.append(f"evaluation={args.evaluation}")
    if args.force:
        out.append("force=true")
    if args.local:
        out.append("ray.enabled=false")
    return out + list(args.overrides)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML or JSON evaluation config (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sampling.max_fid=40 (repeatable)")
    p.add_argument("--model", help="registered model name (mlflow.registered_model)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--alias", help="evaluate the version this alias points to (mlflow.alias)")
    which.add_argument("--version", type=int, help="evaluate this version (mlflow.version)")
    p.add_argument("--evaluation", choices=["auto", "sampling", "projection", "style"], help="default: auto (by kind)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.add_argument("--force", action="store_true",
                   help="evaluate again even if the version was evaluated, and promote past failed quality floors "
                        "(recorded on the version and the run)")
    p.add_argument("--local", action="store_true", help="compute in this process instead of a Ray task")
    p.add_argument("--strict", action="store_true", help="exit 1 when the version fails a quality floor")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        cfg = load_eval_config(args.config, overrides_from_args(args))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    prepare_environment(cfg.ray.address)  # before Ray or MLflow are imported: telemetry off, loopback-only Ray
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # job logs, not a terminal
    try:
        outcome = evaluate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (EvaluationError, ConnectionError) as e:
        print(f"evaluation error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(outcome.summary(), indent=2))
    return 1 if args.strict and outcome.passed is False else 0


if __name__ == "__main__":
    sys.exit(main())
