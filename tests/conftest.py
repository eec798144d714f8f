"""Shared test fixtures: one loopback-only local Ray per session and an MLflow store in tmp.

The environment is set here, before any test module imports Ray, DeepSpeed or MLflow:
telemetry off, Ray bound to loopback, DeepSpeed on CPU with its JIT cache at a stable path
(built once, ~1 minute, then reused), and the repository on `PYTHONPATH` so that Ray workers
and fresh subprocesses import the project and `tests.*` helper modules.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DS_ACCELERATOR": "cpu",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"),
    "NO_PROXY": "127.0.0.1,localhost",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
if str(REPO) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny tensors: threads only add synchronisation
    at these sizes, and the test machine's cores are shared. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs for the whole session (starting one costs 5-10 s).

    Yields the `ray` module. A test that needs its own cluster (several nodes) must run its
    driver in a subprocess: a process joins one Ray cluster at a time.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class MlflowStore:
    """A throwaway MLflow store: SQLite backend, artifacts in a sibling directory."""

    tracking_uri: str
    artifact_location: str
    root: Path


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> MlflowStore:
    """One SQLite MLflow store per session (creating its tables takes seconds); tests keep
    apart through distinct experiment and model names."""
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowStore(f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri(), root)
