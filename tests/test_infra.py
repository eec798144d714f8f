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
    from pipelines.tune.config import load_sweep_config

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


# --------------------------------------------------------------------------------------------
# A fresh machine: pre-flight, the torch build, declared dependencies
# --------------------------------------------------------------------------------------------


def _load_script(name: str):
    """A stand-alone script of infra/ as a module (infra/ is not a package: it runs before install)."""
    spec = importlib.util.spec_from_file_location(f"infra_{name}", INFRA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


install_torch = _load_script("install_torch")


def _executable(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_port_url() -> str:
    """An index URL on a loopback port nobody listens on: refused at once."""
    return f"http://127.0.0.1:{_free_port()}/whl/cpu"


class Probes:
    """Fake probes of `install_torch.choose` that record which were asked."""

    def __init__(self, gpu: bool = False, reachable: bool = False, local: str | None = None):
        self.answers, self.asked = {"gpu": gpu, "reachable": reachable, "local": local}, []

    def gpu(self):
        self.asked.append("gpu")
        return self.answers["gpu"], "GPU 0: fake" if self.answers["gpu"] else "no nvidia-smi on PATH"

    def reachable(self, url):
        self.asked.append("reachable")
        return self.answers["reachable"], "HTTP 200" if self.answers["reachable"] else "refused"

    def local(self):
        self.asked.append("local")
        return self.answers["local"]

    def choose(self, mode="auto", index="", spec="torch==2.13.0"):
        return install_torch.choose(mode, index, "https://cpu.example/whl", spec, gpu=self.gpu,
                                    reachable=self.reachable, local_cpu=self.local)


@pytest.mark.parametrize("mode, index, probes, build, args, asked", [
    ("auto", "", Probes(gpu=True), "cuda", ["torch==2.13.0"], ["gpu"]),
    ("auto", "", Probes(reachable=True), "cpu", ["torch==2.13.0", "--index-url", "https://cpu.example/whl"],
     ["gpu", "reachable"]),
    ("auto", "", Probes(local="2.13.0+cpu"), "cpu", ["torch==2.13.0+cpu"], ["gpu", "reachable", "local"]),
    ("cpu", "", Probes(gpu=True, reachable=True), "cpu", ["torch==2.13.0", "--index-url", "https://cpu.example/whl"],
     ["reachable"]),
    ("cuda", "", Probes(), "cuda", ["torch==2.13.0"], []),
    ("auto", "https://mirror/whl", Probes(gpu=True), "index", ["torch==2.13.0", "--index-url", "https://mirror/whl"],
     []),
], ids=["gpu", "cpu-index", "local-cpu-build", "forced-cpu", "forced-cuda", "index-given"])
def test_torch_build_choice(mode, index, probes, build, args, asked):
    choice = probes.choose(mode, index)
    assert (choice.build, choice.pip_args) == (build, args)
    assert probes.asked == asked  # no probe the decision does not need (each may cost seconds)
    assert choice.reason.startswith(args[0].split("+")[0])


def test_torch_build_choice_refuses_to_guess():
    with pytest.raises(install_torch.ChoiceError, match="TORCH_INDEX=<url>.*TORCH=cuda"):
        Probes(local=None).choose()
    with pytest.raises(ValueError, match="TORCH must be one of auto, cpu, cuda, got 'gpu'"):
        Probes().choose("gpu")
    with pytest.raises(ValueError, match="exact pin"):
        Probes().choose(spec="torch>=2")


@pytest.mark.parametrize("build, installed, problem", [
    ("cuda", {"version": "2.13.0+cpu", "cuda": None}, "has no CUDA"),
    ("cpu", {"version": "2.13.0", "cuda": "12.8"}, "is built for CUDA 12.8"),
    ("cuda", {"version": "2.13.0", "cuda": "12.8"}, None),
    ("cpu", {"version": "2.13.0+cpu", "cuda": None}, None),
    ("index", {"version": "2.13.0", "cuda": "12.8"}, None),
])
def test_installed_torch_build_is_checked_against_the_choice(build, installed, problem):
    found = install_torch.check_build(install_torch.Choice(build, ["torch==2.13.0"], "test"), installed)
    assert (found is None) if problem is None else (problem in found and "TORCH_INDEX=<url>" in found)


@pytest.mark.parametrize("nvidia_smi, pip_version, expected", [
    ("echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'", "2.13.0", "torch: cuda: torch==2.13.0, CUDA build"),
    ("exit 9", "2.13.0+cpu", "torch: cpu: torch==2.13.0+cpu, the CPU build pip already finds"),
    (None, "2.13.0+cpu", "torch: cpu: torch==2.13.0+cpu, the CPU build pip already finds (no GPU (no nvidia-smi"),
    (None, "2.13.0", "pip finds no CPU build of torch==2.13.0"),
], ids=["gpu", "nvidia-smi-fails", "no-nvidia-smi", "nothing-to-take"])
def test_install_torch_script_on_a_fake_machine(tmp_path, nvidia_smi, pip_version, expected):
    """The script end to end, with nvidia-smi and pip replaced by fakes on an otherwise empty PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi is not None:
        _executable(bin_dir / "nvidia-smi", nvidia_smi)
    report = json.dumps({"install": [{"metadata": {"name": "torch", "version": pip_version}}]})
    pip = _executable(tmp_path / "pip", f"echo '{report}'")
    out = subprocess.run([sys.executable, str(INFRA / "install_torch.py"), "--pip", str(pip), "--dry-run",
                          "--cpu-index", _closed_port_url(), "--constraints", str(REPO / "constraints.txt")],
                         env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=120)
    assert expected in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.returncode == (2 if expected.startswith("pip finds no") else 0)
    if out.returncode == 0:
        assert f"torch: {pip} install -q torch==" in out.stdout


def _make_n(*args: str) -> list[str]:
    """The commands `make -n ARGS` would run (variables of an enclosing make are not passed down)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
    out = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if not line.startswith("make")]


def test_makefile_installs_torch_first_then_the_rest_under_the_constraints(tmp_path):
    venv = tmp_path / "venv"
    lines = _make_n("install", f"VENV={venv}", "TORCH=cpu", "TORCH_INDEX=https://mirror.example/whl/cpu")
    steps = [next(i for i, line in enumerate(lines) if key in line)
             for key in ("infra/preflight.py --install", "-m venv", "infra/install_torch.py", '-e ".[all]"')]
    assert steps == sorted(steps), lines
    torch_line, rest = lines[steps[2]], lines[steps[3]]
    assert '--torch "cpu"' in torch_line and '--index "https://mirror.example/whl/cpu"' in torch_line
    assert f"--pip {venv}/bin/pip" in torch_line
    assert "-c constraints.txt" in rest
    # every later pip call keeps torch: each passes the constraints or installs without dependencies
    for line in lines[steps[2] + 1:]:
        if "pip install" in line:
            assert "-c constraints.txt" in line or "--no-deps" in line, line
    # `make test` checks the test tools before installing
    assert any("infra/preflight.py --install --tests" in line for line in _make_n("test", f"VENV={venv}"))


def test_make_test_runs_everything_and_test_fast_skips_slow():
    full, fast = ([shlex.split(line) for line in _make_n(target) if " -m pytest" in line] for target in ("test", "test-fast"))
    assert len(full) == len(fast) == 1
    full_args, fast_args = (argv[argv.index("pytest") + 1:] for argv in (full[0], fast[0]))
    assert "-m" not in full_args and "not slow" == fast_args[fast_args.index("-m") + 1]
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.M)


def test_preflight_names_each_missing_tool_with_its_fix(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {"PATH": str(bin_dir), "CXX": str(tmp_path / "no-such-c++")}
    missing = subprocess.run([sys.executable, str(INFRA / "preflight.py"), "--tests"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    for tool, fix in ((f"a C++ compiler ({tmp_path / 'no-such-c++'})", "apt-get install g++"),
                      ("bash", "apt-get install bash"), ("ss", "apt-get install iproute2")):
        assert re.search(rf"- {re.escape(tool)}: needed by .*Fix: {re.escape(fix)}", missing.stderr), missing.stderr
    # the same tools present (fakes): none of them is reported
    for tool in ("c++", "bash", "ss"):
        _executable(bin_dir / tool, "exit 0")
    env.pop("CXX")
    found = subprocess.run([sys.executable, str(INFRA / "preflight.py"), "--tests"], env=env,
                           capture_output=True, text=True, timeout=60)
    for tool in ("C++ compiler", "bash", "ss"):
        assert f"- {tool}" not in found.stderr and f"- a {tool}" not in found.stderr, found.stderr
    # without --tests, ss is not asked for
    (bin_dir / "ss").unlink()
    demo = subprocess.run([sys.executable, str(INFRA / "preflight.py")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "ss" not in demo.stderr.split("Fix")[0]


#: declared distributions no module imports by name, and why they are declared.
INDIRECT = {"pytest-timeout": "a pytest plugin (the timeout ini option)",
            "optuna": "Ray Tune's OptunaSearch (search: optuna)"}
#: modules imported only behind an availability check (`find_spec`), never installed by the project.
OPTIONAL = {"lpips", "torch_fidelity"}
LOCAL = {"linearizer", "pipelines", "jobs", "tests", "bench"}


def _imports() -> dict[str, set[Path]]:
    """Top-level module -> the files that import it, over the project's code, tests and benches."""
    found: dict[str, set[Path]] = {}
    for root in sorted(LOCAL):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    # a sibling module (tests put their own directory on sys.path) is not a dependency
                    if not ((path.parent / f"{top}.py").is_file() or (path.parent / top).is_dir()):
                        found.setdefault(top, set()).add(path)
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared():
    import importlib.metadata
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {_norm(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in requirements} - {"linearizer"}
    dists = importlib.metadata.packages_distributions()
    imported = {m: files for m, files in _imports().items() if m not in sys.stdlib_module_names and m not in LOCAL}
    assert {"torch", "ray", "deepspeed", "mlflow", "psutil"} <= set(imported)  # the scan sees the code
    undeclared, used = [], set()
    for module, files in sorted(imported.items()):
        if module in OPTIONAL:
            for path in files:
                assert re.search(rf"find_spec\(\s*[\"']{module}[\"']", path.read_text()), \
                    f"{path.relative_to(REPO)} imports the optional {module} without checking it is there"
            continue
        names = {_norm(d) for d in dists.get(module, [])}
        used |= names
        if not names & declared:
            undeclared.append(f"{module} ({', '.join(sorted(names)) or 'not installed'}) in "
                              f"{sorted(str(p.relative_to(REPO)) for p in files)[:3]}")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
    unused = sorted(declared - used - set(INDIRECT))
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"


# --------------------------------------------------------------------------------------------
# The GPU check (bench/gpu_check.sh): its CPU-side parts; the CUDA run itself needs a GPU
# --------------------------------------------------------------------------------------------


def test_gpu_check_cases_are_the_pipelines_configs():
    from bench.gpu_check import build_cases

    cases = build_cases(["default", "celeba"], [1, 3], ["bf16"], batch=32)
    assert [c.name for c in cases] == ["default/zero1/bf16", "default/zero3/bf16", "celeba/zero1/bf16",
                                       "celeba/zero3/bf16"]
    for case in cases:
        ds, job = case.deepspeed, case.job
        assert ds["zero_optimization"]["stage"] == case.zero_stage == job.distributed.zero_stage
        # one GPU takes the whole batch; bf16 is the pipeline's autocast, DeepSpeed's weights stay fp32
        assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] == 32
        assert ds["bf16"] == {"enabled": False} and job.distributed.precision == "bf16"
        assert job.distributed.use_gpu and job.distributed.num_workers == 1
    celeba = cases[2].job.model
    assert celeba.chw() == (3, 64, 64) and celeba.flow.depth >= 4 and celeba.operator.rank == 8
    assert cases[0].job.model.chw() == (1, 32, 32)


@pytest.mark.parametrize("argv, message", [
    (["--models", "imagenet"], "--models must name some of"),
    (["--zero", "4"], "--zero must be stages among"),
    (["--precisions", "fp16"], "--precisions must be among"),
    (["--steps", "0"], "--warmup and --steps must be >= 1"),
    (["--set", "model.flow.depth=0"], "depth must be >= 1"),
])
def test_gpu_check_rejects_bad_arguments(argv, message, capsys):
    from bench.gpu_check import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_gpu_check_scripts_parse_and_refuse_without_a_gpu(tmp_path):
    for script in ("gpu_check.sh", "gpu_check_wheels.sh"):
        subprocess.run(["bash", "-n", str(REPO / "bench" / script)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    out = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "GPU_CHECK_JSON": str(tmp_path / "gpu.json")})
    assert out.returncode == 2 and "no GPU here" in out.stderr and "NVIDIA-SMI has failed" in out.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_loop_runs_on_cpu(tmp_path):
    """The same loop on gloo with a tiny model: what the GPU run will execute, minus CUDA."""
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--models", "default",
                          "--zero", "1", "--precisions", "fp32", "bf16", "--batch", "4", "--warmup", "1", "--steps",
                          "2", "--set", "model.flow.depth=1", "--set", "model.flow.hidden=8",
                          "--json", str(tmp_path / "gpu.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=540,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["results"]["backend"] == "gloo" and report["command"].startswith("python -m bench.gpu_check")
    cases = report["results"]["cases"]
    assert [c["case"] for c in cases] == ["default/zero1/fp32", "default/zero1/bf16"]
    for case in cases:
        assert case["loss_finite"] and case["images_per_s"] > 0 and case["timed_steps"] == 2
        assert case["peak_allocated_bytes"] is None  # no CUDA: no device-memory figure
