"""Where the pipeline's Ray runs, and the environment every worker inherits.

Two ways to run:

- embedded (default): no `RAY_ADDRESS`, so the driver starts a local Ray bound to loopback
  only (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which must be set before Ray is first imported:
  call `prepare_environment` at the top of an entry point) and shuts it down when done;
- cluster: `RAY_ADDRESS=<head>:<port>` (or `address=`) connects to a running cluster; only the
  driver's connection is closed at the end.

Workers get telemetry switched off and the variables listed in `FORWARDED` (when the driver has
them), through the Ray Train worker runtime environment.

Example:
    >>> prepare_environment()
    >>> with ray_session() as where:
    ...     TorchTrainer(...).fit()
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from linearizer.config import ConfigError

from .config import REPO_ROOT

#: telemetry and usage reporting off, from the first call of every process.
QUIET = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
#: driver variables a worker needs to behave the same (network interfaces, JIT cache, paths).
FORWARDED = (
    "DS_ACCELERATOR", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TORCH_EXTENSIONS_DIR", "PYTHONPATH",
    "NO_PROXY", "no_proxy", "HF_HOME", "TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_TOKEN", "LINEARIZER_CACHE",
    "OMP_NUM_THREADS",
)
#: DeepSpeed JIT-builds a communication op once per extensions directory; keep it stable.
DEFAULT_EXTENSIONS_DIR = REPO_ROOT / ".cache" / "torch_extensions"
#: Loggers of Ray components that poll the State API. The State API is served by the dashboard,
#: which the embedded Ray does not start (fewer processes and ports), so each poll fails and
#: Ray Train's placement-group cleaner would log a warning every second of every run.
STATE_API_POLLERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: `address`, else `$RAY_ADDRESS`, else None (embedded)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def prepare_environment(address: str | None = None, use_gpu: bool = False) -> None:
    """Set process-wide defaults before Ray, DeepSpeed or MLflow are imported.

    Telemetry off; the DeepSpeed JIT cache at a stable path; on CPU `DS_ACCELERATOR=cpu`; and in
    embedded mode loopback-only Ray. Variables the user has set are left alone.
    """
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cluster_address(address) is None:
        # Without it Ray registers the machine's external address and listens on every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def worker_env(tracking_uri: str | None, use_gpu: bool) -> dict[str, str]:
    """Environment variables for Ray Train workers (`RunConfig.worker_runtime_env`)."""
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    env.update(QUIET)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    if not use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when a Ray cluster address does not accept connections (ray.init would keep
    reconnecting for minutes). "auto" and `ray://` client addresses are left to Ray.

    Raises:
        ConnectionError: naming the address.
    """
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(f"Ray cluster at {address} is unreachable ({e}); start it (ray start --head ...) "
                              f"or fix --address / $RAY_ADDRESS") from e


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[str]:
    """Use the Ray this process already has, join a cluster, or start an embedded one.

    Args:
        address: cluster address; None reads `$RAY_ADDRESS`; neither starts embedded Ray.
        num_cpus: CPUs of an embedded Ray (None: all of the machine's).

    Yields:
        "existing", the cluster address, or "embedded".

    Ray is shut down on exit only when this call initialised it, also when the body raises:
    a driver that dies without `ray.shutdown` leaves worker actors behind.
    """
    prepare_environment(address)
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    address = cluster_address(address)
    if address is not None:
        check_ray_address(address)
        ray.init(address=address)
        where = address
    else:
        # An empty RAY_ADDRESS means "none" here; left in the environment, Ray's own workers read
        # it as an address and fail (e.g. the placement-group cleaner's State API client).
        if os.environ.get("RAY_ADDRESS") == "":
            del os.environ["RAY_ADDRESS"]
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "pipelines.runtime.quiet_state_api_pollers"})
        where = "embedded"
    try:
        yield where
    finally:
        ray.shutdown()


T = TypeVar("T")


def job_parser(stage: str, doc: str | None, what: str, example: str) -> argparse.ArgumentParser:
    """The command line every config-driven stage shares: `--config FILE`, `--set KEY=VALUE`
    (repeatable), `--address`.

    Args:
        stage: the module after `python -m`, e.g. "pipelines.train".
        doc: the stage module's docstring (its first paragraph becomes the description).
        what: what the config file holds, e.g. "job" or "sweep".
        example: an override shown in the help, e.g. "train.steps=200".
    """
    parser = argparse.ArgumentParser(prog=f"python -m {stage}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--config", help=f"YAML or JSON {what} config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)")
    return parser


def run_cli(job: Callable[[], T]) -> tuple[T | None, int]:
    """Run a command-line job with the exit statuses every `python -m pipelines.*` entry point
    documents: 0 done, 2 bad config, 3 could not run (unreachable MLflow or Ray, unusable
    storage). The error is printed on stderr as one line, without a traceback.

    Returns:
        (the job's result or None, the exit status).

    Example:
        >>> outcome, status = run_cli(lambda: train(load_job_config(path), address))
    """
    try:
        return job(), 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None, 2
    except (ConnectionError, OSError) as e:  # pre-flight: unreachable MLflow / Ray, unusable storage
        print(f"error: {e}", file=sys.stderr)
        return None, 3


def quiet_state_api_pollers() -> None:
    """Worker set-up hook of the embedded Ray: only errors from `STATE_API_POLLERS`, whose
    warnings there only say that the (deliberately absent) dashboard does not answer."""
    for name in STATE_API_POLLERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def node_placement() -> dict[str, object]:
    """Where the calling Ray worker runs: node id and address, host name and pid."""
    import socket

    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def resolve_local(path: str | None) -> str | None:
    """An absolute local path (URIs such as `s3://...` pass through), as workers on other nodes
    or in other working directories must see it."""
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())
