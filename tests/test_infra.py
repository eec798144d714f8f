"""Infrastructure files: they cannot run here (no Kubernetes, Docker engine, cloud, PostgreSQL or
S3), so every file is parsed and checked against what does exist: the entry points and config keys
it names, Ray's own cluster-config schema, the installed Ray and MLflow versions, the `mlflow
server` flags. The MLflow start script itself runs (slow) against a SQLite store and a local
artifact directory.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
JSON_FILES = sorted(INFRA.rglob("*.json"))
DOCS = [REPO / "docs" / "jobs.md"]
BIN = Path(sys.executable).parent


def config_loaders() -> dict[str, Callable[[str | None, list[str]], Any]]:
    """Entry-point module -> the loader of its `--config` file with its `--set` overrides."""
    from pipelines.config import load_job_config
    from pipelines.evaluate.config import load_eval_config
    from pipelines.tune_config import load_sweep_config

    return {"pipelines.train": load_job_config, "pipelines.tune": load_sweep_config,
            "pipelines.evaluate": load_eval_config, "jobs.schedule": load_eval_config}


# --------------------------------------------------------------------------------------------
# Finding the commands a file runs
# --------------------------------------------------------------------------------------------


def _strings(node: Any) -> list[Any]:
    """Every string and every list of strings in a parsed YAML tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        found = [node] if node and all(isinstance(v, str) for v in node) else []
        return found + [s for v in node for s in _strings(v)]
    return []


def _text_commands(text: str) -> list[str]:
    """Command lines in comments, shell scripts and Markdown: backslash continuations joined,
    comment marks and prompts stripped."""
    lines = [re.sub(r"^\s*(#\s?|\$ )", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.split(" # ")[0] for line in joined.splitlines() if "python -m " in line]


def commands(path: Path) -> list[list[str]]:
    """Every `python -m MODULE ARGS` a file runs or documents, as argument lists (of a Python
    file: its module docstring, the usage it prints)."""
    text = path.read_text()
    if path.suffix == ".py":
        text = ast.get_docstring(ast.parse(text)) or ""
    found: list[list[str]] = [shlex.split(line, comments=False) for line in _text_commands(text)]
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            for s in _strings(doc):
                if isinstance(s, list):
                    found.append(s)
                elif "python -m " in s:
                    found.append(shlex.split(s))
    out = []
    for argv in found:
        for i in range(len(argv) - 2):
            if Path(argv[i]).name in ("python", "python3") and argv[i + 1] == "-m":
                rest = argv[i + 2:]
                end = next((j for j, a in enumerate(rest) if a in (";", "&&", "||", "|", "&")), len(rest))
                out.append(rest[:end])
    return out


def _overrides(args: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a == "--set":
            out.append(args[i + 1])
        elif a.startswith("--set="):
            out.append(a[len("--set="):])
    return out


def check_command(module_and_args: list[str], where: str) -> str:
    """Check one `MODULE ARGS`: the module runs with -m, its `--set` keys load, its `--config` exists.
    `jobs.submit STAGE ... -- ARGS` is checked as the stage's own command. Returns the module."""
    from jobs.submit import STAGES

    module, args = module_and_args[0], module_and_args[1:]
    if "<" in module:  # a placeholder in prose, e.g. pipelines.<stage>
        return module
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{where}: module {module!r} does not exist"
    if spec.submodule_search_locations:  # a package runs through its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{where}: {module} has no __main__"
    else:
        assert callable(getattr(importlib.import_module(module), "main", None)), f"{where}: {module} has no main()"
    if module == "jobs.submit":
        if args and "<" in args[0]:  # jobs.submit <stage> in prose
            return module
        assert args and args[0] in STAGES, f"{where}: jobs.submit stage {args[:1]} not in {sorted(STAGES)}"
        stage_args = args[args.index("--") + 1:] if "--" in args else []
        check_command([STAGES[args[0]], *stage_args], where)
        return module
    config = args[args.index("--config") + 1] if "--config" in args else None
    if config is not None:
        assert (REPO / config).is_file(), f"{where}: --config {config} does not exist"
    overrides = _overrides(args)
    if overrides or config:
        loader = config_loaders().get(module)
        assert loader is not None, f"{where}: {module} takes no --config / --set"
        try:
            loader(None if config is None else REPO / config, overrides)
        except ValueError as e:
            pytest.fail(f"{where}: {module} {config or ''} {overrides}: {e}")
    return module


# --------------------------------------------------------------------------------------------
# Every file parses; every command in it exists
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES + JSON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_file_parses(path):
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs)


def test_entry_points_and_config_keys_exist():
    files = YAML_FILES + DOCS + [INFRA / "mlflow" / "server.sh"] + [
        REPO / p for p in ("jobs/submit.py", "jobs/schedule.py", "pipelines/evaluate/__init__.py",
                           "pipelines/evaluate/__main__.py")]
    seen = set()
    for path in files:
        for command in commands(path):
            seen.add(check_command(command, str(path.relative_to(REPO))))
    # the scan found what these files are for (a scanner that finds nothing would pass too)
    assert {"pipelines.train", "pipelines.tune", "pipelines.evaluate", "jobs.schedule", "jobs.submit"} <= seen


@pytest.mark.parametrize("command, message", [
    (["pipelines.nope"], "does not exist"),
    (["pipelines.train", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
    (["jobs.submit", "evaluate", "--", "--set", "sampling.n=1"], "sampling.n must be >= 2"),
    (["pipelines.train", "--config", "configs/absent.yaml"], "does not exist"),
])
def test_the_checker_catches_broken_commands(command, message):
    with pytest.raises(BaseException, match=message):
        check_command(command, "test")


# --------------------------------------------------------------------------------------------
# Ray cluster launcher and KubeRay
# --------------------------------------------------------------------------------------------


def load(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / path).read_text()) if d]


def values_of(node: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in values_of(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in values_of(v, key)]
    return []


def test_cluster_launcher_config_fits_rays_schema():
    from ray.autoscaler._private.util import validate_config

    (cfg,) = load("ray/cluster-gpu.yaml")
    validate_config(cfg)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in cfg["available_node_types"].values())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--disable-usage-stats" in head


def test_kuberay_manifests_agree_with_each_other_and_the_installed_stack():
    import ray

    docs = {d["kind"]: d for name in ("raycluster.yaml", "rayjob-evaluate-cron.yaml") for d in load(f"kuberay/{name}")}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray.__version__
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for name in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        (job,) = load(f"kuberay/{name}")
        assert job["kind"] == "RayJob"
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == "/app" and {".git", "/data", "/runs"} <= set(runtime_env["excludes"])
    assert re.search(r"^WORKDIR /app$", (INFRA / "docker" / "Dockerfile").read_text(), re.M)
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    command = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    address = command[command.index("--address") + 1]
    assert address.startswith(f"http://{cluster['metadata']['name']}-head-svc") and address.endswith(":8265")
    # one worker image everywhere
    images = {image for p in YAML_FILES if "kuberay" in p.parts for d in yaml.safe_load_all(p.read_text()) if d
              for image in values_of(d, "image")}
    images.add(load("ray/cluster-gpu.yaml")[0]["docker"]["image"])
    assert len(images) == 1, images


# --------------------------------------------------------------------------------------------
# MLflow server set-up
# --------------------------------------------------------------------------------------------


SERVER = INFRA / "mlflow" / "server.sh"


def test_mlflow_server_script_defaults_and_flags():
    import mlflow

    text = SERVER.read_text()
    subprocess.run(["bash", "-n", str(SERVER)], check=True)
    assert re.search(r'MLFLOW_HOST:=127\.0\.0\.1', text) and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in text
    assert re.search(r'MLFLOW_BACKEND_STORE_URI:=postgresql://', text)
    assert re.search(r'MLFLOW_ARTIFACTS_DESTINATION:=s3://', text)
    help_text = subprocess.run([str(BIN / "mlflow"), "server", "--help"], capture_output=True, text=True,
                               check=True).stdout
    invocation = text[text.index("exec mlflow server"):]
    for flag in set(re.findall(r"(--[a-z][a-z-]+)", invocation)):
        assert re.search(rf"{flag}\b", help_text), f"mlflow server has no {flag}"
    compose = load("mlflow/compose.yaml")[0]
    assert compose["services"]["mlflow"]["image"].endswith(f":v{mlflow.__version__}")
    for service in compose["services"].values():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), service.get("ports")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_server_script_serves_on_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    env.pop("MLFLOW_HOST", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["bash", str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(1)
        listeners = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listeners.strip() and all("127.0.0.1:" in line for line in listeners.splitlines()), listeners
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the script execs mlflow in its own process group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# --------------------------------------------------------------------------------------------
# The worker image
# --------------------------------------------------------------------------------------------


def test_dockerfile_pins_torch_through_the_constraints():
    import tomllib

    text = (INFRA / "docker" / "Dockerfile").read_text()
    instructions = re.sub(r"\\\n\s*", " ", text)
    installs = [m for line in instructions.splitlines() if line.startswith("RUN")
                for m in re.split(r"&&", line) if "pip install" in m]
    assert installs and all("-c constraints.txt" in m for m in installs), installs
    assert any('".[pipeline]"' in m for m in installs)
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text().split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    base = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    assert base and (int(base[1]), int(base[2])) >= (3, 11), "the base image must satisfy requires-python >= 3.11"
    for line in text.splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
