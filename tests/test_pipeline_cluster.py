"""A 2-node Ray cluster simulated on loopback addresses runs the 2-worker job across both nodes.

Head on 127.0.0.2, second node on 127.0.0.3 (`ray start --block`, each in its own process
group, with a token of their own); the job runs as the CLI in a subprocess with `--address`,
and as a Ray job (`ray job submit`, through `jobs.submit`) that loses its second node mid-run.
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (set for the other tests) would refuse the second node, so
these processes run without it; loopback addresses other than 127.0.0.1 keep all traffic on this
machine. Only processes started here are stopped.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.shards import digits_samples, write_shards
from tests.toy_kind import tiny_job

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Cluster:
    """A running 2-node loopback cluster: GCS address, client environment, its temp dir and,
    when started with one, the dashboard's HTTP address (the Jobs API)."""

    address: str
    env: dict[str, str]
    root: Path
    dashboard: str | None

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


@contextlib.contextmanager
def _cluster(dashboard: bool = False) -> Iterator[Cluster]:
    """A head on `HEAD` and a second node on `NODE2`, 1 CPU each, with a token of their own."""
    # Ray's socket paths live under the temp dir and must stay short (AF_UNIX: 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    # job entry points run `python` on the head: this environment's interpreter
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    port = _free_port(HEAD)
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    # Ports Ray would otherwise take at fixed defaults (10001, 52365): a concurrent run of this
    # test, or anyone else's Ray on these addresses, must not collide with ours.
    head_ports = ["--ray-client-server-port", str(_free_port(HEAD)),
                  "--dashboard-agent-listen-port", str(_free_port(HEAD))]
    dashboard_port = _free_port(HEAD) if dashboard else None
    head_dashboard = (["--include-dashboard", "true", "--dashboard-host", HEAD, "--dashboard-port", str(dashboard_port)]
                      if dashboard else ["--include-dashboard", "false"])
    node2_ports = ["--dashboard-agent-listen-port", str(_free_port(NODE2))]
    procs = []
    try:
        with open(root / "head.log", "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", "--head", "--node-ip-address", HEAD, "--port", str(port), *head_dashboard,
                 "--temp-dir", str(root / "ray"), *head_ports, *common], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        _wait_for_port(HEAD, port, timeout=120)
        if dashboard_port is not None:
            _wait_for_port(HEAD, dashboard_port, timeout=120)
        with open(root / "node2.log", "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", "--address", f"{HEAD}:{port}", "--node-ip-address", NODE2, *node2_ports, *common],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield Cluster(f"{HEAD}:{port}", env, root,
                      None if dashboard_port is None else f"http://{HEAD}:{dashboard_port}")
    finally:
        _stop(procs, root)
        assert not _pids_using(root), "cluster processes survived the teardown"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_nodes() -> Iterator[tuple[str, dict[str, str]]]:
    """(cluster address, environment for its clients)."""
    with _cluster() as cluster:
        yield cluster.address, cluster.env


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


def _raylet_pid(root: Path, ip: str) -> int:
    """The pid of the raylet that serves node `ip` in the cluster under `root`."""
    for pid in _pids_using(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/raylet") and f"--node_ip_address={ip}".encode() in argv:
            return pid
    raise LookupError(f"no raylet for {ip} among the processes of {root}")


def _loss_history(store, experiment: str) -> list[tuple[int, int]]:
    """[(step, timestamp ms)] of the `loss` metric of the experiment's run, in log order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    if not runs:
        return []
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    return sorted(((m.step, m.timestamp) for m in history), key=lambda st: st[1])


def _committed_checkpoints(run_storage: Path) -> list[str]:
    """Checkpoints Ray Train's controller has registered: what a restart resumes from.

    The controller records them in `checkpoint_manager_snapshot.json` in the run's storage once
    every rank's report has arrived; a checkpoint only uploaded is not there yet.
    """
    snapshot = run_storage / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(r["checkpoint_dir_name"] for r in results)


def test_ray_job_resumes_after_a_node_raylet_is_killed(mlflow_store, tmp_path):
    """`ray job submit` (through `jobs.submit`) runs the job on the 2-node cluster, one worker per
    node, with shards and checkpoints on storage both nodes see. Once a checkpoint is committed,
    SIGKILL to the second node's raylet takes that node and its worker down; Ray Train's
    `FailureConfig` restarts the group on the surviving node from that checkpoint. Prints the time
    lost: from the first to the second time the run logs the last step it reached before the kill."""
    from mlflow.tracking import MlflowClient

    from linearizer.config import to_dict
    from tests.toy_kind import ONESTEP_MODEL

    repo = Path(__file__).resolve().parents[1]
    shared = tmp_path / "shared"  # on one machine a directory; on real nodes an NFS mount or s3://
    shards = shared / "shards"
    write_shards(digits_samples("train", 8, 256), shards, "digits-train", maxcount=64)
    steps, every = 120, 10
    cfg = tiny_job(shared, "onestep-node-loss", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                   model=ONESTEP_MODEL, train={"steps": steps, "checkpoint_every": every, "log_every": 1},
                   distributed={"placement_strategy": "SPREAD", "max_failures": 3}, mlflow={"sample_grid": 0})
    config = shared / "job.json"
    config.write_text(json.dumps(to_dict(cfg)))
    run_storage = shared / "ray_results" / cfg.name

    with _cluster(dashboard=True) as cluster:
        submit = [sys.executable, "-m", "jobs.submit", "train", "--address", str(cluster.dashboard),
                  "--working-dir", str(repo), "--", "--config", str(config)]
        with open(tmp_path / "submit.log", "w") as log:
            job = subprocess.Popen(submit, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
        try:
            deadline = time.monotonic() + 420
            while not _committed_checkpoints(run_storage):
                assert job.poll() is None, (tmp_path / "submit.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint was committed in time"
                time.sleep(0.2)
            client = MlflowClient(mlflow_store.tracking_uri)
            run = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])[0]
            assert run.data.tags["linearizer.nodes"] == "2"
            os.kill(_raylet_pid(cluster.root, NODE2), signal.SIGKILL)
            killed_ms = time.time() * 1000
            committed = int(_committed_checkpoints(run_storage)[-1].rsplit("_", 1)[1])
            returncode = job.wait(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
    assert returncode == 0, (tmp_path / "submit.log").read_text()[-4000:]

    result = json.loads((cfg.run_dir / "result.json").read_text())
    resumed_from = result["metrics"]["start_step"]
    assert result["metrics"]["step"] == steps and result["metrics"]["nodes"] == 1
    assert resumed_from % every == 0 and resumed_from >= committed >= every
    assert {p["node_ip"] for p in result["placement"]} == {HEAD}, "the restarted group runs on the survivor"
    history = _loss_history(mlflow_store, cfg.mlflow.experiment)
    before = [(s, t) for s, t in history if t <= killed_ms]
    after = [(s, t) for s, t in history if t > killed_ms]
    reached = max(s for s, _ in before)
    assert reached < steps, "the run ended before the node was lost"
    assert after[0][0] in (resumed_from + 1, reached + 1), after[:3]  # resumed (or a step in flight finished)
    assert [s for s, _ in after if s > resumed_from][-1] == steps
    # back where it was: at the last step logged before the kill (the first new one if that was
    # the checkpoint's own step)
    target = max(reached, resumed_from + 1)
    first_ms = min((t for s, t in before if s == target), default=killed_ms)
    again_ms = min(t for s, t in after if s == target)
    restart_ms = min(t for s, t in after if s == resumed_from + 1)
    print(f"\nnode lost at step {reached} (committed checkpoint: step {committed}); resumed from step "
          f"{resumed_from}; first step after the restart {(restart_ms - killed_ms) / 1000:.1f} s after the kill; "
          f"back at step {target} {(again_ms - killed_ms) / 1000:.1f} s after the kill; time lost "
          f"{(again_ms - first_ms) / 1000:.1f} s; job {result.get('seconds', float('nan')):.1f} s")
