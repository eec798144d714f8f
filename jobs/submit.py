"""Submit a pipeline stage to a Ray cluster as a Ray job, with the repository as its working dir.

    python -m jobs.submit train -- --set train.steps=500 --set distributed.num_workers=4
    python -m jobs.submit tune --address http://head:8265 -- --set num_samples=8 --set job.train.steps=2000
    python -m jobs.submit evaluate --no-wait -- --model linearizer-onestep --alias challenger
    python -m jobs.submit schedule -- --once
    python -m jobs.submit evaluate --dry-run -- --version 3      # print the command only

Each is exactly

    ray job submit --address ADDRESS --working-dir . --runtime-env-json '{"excludes": [...], "env_vars": {...}}' \\
        -- python -m pipelines.<stage> ARGS...

The runtime environment uploads the repository without `.git`, virtual environments, data,
run outputs and MLflow stores (the upload is capped at 100 MiB), switches telemetry off, and
forwards `MLFLOW_TRACKING_URI` when it is set here (pass `--env KEY=VALUE` for more). Secrets
do not belong in `env_vars`, which the Ray dashboard shows: give them to the cluster's nodes.

The address is `--address`, else `$RAY_ADDRESS`, else the local dashboard
`http://127.0.0.1:8265`; it is the dashboard's HTTP address (the Jobs API), not the GCS port.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

#: stage -> module run with `python -m`.
STAGES = {"train": "pipelines.train", "tune": "pipelines.tune", "evaluate": "pipelines.evaluate",
          "schedule": "jobs.schedule"}
#: never uploaded: gitignore patterns relative to the working dir ("/x" only at its top level,
#: so `/data` leaves the package `linearizer/data` in).
EXCLUDES = [".git", ".venv", "venv", "/data", "/runs", "/outputs", "mlruns", "mlartifacts", "*.db", "/.cache",
            "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "/build", "/dist"]
#: set in every job: telemetry off.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "HF_HUB_DISABLE_TELEMETRY": "1"}
#: forwarded from the submitting shell when set.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def job_address(address: str | None = None) -> str:
    """`address`, else `$RAY_ADDRESS`, else the local dashboard."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def runtime_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime environment of every job: upload excludes and environment variables.

    Args:
        env: extra variables (win over the forwarded ones).

    Example:
        >>> runtime_env({"LINEARIZER_CACHE": "/mnt/cache"})["excludes"][:3]
        ['.git', '.venv', 'venv']
    """
    env_vars = dict(QUIET_ENV)
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    env_vars.update(env or {})
    return {"excludes": list(EXCLUDES), "env_vars": env_vars}


def entrypoint(stage: str, args: list[str]) -> list[str]:
    """`python -m <module of stage> ARGS...` as an argument list.

    Raises:
        ValueError: an unknown stage.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    return ["python", "-m", STAGES[stage], *args]


def ray_cli() -> str:
    """The `ray` command of this environment (next to this Python), else whatever is on PATH."""
    local = Path(sys.executable).parent / "ray"
    return str(local) if local.is_file() else "ray"


def submit_command(stage: str, args: list[str], address: str | None = None, working_dir: str = ".",
                   wait: bool = True, env: dict[str, str] | None = None,
                   submission_id: str | None = None) -> list[str]:
    """The full `ray job submit ...` command line for a stage.

    Example:
        >>> submit_command("evaluate", ["--alias", "challenger"], "http://127.0.0.1:8265")[-5:]
        ['python', '-m', 'pipelines.evaluate', '--alias', 'challenger']
    """
    cmd = [ray_cli(), "job", "submit", "--address", job_address(address), "--working-dir", working_dir,
           "--runtime-env-json", json.dumps(runtime_env(env))]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if not wait:
        cmd.append("--no-wait")
    return cmd + ["--", *entrypoint(stage, args)]


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: runs `ray job submit` and returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, stage_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after '--' go to the stage.")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--address", help=f"Ray dashboard address (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working dir (default: .)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    p.add_argument("--submission-id", help="job id (default: chosen by Ray)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra job environment variable")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args = p.parse_args(ours)
    try:
        cmd = submit_command(args.stage, stage_args, args.address, args.working_dir, not args.no_wait,
                             _env_pairs(args.env), args.submission_id)
    except ValueError as e:
        p.error(str(e))
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
