"""A 2-node Ray cluster simulated on loopback addresses runs the 2-worker job across both nodes.

Head on 127.0.0.2, second node on 127.0.0.3 (`ray start --block`, each in its own process
group, with a token of their own); the job runs as the CLI in a subprocess with `--address`,
as a user would submit it. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (set for the other tests) would
refuse the second node, so these processes run without it; loopback addresses other than
127.0.0.1 keep all traffic on this machine. Only processes started here are stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.shards import digits_samples, write_shards
from tests.toy_kind import tiny_job

pytestmark = pytest.mark.slow

HEAD, NODE2 = "127.0.0.2", "127.0.0.3"
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _pids_using(root: Path) -> list[int]:
    """Processes whose command line names `root` (a directory unique to this test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(root).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop(procs: list[subprocess.Popen], root: Path) -> None:
    """SIGTERM the `ray start --block` process groups (they stop their nodes), SIGKILL leftovers.

    The wait is short: a head stopping after its driver has left spends ~20 s failing to drain
    itself, and nothing of this throwaway cluster needs a graceful end.
    """
    for proc in reversed(procs):  # the second node first, then the head
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid in _pids_using(root):  # workers a raylet left behind, found by our unique temp dir
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def two_nodes() -> Iterator[tuple[str, dict[str, str]]]:
    """(cluster address, environment for its clients)."""
    # Ray's socket paths live under the temp dir and must stay short (AF_UNIX: 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = _free_port(HEAD)
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    # Ports Ray would otherwise take at fixed defaults (10001, 52365): a concurrent run of this
    # test, or anyone else's Ray on these addresses, must not collide with ours.
    head_ports = ["--ray-client-server-port", str(_free_port(HEAD)),
                  "--dashboard-agent-listen-port", str(_free_port(HEAD))]
    node2_ports = ["--dashboard-agent-listen-port", str(_free_port(NODE2))]
    procs = []
    try:
        with open(root / "head.log", "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", "--head", "--node-ip-address", HEAD, "--port", str(port), "--include-dashboard", "false",
                 "--temp-dir", str(root / "ray"), *head_ports, *common], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        _wait_for_port(HEAD, port, timeout=120)
        with open(root / "node2.log", "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", "--address", f"{HEAD}:{port}", "--node-ip-address", NODE2, *node2_ports, *common],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield f"{HEAD}:{port}", env
    finally:
        _stop(procs, root)
        assert not _pids_using(root), "cluster processes survived the teardown"
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_train_across_two_nodes(two_nodes, mlflow_store, tmp_path):
    address, env = two_nodes
    shards = tmp_path / "shards"
    write_shards(digits_samples("train", 8, 256), shards, "digits-train", maxcount=64)
    cfg = tiny_job(tmp_path, "toy-two-nodes", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                   distributed={"placement_strategy": "STRICT_SPREAD"})
    config = tmp_path / "job.json"
    from linearizer.config import to_dict

    config.write_text(json.dumps(to_dict(cfg)))
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--config", str(config), "--address", address],
                          env=env, capture_output=True, text=True, timeout=480, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads((cfg.run_dir / "result.json").read_text())
    assert result["metrics"]["step"] == 4 and result["metrics"]["nodes"] == 2
    placement = result["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert len({p["node_id"] for p in placement}) == 2, placement
    assert {p["node_ip"] for p in placement} == {HEAD, NODE2}
    assert Path(result["model_dir"], "model.safetensors").is_file()
