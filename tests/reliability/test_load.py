"""Load: evaluation jobs submitted all at once against one registry lose and duplicate nothing.

Three versions of a tiny one-step model are registered (their collapsed B made stale by
different amounts, so their one-step / multi-step agreement differs), then every version is
submitted twice, as two schedulers would, all six as separate `python -m pipelines.evaluate`
processes started together on one SQLite registry. Afterwards:

- every job exits 0; per version exactly one job evaluated it and the other skipped it;
- each version carries exactly one finished evaluation (tags, attempts, one evaluation run);
- the decisions replay: taken one at a time in the order recorded, each compared the version
  with the champion of that moment, and the champion alias ends on the best passing version;
- the registry lock is released (no `<model>.evaluation-lock` left).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.registry_models import onestep_model, register
from tests.reliability.procs import REPO, family, reap

pytestmark = pytest.mark.slow

MODEL = "reliability-load"
STALENESS = (0.0, 0.02, 0.2)
SUBMISSIONS_PER_VERSION = 2
SETTINGS = ["fid.extractor=off", "sampling.max_fid=null", "sampling.primary=agreement_db", "sampling.min_agreement_db=20", "sampling.n=16",
            "sampling.agreement_n=8", "sampling.batch_size=16", "sampling.timing_batches=1", "sampling.grid=4",
            "promotion.lock_timeout_s=300"]


@pytest.mark.timeout(900)
def test_concurrent_evaluation_jobs_lose_and_duplicate_no_decision(mlflow_store, tmp_path, figures):
    from mlflow.tracking import MlflowClient

    versions = [register(mlflow_store, MODEL, *onestep_model(seed, stale=stale), tmp_path)
                for seed, stale in enumerate(STALENESS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    jobs = []
    for i, version in enumerate(v for v in versions for _ in range(SUBMISSIONS_PER_VERSION)):
        cwd = tmp_path / f"job{i}"
        cwd.mkdir()
        args = ["--tracking-uri", mlflow_store.tracking_uri, "--model", MODEL, "--version", version, "--local",
                *[a for s in SETTINGS for a in ("--set", s)]]
        jobs.append((version, subprocess.Popen([sys.executable, "-m", "pipelines.evaluate", *args], cwd=cwd, env=env,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    started = time.perf_counter()
    outcomes = []
    try:
        for version, proc in jobs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"v{version} exited {proc.returncode}:\n{err[-3000:]}"
            assert "Traceback" not in err, err[-3000:]
            outcomes.append((version, json.loads(out)))
    finally:
        for _, proc in jobs:
            if proc.poll() is None:
                reap(family(proc.pid))
    figures.note("load_jobs_seconds", round(time.perf_counter() - started, 1))
    figures.count("load_jobs_submitted", len(jobs))

    client = MlflowClient(mlflow_store.tracking_uri)
    decided = {}
    for version in versions:
        statuses = sorted(s["status"] for v, s in outcomes if v == version)
        assert statuses == ["evaluated", "skipped"], (version, statuses)  # none lost, none duplicated
        evaluated = next(s for v, s in outcomes if v == version and s["status"] == "evaluated")
        tags = client.get_model_version(MODEL, version).tags
        assert (tags["eval.status"], tags["eval.attempts"]) == ("done", "1"), tags
        assert tags["eval.decision"] == evaluated["decision"]["action"]
        assert tags["eval.run_id"] == evaluated["run_id"]
        decided[version] = (float(tags["eval.decided_at"]), evaluated["decision"], tags["eval.passed"] == "true",
                            float(tags["eval.primary_value"]))
    experiment = client.get_experiment_by_name("linearizer-evaluation")
    runs = client.search_runs([experiment.experiment_id], f"tags.`linearizer.model_name` = '{MODEL}'")
    assert sorted(r.data.tags["linearizer.model_version"] for r in runs) == sorted(versions)  # one run each

    champion = None  # replay the decisions in the order they were taken
    for version in sorted(decided, key=lambda v: decided[v][0]):
        _, decision, passed, value = decided[version]
        if not passed:
            assert decision["action"] == "rejected"
        elif champion is None or value > decided[champion][3]:
            assert decision["action"] == "promoted", (version, decision)
            champion = version
        else:
            assert decision["action"] == "kept", (version, decision)
    if champion is None:
        assert not client.get_registered_model(MODEL).aliases.get("champion")
    else:
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == champion
    assert not [m.name for m in client.search_registered_models(f"name = '{MODEL}.evaluation-lock'")]
    figures.count("load_decisions_recorded", len(decided))
    figures.note("load_decisions", {v: d[1]["action"] for v, d in decided.items()})
