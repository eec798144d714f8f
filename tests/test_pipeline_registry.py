"""The registry contract without a training run: save a toy model, register it, load it back
(MLflow on SQLite in tmp; no Ray)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from linearizer.config import ModelConfig, from_dict
from linearizer.io import load_model, save_model
from pipelines.config import config_hash, load_job_config
from pipelines.registry import MODEL_CODE, load_registered, register_model, signature_for
from pipelines.tracking import end_run, start_run
from tests.toy_kind import TOY_MODEL, ToyKind


@pytest.fixture
def toy_model_dir(tmp_path) -> Path:
    cfg = from_dict(ModelConfig, TOY_MODEL)
    torch.manual_seed(0)
    model = ToyKind().build(cfg)
    model.train()
    model(torch.rand(8, 1, 8, 8))  # sets the data-dependent buffer
    return save_model(model.eval(), cfg, tmp_path / "model")


def test_signature_declares_mode_and_the_kinds_param_types(toy_model_dir):
    signature = signature_for(toy_model_dir)
    params = {p.name: (p.dtype.name, p.default) for p in signature.params}
    assert params == {"mode": ("string", "sample"), "scale": ("double", None)}
    assert signature.inputs.inputs[0].shape == (-1, 1, 8, 8)


@pytest.mark.slow
def test_registered_version_loads_by_alias_without_pickles(toy_model_dir, mlflow_store, tmp_path):
    job = load_job_config(base={
        "name": "toy-registry", "output_dir": str(tmp_path), "imports": ["tests.toy_kind"], "model": TOY_MODEL,
        "data": {"source": "digits", "heldout_split": None},
        "mlflow": {"tracking_uri": mlflow_store.tracking_uri, "artifact_location": mlflow_store.artifact_location,
                   "experiment": "toy-registry", "registered_model": "toy-registry"}})
    run = start_run(job)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # MLflow must not complain about the model class
        version = register_model(toy_model_dir, job, run, imports=job.imports)
    end_run(run, "FINISHED")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store.tracking_uri)
    mv = client.get_model_version_by_alias("toy-registry", "challenger")
    assert str(mv.version) == version
    assert mv.tags == {"kind": "toy", "run_id": run.run_id, "config_hash": config_hash(job)}
    import mlflow

    stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/toy-registry/{version}",
                                                      dst_path=str(tmp_path / "downloaded")))
    files = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files), sorted(files)
    assert any(f.endswith("model.safetensors") for f in files)
    code = [p for p in stored.rglob("*.py")]
    assert [p.read_text() for p in code] == [MODEL_CODE]

    model = load_registered("toy-registry", "challenger", mlflow_store.tracking_uri)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    kind, (reference, _) = ToyKind(), load_model(toy_model_dir)
    for params in ({"mode": "reconstruct"}, {"mode": "sample", "scale": 2.0}, None):
        expected = kind.predict(reference, torch.from_numpy(x), params or {"mode": "sample"}).numpy()
        np.testing.assert_allclose(model.predict(x, params=params), expected, rtol=0, atol=1e-6)
