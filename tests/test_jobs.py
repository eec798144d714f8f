"""Scheduling and submission: `jobs.schedule` on a real MLflow registry, the `jobs.submit` command
lines checked against Ray's own CLI and upload rules, and (slow) a real local Ray head that runs a
tiny training job and then an evaluation job through the Ray Jobs API.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest

from jobs import submit
from jobs.schedule import main as schedule_main
from jobs.schedule import pending_versions, run_once, watch
from pipelines.evaluate import evaluate, load_eval_config
from pipelines.evaluate.common import client_for
from tests.registry_models import TINY_FID, WAIVE_FLOORS, eval_cfg, onestep_model, register

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


# --------------------------------------------------------------------------------------------
# jobs.submit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, module", sorted(submit.STAGES.items()))
def test_submit_command_spells_out_the_job(stage, module, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    cmd = submit.submit_command(stage, ["--set", "seed=3"], wait=False, env={"EXTRA": "1"})
    assert cmd[:5] == [RAY, "job", "submit", "--address", "http://10.0.0.5:8265"]
    assert cmd[cmd.index("--working-dir") + 1] == "."
    assert "--no-wait" in cmd
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", module, "--set", "seed=3"]
    env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert {".git", ".venv", "/data", "/runs", "/outputs", "mlruns", "*.db"} <= set(env["excludes"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["env_vars"]["EXTRA"] == "1" and env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert submit.submit_command(stage, [], address="http://h:1")[4] == "http://h:1"  # --address wins


def test_excludes_keep_the_code_and_drop_data_by_rays_own_rules():
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, submit.EXCLUDES)
    for path in ("data/shards/mnist-train-000000.tar", "runs/mlflow.db", "outputs/x.png", ".git/HEAD",
                 ".venv/bin/python", "mlruns/0/meta.yaml", "tests/mlruns/1/x", "store.db", ".cache/torch_extensions"):
        assert excluded(REPO / path), path
    for path in ("linearizer/data/mnist.py", "pipelines/evaluate/job.py", "jobs/schedule.py", "infra/deepspeed"):
        assert not excluded(REPO / path), path


def test_submit_flags_exist_in_the_ray_cli(capsys):
    help_text = subprocess.run([RAY, "job", "submit", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--address", "--working-dir", "--runtime-env-json", "--no-wait", "--submission-id"):
        assert flag in help_text, flag
    assert submit.main(["evaluate", "--dry-run", "--address", "http://127.0.0.1:1", "--",
                        "--model", "m", "--alias", "challenger"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:2] == [RAY, "job"]
    assert printed[-8:] == ["--", "python", "-m", "pipelines.evaluate", "--model", "m", "--alias", "challenger"]
    with pytest.raises(SystemExit):
        submit.main(["deploy", "--dry-run"])


# --------------------------------------------------------------------------------------------
# jobs.schedule
# --------------------------------------------------------------------------------------------


def test_schedule_once_evaluates_exactly_the_unevaluated_versions(mlflow_store, tmp_path):
    name = "sched-onestep"
    client = client_for(mlflow_store.tracking_uri)
    for seed in range(3):
        register(mlflow_store, name, *onestep_model(seed), tmp_path)
    settings = ["fid.extractor=off", "sampling.primary=agreement_db"]
    assert evaluate(eval_cfg(mlflow_store, tmp_path, name, "mlflow.version=2", *settings)).status == "evaluated"
    cfg = eval_cfg(mlflow_store, tmp_path, name, *settings)

    first = run_once(cfg)
    assert first.pending == [f"{name}/1", f"{name}/3"] and not first.errors
    assert [(o.version, o.status) for o in first.outcomes] == [("1", "evaluated"), ("3", "evaluated")]
    for version in ("1", "2", "3"):
        assert client.get_model_version(name, version).tags["eval.status"] == "done"

    out = io.StringIO()
    args = ["--once", "--local", "--model", name, "--tracking-uri", mlflow_store.tracking_uri,
            "--set", f"output_dir={tmp_path}", "--set", "fid.extractor=off", "--set", "sampling.primary=agreement_db"]
    with redirect_stdout(out):
        assert schedule_main(args) == 0
    assert json.loads(out.getvalue()) == {"pending": [], "outcomes": [], "errors": {}}

    # failed evaluations are retried until max_attempts, abandoned claims once their claim expires
    register(mlflow_store, name, *onestep_model(3), tmp_path)
    tags = {"eval.status": "failed", "eval.attempts": str(cfg.promotion.max_attempts)}
    for key, value in tags.items():
        client.set_model_version_tag(name, "4", key, value)
    assert pending_versions(client, [name], cfg) == []
    client.set_model_version_tag(name, "4", "eval.attempts", "1")
    assert [mv.version for mv in pending_versions(client, [name], cfg)] in (["4"], [4])
    client.set_model_version_tag(name, "4", "eval.status", "running")
    client.set_model_version_tag(name, "4", "eval.claimed_at", str(time.time() - cfg.promotion.claim_ttl_s - 1))
    assert len(pending_versions(client, [name], cfg)) == 1


def test_watch_reports_each_round_and_survives_a_missing_store(tmp_path):
    cfg = load_eval_config(None, [f"mlflow.tracking_uri=http://127.0.0.1:9", f"output_dir={tmp_path}"])
    out = io.StringIO()
    with redirect_stdout(out):
        watch(cfg, interval_s=0.01, rounds=2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and all("unreachable" in line["error"] for line in lines)
    assert schedule_main(["--once", "--tracking-uri", "http://127.0.0.1:9"]) == 3
    assert schedule_main(["--once", "--set", "sampling.nope=1"]) == 2


# --------------------------------------------------------------------------------------------
# Ray Jobs on a real local head
# --------------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _our_processes(marker: str) -> list[int]:
    """Pids whose command line names `marker` (the head's private temp dir): ours alone."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@contextmanager
def ray_head(log_path: Path):
    """A Ray head on loopback with its own ports, temp dir and auth token; stops exactly what it started.

    Ray 2.60 clusters authenticate with a token: this one gets a fresh token of its own (its
    processes inherit it through the environment), and the Jobs client sends it as a header.
    """
    from ray.job_submission import JobSubmissionClient

    gcs, dashboard, *more = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=token, PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    # ^ the entry points say `python`: the virtual environment's, as in an activated shell
    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port"]
    cmd = [RAY, "start", "--head", "--block", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--include-dashboard", "true", "--num-cpus", "2",
           "--disable-usage-stats", "--temp-dir", temp_dir]
    for flag, port in zip(flags, more):
        cmd += [flag, str(port)]
    with open(log_path, "w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{dashboard}", time.monotonic() + 180
        while True:
            assert head.poll() is None, f"ray start exited with {head.returncode}: {log_path.read_text()[-3000:]}"
            try:
                client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
                client.list_jobs()
                break
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                assert time.monotonic() < deadline, f"the Jobs API never answered: {log_path.read_text()[-3000:]}"
                time.sleep(2)
        yield client
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        for pid in _our_processes(temp_dir):  # workers and drivers of this node that outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def wait_for(client, job_id: str, timeout_s: float = 600) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"job {job_id} still {status}: {client.get_job_logs(job_id)[-3000:]}"
        time.sleep(2)
    return str(status)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_train_then_evaluate_through_the_ray_jobs_api(tmp_path):
    name = "jobs-onestep"
    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "mlartifacts").as_uri()
    env = {"MLFLOW_TRACKING_URI": uri, "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
           "DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "LINEARIZER_CACHE": str(tmp_path / "cache")}
    runtime_env = {**submit.runtime_env(env), "working_dir": str(REPO)}
    train_args = [f"--set={kv}" for kv in (
        "name=jobs-tiny", f"output_dir={tmp_path}/runs", f"data.shards={tmp_path}/shards", "data.source=digits",
        "data.heldout_split=null", "data.limit=64", "train.steps=2", "train.batch_size=8",
        "distributed.num_workers=1", "model.flow.depth=1", "model.flow.hidden=4", "model.operator.rank=2",
        "model.operator.hidden=16", "model.operator.time_embed_dim=8", "model.sampler.steps=4",
        f"mlflow.artifact_location={artifacts}", f"mlflow.registered_model={name}")]
    # output_dir is relative: the report lands in the job's working dir, the uploaded copy of the repo
    eval_args = ["--model", name, "--alias", "challenger", "--set", "output_dir=runs", "--set",
                 f"mlflow.artifact_location={artifacts}", "--set", "sampling.n=32", "--set", "sampling.agreement_n=8",
                 *[a for kv in TINY_FID + WAIVE_FLOORS for a in ("--set", kv)]]

    with ray_head(tmp_path / "ray-head.log") as client:
        train_id = client.submit_job(entrypoint=shlex.join(submit.entrypoint("train", train_args)),
                                     runtime_env=runtime_env)
        assert wait_for(client, train_id) == "SUCCEEDED", client.get_job_logs(train_id)[-4000:]
        eval_id = client.submit_job(entrypoint=shlex.join(submit.entrypoint("evaluate", eval_args)),
                                    runtime_env=runtime_env)
        assert wait_for(client, eval_id) == "SUCCEEDED", client.get_job_logs(eval_id)[-4000:]
        logs = client.get_job_logs(eval_id)
    summary = json.loads(logs[logs.index("{\n"):logs.rindex("}") + 1])
    assert summary["status"] == "evaluated" and summary["passed"] is True
    assert "/runtime_resources/working_dir_files/" in summary["report_dir"]  # ran in the uploaded copy

    mlflow = client_for(uri)
    assert str(mlflow.get_model_version_by_alias(name, "champion").version) == summary["version"] == "1"
    tags = mlflow.get_model_version(name, "1").tags
    assert tags["eval.status"] == "done" and tags["eval.run_id"] == summary["run_id"] and tags["kind"] == "onestep"
    run = mlflow.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["linearizer.source_run_id"] == tags["run_id"]
    assert {"agreement_db", "fid", "samples_per_s"} <= set(run.data.metrics)
    assert {"report/report.md", "report/report.html", "report/images"} <= {
        f.path for f in mlflow.list_artifacts(summary["run_id"], "report")}
