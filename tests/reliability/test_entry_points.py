"""Bad input at every entry point a user types: the console script and the `python -m` jobs.

Each case runs as a user would run it, in a fresh process, and must end with a non-zero exit
status, a message that says what is wrong, and no Python traceback; unreachable services
(MLflow at http://127.0.0.1:9, Ray at 127.0.0.1:1) must be reported, not waited on forever: a
case that outlives its time limit is killed and fails. All cases start together (a few at a
time) so that their start-up costs overlap; each test then reads its own case's outcome.

Also here: a missing registered model or alias, asked of the registry by a serving client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.reliability.procs import console_script, family, reap

pytestmark = pytest.mark.slow

PARALLEL = 4


@dataclass(frozen=True)
class Case:
    """A command line (placeholders in braces are filled by the fixture) and what it must print."""

    argv: tuple[str, ...]
    says: tuple[str, ...]  # fragments the output (stderr + stdout) must contain
    code: int | None = None  # the exact exit status, when the entry point documents one
    timeout_s: float = 120.0


@dataclass
class Outcome:
    code: int | None
    output: str
    seconds: float
    timed_out: bool
    killed: list = field(default_factory=list)


TRAIN = ("-m", "pipelines.train", "--config", "{job}")
EVALUATE = ("-m", "pipelines.evaluate")
CASES: dict[str, Case] = {
    # the console script
    "linearizer: unknown command": Case(("{linearizer}", "frobnicate"), ("invalid choice", "usage"), 2),
    "linearizer: unknown verb": Case(("{linearizer}", "projective", "frobnicate"), ("invalid choice", "usage"), 2),
    "linearizer: old spelling": Case(("{linearizer}", "sample", "--model", "{tmp}/no-model", "--out", "{tmp}/f.png"),
                                     ("`linearizer sample` is deprecated", "use `linearizer onestep sample`",
                                      "{tmp}/no-model"), 2),
    "linearizer: bad number": Case(("{linearizer}", "onestep", "sample", "--model", "{model}", "--n", "many"),
                                   ("expected a positive integer", "usage"), 2),
    "linearizer: missing model": Case(("{linearizer}", "onestep", "sample", "--model", "{tmp}/no-model", "--out",
                                       "{tmp}/a.png"), ("{tmp}/no-model",), 2),
    "linearizer: negative n": Case(("{linearizer}", "onestep", "sample", "--model", "{model}", "--n", "-4", "--out",
                                    "{tmp}/b.png"), ("-4",), 2),
    "linearizer: zero steps": Case(("{linearizer}", "onestep", "sample", "--model", "{model}", "--steps", "0",
                                    "--out", "{tmp}/c.png"), ("steps",), 2),
    "linearizer: bad model config": Case(("{linearizer}", "onestep", "sample", "--model", "{badconfig}", "--out",
                                          "{tmp}/d.png"), ("unknown config key 'model.flow.depht'",), 2),
    "linearizer: pickle as weights": Case(("{linearizer}", "onestep", "sample", "--model", "{pickled}", "--out",
                                           "{tmp}/e.png"), ("model.safetensors",), 2),
    # python -m pipelines.train
    "train: unknown flag": Case(("-m", "pipelines.train", "--stepz", "3"), ("unrecognized arguments", "usage"), 2),
    "train: unknown key": Case((*TRAIN, "--set", "train.stepz=3"), ("unknown config key 'train.stepz'",), 2),
    "train: wrong type": Case((*TRAIN, "--set", "train.steps=ten"), ("train.steps must be an integer",), 2),
    "train: batch not divisible": Case((*TRAIN, "--set", "train.batch_size=15"), ("not divisible",), 2),
    "train: missing config file": Case(("-m", "pipelines.train", "--config", "{tmp}/none.yaml"),
                                       ("config file not found",), 2),
    "train: unparsable config file": Case(("-m", "pipelines.train", "--config", "{broken}"), ("cannot parse",), 2),
    "train: MLflow unreachable": Case((*TRAIN, "--set", "mlflow.tracking_uri=http://127.0.0.1:9"),
                                      ("127.0.0.1:9",), 3, timeout_s=90),
    "train: Ray unreachable": Case((*TRAIN, "--address", "127.0.0.1:1", "--set", "data.shards={tmp}/shards-ray",
                                    "--set", "mlflow.tracking_uri=sqlite:///{tmp}/ray-case.db"), ("127.0.0.1:1",),
                                   3, timeout_s=90),
    "train: unwritable storage": Case((*TRAIN, "--set", "storage_path={job}/ray_results"),
                                      ("storage_path {job}/ray_results is not a writable directory",), 3),
    # python -m pipelines.evaluate (documented codes: 2 bad config, 3 could not run)
    "evaluate: alias and version": Case((*EVALUATE, "--alias", "a", "--version", "1"), ("not allowed with",), 2),
    "evaluate: bad threshold": Case((*EVALUATE, "--set", "sampling.n=1"), ("sampling.n must be >= 2",), 2),
    "evaluate: MLflow unreachable": Case((*EVALUATE, "--tracking-uri", "http://127.0.0.1:9", "--model", "m"),
                                         ("http://127.0.0.1:9 is unreachable",), 3, timeout_s=90),
    "evaluate: no store": Case((*EVALUATE, "--tracking-uri", "sqlite:///{tmp}/absent.db", "--model", "m"),
                               ("no MLflow store at",), 3),
    "evaluate: missing model": Case((*EVALUATE, "--tracking-uri", "{store}", "--model", "no-such-model", "--local"),
                                    ("registered model 'no-such-model' not found",), 3),
    "evaluate: missing alias": Case((*EVALUATE, "--tracking-uri", "{store}", "--model", "reliability-cli", "--alias",
                                     "nightly", "--local"), ("has no alias 'nightly'",), 3),
    "evaluate: missing version": Case((*EVALUATE, "--tracking-uri", "{store}", "--model", "reliability-cli",
                                       "--version", "9", "--local"), ("has no version 9",), 3),
    "evaluate: Ray unreachable": Case((*EVALUATE, "--tracking-uri", "{store}", "--model", "reliability-cli-ray",
                                       "--version", "1", "--set", "ray.address=127.0.0.1:1"), ("127.0.0.1:1",),
                                      3, timeout_s=90),
    # python -m pipelines.tune and the main job
    "tune: unknown key": Case(("-m", "pipelines.tune", "--set", "job.train.stepz=1"), ("unknown config key",), 2),
    "tune: missing config file": Case(("-m", "pipelines.tune", "--config", "{tmp}/none.yaml"),
                                      ("config file not found",), 2),
    "tune: unknown flag": Case(("-m", "pipelines.tune", "--sweep"), ("unrecognized arguments",), 2),
    "tune: MLflow unreachable": Case(("-m", "pipelines.tune", "--set", "job.mlflow.tracking_uri=http://127.0.0.1:9"),
                                     ("127.0.0.1:9",), 3, timeout_s=90),
    "tune: unwritable storage": Case(("-m", "pipelines.tune", "--set", "job.storage_path={job}/ray_results"),
                                     ("storage_path {job}/ray_results is not a writable directory",), 3),
    "main: unknown key": Case(("-m", "pipelines.main", "--set", "train.stepz=1"), ("unknown config key",), 2),
    # python -m pipelines.shards
    "shards: unknown source": Case(("-m", "pipelines.shards", "write", "--source", "nowhere", "--out", "{tmp}/s"),
                                   ("invalid choice", "usage"), 2),
    "shards: missing folder": Case(("-m", "pipelines.shards", "write", "--source", "folder", "--root",
                                    "{tmp}/no-photos", "--out", "{tmp}/s"), ("image folder not found",), 2),
    "shards: missing set": Case(("-m", "pipelines.shards", "verify", "{tmp}/no-shards"), ("manifest.json",), 2),
}


def _run(case: Case, values: dict[str, str], cwd: Path) -> Outcome:
    argv = [a.format(**values) for a in case.argv]
    command = argv if argv[0] == values["linearizer"] else [sys.executable, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=case.timeout_s)
        outcome = Outcome(proc.returncode, err + out, time.perf_counter() - started, False)
    except subprocess.TimeoutExpired:
        procs = family(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        outcome = Outcome(None, err + out, time.perf_counter() - started, True, reap(procs))
    (cwd / "output.txt").write_text(outcome.output)  # the whole output, for a failing case
    return outcome


@pytest.fixture(scope="module")
def launched(tmp_path_factory, mlflow_store):
    """Start every case (PARALLEL at a time) once the files they name exist."""
    from linearizer.io import save_model
    from tests.registry_models import onestep_model, register

    tmp = tmp_path_factory.mktemp("entry-points")
    model, cfg = onestep_model(0)
    good = save_model(model, cfg, tmp / "model")
    bad = save_model(model, cfg, tmp / "badconfig")
    (bad / "config.json").write_text((bad / "config.json").read_text().replace('"depth"', '"depht"'))
    pickled = save_model(model, cfg, tmp / "pickled")
    (pickled / "model.safetensors").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")
    register(mlflow_store, "reliability-cli", model, cfg, tmp)
    register(mlflow_store, "reliability-cli-ray", model, cfg, tmp)
    job = {"name": "cli-job", "output_dir": str(tmp / "runs"), "imports": ["tests.toy_kind"],
           "data": {"shards": str(tmp / "shards"), "source": "digits", "heldout_split": None, "limit": 64,
                    "maxcount": 32},
           "model": {"kind": "toy", "image_shape": [1, 8, 8], "flow": {"hidden": 4}},
           "train": {"steps": 2, "batch_size": 8},
           "distributed": {"num_workers": 2, "cpus_per_worker": 0.5},
           "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'job-mlflow.db'}", "registered_model": None, "sample_grid": 0}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp / "broken.yaml").write_text("train: {steps: 3\nmodel: [")
    values = {"tmp": str(tmp), "model": str(good), "badconfig": str(bad), "pickled": str(pickled),
              "job": str(tmp / "job.yaml"), "broken": str(tmp / "broken.yaml"), "store": mlflow_store.tracking_uri,
              "linearizer": console_script("linearizer")}
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    # the long waits first, so that they overlap with everything else
    order = sorted(CASES, key=lambda k: -CASES[k].timeout_s)
    futures: dict[str, Future] = {}
    for name in order:
        cwd = tmp / f"cwd-{len(futures)}"
        cwd.mkdir()
        futures[name] = pool.submit(_run, CASES[name], values, cwd)
    yield futures, values
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", list(CASES))
def test_entry_point_fails_cleanly(launched, name, figures):
    futures, values = launched
    case = CASES[name]
    outcome = futures[name].result()
    figures.count("cli_bad_inputs_tried")
    figures.note(f"cli seconds: {name}", round(outcome.seconds, 1))
    assert not outcome.killed or outcome.timed_out
    assert not outcome.timed_out, f"{name}: running after {case.timeout_s:.0f} s; output:\n{outcome.output[-2000:]}"
    assert outcome.code not in (0, None), outcome.output[-2000:]
    if case.code is not None:
        assert outcome.code == case.code, (outcome.code, outcome.output[-2000:])
    assert "Traceback (most recent call last)" not in outcome.output, outcome.output[-3000:]
    for fragment in case.says:
        assert fragment.format(**values) in outcome.output, (fragment, outcome.output[-2000:])
    figures.count("cli_bad_inputs_clean")


def test_serving_client_gets_a_clear_error_for_a_missing_model_or_alias(mlflow_store, launched, figures):
    from mlflow.exceptions import MlflowException

    from pipelines.registry import load_registered

    load_registered("reliability-cli", "challenger", mlflow_store.tracking_uri)  # exists: loads
    for name, alias, says in [("reliability-cli", "nightly", "nightly"),
                              ("no-such-model", "challenger", "no-such-model")]:
        figures.count("cli_bad_inputs_tried")
        with pytest.raises(MlflowException, match=says):
            load_registered(name, alias, mlflow_store.tracking_uri)
        figures.count("cli_bad_inputs_clean")
