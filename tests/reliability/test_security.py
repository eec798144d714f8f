"""Security: no pickles we did not write, services on loopback, no credentials in what is logged.

- Source scan (AST) of every project module: each `torch.load` passes `weights_only=True`; no
  other unpickling (pickle, cloudpickle, dill, joblib, `np.load(allow_pickle=True)`,
  `mlflow.pytorch`, `yaml.load`) exists but the MNIST allow-list unpickler.
- Behaviour: a malicious pickle planted as a model file, or offered to the MNIST reader, is
  refused and its payload never runs (a marker file it would create stays absent).
- Loopback: the MLflow server script binds 127.0.0.1 by default (started for real, sockets
  listed); the compose file and the Ray cluster config publish on 127.0.0.1 only. Ray's own
  embedded instance is checked in test_driver_faults.py, where the pipeline starts it.
- Redaction: passwords and tokens in URIs never reach the dumped config or MLflow params.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from linearizer.data.mnist import safe_unpickle
from linearizer.io import load_model, save_model
from pipelines.config import dump_job_config, public_dict
from pipelines.tracking import RankZero, end_run, redact_uri, start_run
from tests.registry_models import onestep_model
from tests.reliability.procs import REPO, family, listening, reap, wait_for
from tests.toy_kind import tiny_job

PACKAGES = ("linearizer", "pipelines", "jobs", "bench")
#: (file, enclosing function) allowed a `torch.load` without weights_only=True: none. (DeepSpeed
#: itself unpickles the checkpoints a run wrote, in its resume and zero_to_fp32 code.)
TRUSTED_TORCH_LOADS: set[tuple[str, str]] = set()
#: the allow-list unpickler and the one function that uses it.
TRUSTED_UNPICKLERS = {("linearizer/data/mnist.py", "NumpyOnlyUnpickler"), ("linearizer/data/mnist.py", "safe_unpickle")}
BANNED_MODULES = ("cloudpickle", "dill", "joblib", "mlflow.pytorch", "shelve", "marshal")


# --------------------------------------------------------------------------------------------
# Source scan
# --------------------------------------------------------------------------------------------


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


class _Scan(ast.NodeVisitor):
    """Collects (file, enclosing def, line, what) of every deserialising call."""

    def __init__(self, rel: str):
        self.rel, self.stack, self.found = rel, ["<module>"], []

    def _scoped(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def _add(self, node: ast.AST, what: str) -> None:
        self.found.append((self.rel, self.stack[-1], node.lineno, what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith(BANNED_MODULES):
                self._add(node, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        names = [f"{module}.{a.name}" for a in node.names]
        if module.startswith(BANNED_MODULES) or any(n.startswith(BANNED_MODULES) for n in names):
            self._add(node, f"from {module} import {[a.name for a in node.names]}")
        if module == "pickle" and {"load", "loads", "Unpickler"} & {a.name for a in node.names}:
            self._add(node, "from pickle import load/loads/Unpickler")

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "torch.load":
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                self._add(node, "torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            self._add(node, name)
        elif name in ("np.load", "numpy.load"):
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self._add(node, "np.load(allow_pickle=...)")
        elif name == "yaml.load" or name == "yaml.unsafe_load":
            self._add(node, name)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(_dotted(b) in ("pickle.Unpickler", "Unpickler") for b in node.bases):
            self.found.append((self.rel, node.name, node.lineno, "subclass of pickle.Unpickler"))
        self._scoped(node)


def test_source_scan_finds_no_untrusted_deserialisation(figures):
    found = []
    for path in _sources():
        rel = str(path.relative_to(REPO))
        scan = _Scan(rel)
        scan.visit(ast.parse(path.read_text(), filename=rel))
        found.extend(scan.found)
    figures.note("source_files_scanned", len(_sources()))
    trusted = TRUSTED_TORCH_LOADS | TRUSTED_UNPICKLERS
    untrusted = [f for f in found if (f[0], f[1]) not in trusted]
    assert not untrusted, "deserialisation outside the trusted places:\n" + "\n".join(map(str, untrusted))
    # The exception is what it claims to be: an unpickler that overrides find_class.
    assert {(f[0], f[1]) for f in found} <= trusted
    mnist = ast.parse((REPO / "linearizer/data/mnist.py").read_text())
    unpickler = next(n for n in ast.walk(mnist) if isinstance(n, ast.ClassDef) and n.name == "NumpyOnlyUnpickler")
    assert any(isinstance(n, ast.FunctionDef) and n.name == "find_class" for n in unpickler.body)


def test_the_scanner_catches_what_it_looks_for():
    """The scan above proves nothing if the scanner is blind: feed it each pattern."""
    bad = """
import pickle, torch, numpy as np, yaml
import cloudpickle
from mlflow.pytorch import load_model
def f(p):
    torch.load(p)
    torch.load(p, weights_only=False)
    pickle.loads(b"")
    np.load(p, allow_pickle=True)
    yaml.load(p)
class U(pickle.Unpickler):
    pass
"""
    scan = _Scan("x.py")
    scan.visit(ast.parse(bad))
    assert len(scan.found) == 8, scan.found


# --------------------------------------------------------------------------------------------
# Behaviour: malicious pickles
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs `os.system("touch MARKER")`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _Payload(marker)})


def test_malicious_pickle_as_model_weights_is_refused_and_never_runs(tmp_path, figures):
    model, cfg = onestep_model(0)
    directory = save_model(model, cfg, tmp_path / "model")
    marker = tmp_path / "pwned"
    # A torch-style pickle in place of the safetensors file: loading must fail without running it.
    (directory / "model.safetensors").write_bytes(_malicious(marker))
    figures.count("malicious_files_offered")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_model(directory)
    assert not marker.exists(), "the pickle payload ran"
    figures.count("malicious_files_refused")

    # Pickles next to a good model (as another tool would save them) are never read.
    fresh = save_model(model, cfg, tmp_path / "model2")
    for name in ("pytorch_model.bin", "model.pt", "model.pkl", "python_model.pkl"):
        (fresh / name).write_bytes(_malicious(marker))
    loaded, _ = load_model(fresh)
    assert not marker.exists()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_torch_load_with_weights_only_refuses_a_malicious_checkpoint(tmp_path, figures):
    """What every scanned `torch.load(..., weights_only=True)` relies on."""
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_malicious(marker))
    figures.count("malicious_files_offered")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    figures.count("malicious_files_refused")


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen", "posix.system",
                                     "numpy.testing._private.utils.runstring"])
def test_mnist_allow_list_unpickler_refuses_code(tmp_path, payload, figures):
    marker = tmp_path / "pwned"
    module, name = payload.rsplit(".", 1)
    arg = f"touch {marker}" if name in ("system", "Popen") else f"open({str(marker)!r}, 'w')"
    # protocol 2: GLOBAL module name, the argument tuple, REDUCE
    data = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + pickle.dumps((arg,), protocol=2)[2:-1]
            + b"R.")
    figures.count("malicious_files_offered")
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global '{module}.{name}'"):
        safe_unpickle(io.BytesIO(data))
    assert not marker.exists()
    figures.count("malicious_files_refused")
    if payload in ("os.system", "posix.system", "builtins.eval"):
        pickle.loads(data)  # the same bytes are a live exploit for a plain unpickler (it only creates the marker)
        assert marker.exists()


# --------------------------------------------------------------------------------------------
# Services on loopback
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_mlflow_server_script_binds_loopback_by_default(tmp_path, figures):
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1"}
    env.pop("MLFLOW_HOST", None)
    server = subprocess.Popen(["bash", str(REPO / "infra/mlflow/server.sh")], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    procs = []
    try:
        def healthy() -> bool:
            procs[:] = family(server.pid) or procs
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                return False

        wait_for(healthy, 180, f"MLflow server on 127.0.0.1:{port}", poll_s=1.0)
        procs[:] = family(server.pid)
        sockets = listening(procs)
        figures.count("listening_sockets_checked", len(sockets))
        assert any(p == port for _, p, _ in sockets), sockets
        assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip, _, _ in sockets), sockets
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        reap(procs)


def test_published_ports_and_dashboards_are_loopback_only():
    compose = yaml.safe_load((REPO / "infra/mlflow/compose.yaml").read_text())
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports
    assert "--dashboard-host=127.0.0.1" in (REPO / "infra/ray/cluster-gpu.yaml").read_text()
    script = (REPO / "infra/mlflow/server.sh").read_text()
    assert ': "${MLFLOW_HOST:=127.0.0.1}"' in script


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


def _secret_uris(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(uri, secret) pairs: passwords, bare tokens and signed query parameters."""
    out = []
    for _ in range(n):
        secret = "S" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(12))
        user = rng.choice(["mlflow", "admin", "u_1", "ci-bot"])
        host = rng.choice(["db.internal", "10.0.0.7", "mlflow.example.org", "[::1]"])
        port = rng.choice(["", ":5432", ":5000", ":443"])
        form = rng.randrange(4)
        if form == 0:
            scheme = rng.choice(["postgresql", "mysql+pymysql", "http", "https", "mssql"])
            out.append((f"{scheme}://{user}:{secret}@{host}{port}/{rng.choice(['mlflow', 'db', ''])}", secret))
        elif form == 1:
            out.append((f"https://{secret}@{host}{port}/api", secret))
        elif form == 2:
            key = rng.choice(["token", "X-Amz-Signature", "password", "api_key", "sig", "X-Amz-Credential"])
            out.append((f"s3://bucket/path/run?{key}={secret}&region=eu-west-1", secret))
        else:
            out.append((f"https://{user}:{secret}%40x@{host}{port}/?access_token={secret}", secret))
    return out


def test_redaction_masks_every_generated_secret(figures):
    cases = _secret_uris(random.Random("secrets"), 300)
    leaked = [(uri, redact_uri(uri)) for uri, secret in cases if secret in redact_uri(uri)]
    figures.count("secret_uris_redacted", len(cases) - len(leaked))
    figures.count("secret_uris_tried", len(cases))
    assert not leaked, leaked[:5]
    assert redact_uri("postgresql://mlflow:hunter2@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"


def test_no_credentials_in_the_dumped_config_or_mlflow_params(mlflow_store, tmp_path, figures):
    """A job whose URIs carry credentials: what the driver dumps and logs, and what the worker
    logs as MLflow params (`RankZero.log_params(public_dict(job))`, the worker's own call)."""
    secret = "hunter2-" + os.urandom(4).hex()
    cfg = tiny_job(tmp_path, "redaction", tmp_path / "shards", mlflow_store.tracking_uri,
                   mlflow_store.artifact_location, storage_path=f"s3://ray:{secret}@minio.internal:9000/runs")
    cfg.mlflow.tracking_uri = f"http://mlflow:{secret}@mlflow.internal:5000"  # what is recorded, not where we log
    dumped = dump_job_config(cfg, tmp_path / "config.json").read_text()
    assert secret not in dumped and "mlflow:***@mlflow.internal:5000" in dumped
    logged = tiny_job(tmp_path, "redaction", tmp_path / "shards", mlflow_store.tracking_uri,
                      mlflow_store.artifact_location)
    run = start_run(logged)
    try:
        writer = RankZero(0, mlflow_store.tracking_uri, run.run_id)
        writer.log_params(public_dict(cfg))
        writer.log_dict(json.loads(dumped), "config.json")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_store.tracking_uri)
        params = client.get_run(run.run_id).data.params
        assert params["mlflow.tracking_uri"] == "http://mlflow:***@mlflow.internal:5000"
        assert params["storage_path"] == "s3://ray:***@minio.internal:9000/runs"
        assert not [k for k, v in params.items() if secret in v]
        artifact = client.download_artifacts(run.run_id, "config.json", str(tmp_path / "dl"))
        assert secret not in Path(artifact).read_text()
    finally:
        end_run(run, "FINISHED")
    figures.count("logged_configs_checked_for_credentials")
