"""End-to-end pipeline runs: real local Ray, DeepSpeed on CPU, MLflow on SQLite, real shards.

Each run is 2 workers x 0.5 CPU on 8x8 digits for a few steps. One Ray instance serves the whole
module (`ray_local`), one MLflow store the whole session (`mlflow_store`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from linearizer.io import load_model
from linearizer.kinds import get_kind
from pipelines.config import config_hash
from pipelines.shards import digits_samples, write_shards
from pipelines.train import FAULT_MARKER, consolidated_state_dict, train
from tests.toy_kind import ONESTEP_MODEL, tiny_job

pytestmark = pytest.mark.slow

#: runs in a fresh interpreter: load the registered model by alias and sample from given noise.
SERVE = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
y = model.predict(np.load(sys.argv[3]), params={"mode": "sample"})
np.save(sys.argv[4], y)
print(json.dumps({"heavy": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "deepspeed"})}))
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """256 scikit-learn digits at 8x8 in 4 shards."""
    directory = tmp_path_factory.mktemp("shards")
    write_shards(digits_samples("train", 8, 256), directory, "digits-train", maxcount=64)
    return directory


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.tracking_uri)


def _metric_steps(store, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client(store).get_metric_history(run_id, key))


def test_onestep_job_registers_a_model_a_fresh_process_serves(ray_local, mlflow_store, shards, tmp_path):
    cfg = tiny_job(tmp_path, "onestep-registry", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                   model=ONESTEP_MODEL, mlflow={"registered_model": "onestep-tiny"})
    outcome = train(cfg)

    assert outcome.metrics["step"] == 4 and outcome.metrics["world_size"] == 2
    assert np.isfinite(outcome.metrics["loss"])
    client = _client(mlflow_store)
    version = client.get_model_version_by_alias("onestep-tiny", "challenger")
    assert str(version.version) == outcome.model_version
    assert version.tags == {"kind": "onestep", "run_id": outcome.run_id, "config_hash": config_hash(cfg)}
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.kind"] == "onestep" and run.data.params["distributed.zero_stage"] == "1"
    assert _metric_steps(mlflow_store, outcome.run_id, "loss") == [1, 2, 3, 4]
    assert all(m.value > 0 for m in client.get_metric_history(outcome.run_id, "samples_per_s"))
    assert client.list_artifacts(outcome.run_id, "images"), "no sample grids were logged"

    # A fresh interpreter loads the version by alias and samples; it must agree with the exported
    # model run in this process, and serving must not need Ray or DeepSpeed.
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).numpy()
    np.save(tmp_path / "noise.npy", noise)
    proc = subprocess.run([sys.executable, "-c", SERVE, mlflow_store.tracking_uri, "models:/onestep-tiny@challenger",
                           str(tmp_path / "noise.npy"), str(tmp_path / "served.npy")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"heavy": []}
    served = np.load(tmp_path / "served.npy")
    model, _ = load_model(outcome.model_dir)
    expected = get_kind("onestep").predict(model, torch.from_numpy(noise), {"mode": "sample"}).numpy()
    assert served.shape == (3, 1, 8, 8) and served.dtype == np.float32
    assert ((served >= 0) & (served <= 1)).all()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_zero2_checkpoint_is_resumed_by_a_run_of_the_same_name(ray_local, mlflow_store, shards, tmp_path):
    first = tiny_job(tmp_path, "toy-resume", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                     distributed={"zero_stage": 2})
    a = train(first)
    assert (a.metrics["step"], a.metrics["start_step"]) == (4, 0)

    again = tiny_job(tmp_path, "toy-resume", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                     distributed={"zero_stage": 2}, train={"steps": 6})
    b = train(again)
    assert (b.metrics["step"], b.metrics["start_step"]) == (6, 4)
    assert b.run_id == a.run_id, "a resubmitted job must log into its earlier MLflow run"
    assert _metric_steps(mlflow_store, b.run_id, "loss") == [1, 2, 3, 4, 5, 6]
    changed = json.loads(_client(mlflow_store).get_run(b.run_id).data.tags["linearizer.changed_params"])
    assert changed == {"train.steps": "6"}

    # The export reassembles ZeRO-2 partitions; with fp32 training they equal the module weights
    # DeepSpeed also saved whole, which checks the consolidation independently.
    checkpoint = Path(b.checkpoint)
    assert checkpoint.name == "checkpoint_00000006"
    tag = (checkpoint / "latest").read_text().strip()
    states = checkpoint / tag / "mp_rank_00_model_states.pt"
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]  # written by this test
    exported, _ = load_model(b.model_dir)
    consolidated = consolidated_state_dict(checkpoint, zero_stage=2)
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, module[key].to(value.dtype), rtol=0, atol=0, msg=key)
        torch.testing.assert_close(consolidated[key].to(value.dtype), value, rtol=0, atol=0, msg=key)


def test_killed_worker_is_restarted_from_the_last_checkpoint(ray_local, mlflow_store, shards, tmp_path):
    cfg = tiny_job(tmp_path, "toy-fault", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                   train={"steps": 6, "checkpoint_every": 2},
                   distributed={"max_failures": 1, "fault_injection": {"rank": 1, "step": 4}})
    outcome = train(cfg)

    marker = json.loads((cfg.run_dir / FAULT_MARKER).read_text())
    assert (marker["rank"], marker["step"]) == (1, 4)
    # Step 4 killed rank 1 before it ran; the new worker group resumed from step 2's checkpoint.
    assert (outcome.metrics["step"], outcome.metrics["start_step"]) == (6, 2)
    steps = _metric_steps(mlflow_store, outcome.run_id, "loss")
    assert steps == [1, 2, 3, 3, 4, 5, 6], "step 3 runs twice: once before the crash, once after the restart"
