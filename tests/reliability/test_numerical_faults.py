"""Numerical faults: NaN / inf in the loss and in `g`'s inverse.

- Library training (`linearizer.training.fit`): a NaN in the data or exploding coupling scales
  stop training at that step with a `FloatingPointError` naming it, and the weights stay those
  of the last good step.
- Distributed training (Ray Train + DeepSpeed, slow): the coupling scales of the real one-step
  model explode at step 5 (`faulty_kinds.ExplodingKind`); the job must stop with an error naming
  the step and the last good checkpoint, which must stay in storage, complete and usable.
- Sampling: a model whose `g` overflows must not hand back NaN images as if they were images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linearizer.config import ModelConfig, TrainConfig, from_dict
from linearizer.kinds import get_kind
from linearizer.training import fit
from tests.registry_models import onestep_model, projective_model, style_model
from tests.reliability.faulty_kinds import EXPLODE_AT_STEP, explode_coupling_scales
from tests.reliability.reference import CHECKPOINT_EVERY, reference_job
from tests.toy_kind import ONESTEP_MODEL

POISON_STEP = 4


def _tiny_onestep(kind: str = "onestep"):
    cfg = from_dict(ModelConfig, {**ONESTEP_MODEL, "kind": kind})
    torch.manual_seed(0)
    model = get_kind(kind).build(cfg)
    model.initialize(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    return model


def _batches(n: int, poison_at: int | None = None) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    batches = [{"image": torch.rand(8, 1, 8, 8, generator=g)} for _ in range(n)]
    if poison_at is not None:
        batches[poison_at - 1]["image"][3, 0, 4, 4] = float("nan")
    return batches


def test_nan_in_the_loss_stops_fit_and_keeps_the_last_good_weights(figures):
    cfg = TrainConfig(steps=6, lr=1e-2, seed=0)
    good = _tiny_onestep()
    fit("onestep", good, _batches(POISON_STEP - 1), TrainConfig(steps=POISON_STEP - 1, lr=1e-2, seed=0),
        progress=False)

    model = _tiny_onestep()
    figures.count("numerical_faults_injected")
    with pytest.raises(FloatingPointError, match=rf"non-finite loss nan at step {POISON_STEP}"):
        fit("onestep", model, _batches(6, poison_at=POISON_STEP), cfg, progress=False)
    for (name, p), q in zip(model.state_dict().items(), good.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # step 4 changed nothing
    figures.count("numerical_faults_stopped_cleanly")


def test_exploding_coupling_scales_stop_fit_at_that_step(figures):
    model = _tiny_onestep("exploding")  # registered by importing faulty_kinds (above)
    figures.count("numerical_faults_injected")
    with pytest.raises(FloatingPointError, match=rf"non-finite loss \S+ at step {EXPLODE_AT_STEP}"):
        fit("exploding", model, _batches(8), TrainConfig(steps=8, seed=0), progress=False)
    assert int(model.steps_taken) == EXPLODE_AT_STEP
    figures.count("numerical_faults_stopped_cleanly")


SAMPLING = [
    ("onestep", lambda: onestep_model(0), (2, 1, 32, 32), {"mode": "sample"}),
    ("onestep", lambda: onestep_model(0), (2, 1, 32, 32), {"mode": "sample_multistep", "steps": 4}),
    ("onestep", lambda: onestep_model(0), (2, 1, 32, 32), {"mode": "reconstruct"}),
    ("projective", projective_model, (2, 1, 32, 32), {"mode": "sample"}),
    ("style", style_model, (2, 3, 16, 16), {"mode": "style", "style": "grade"}),
]


@pytest.mark.parametrize("kind_name, build, shape, params", SAMPLING,
                         ids=[f"{k}-{p['mode']}" for k, _, _, p in SAMPLING])
def test_sampling_refuses_to_return_non_finite_images(kind_name, build, shape, params):
    model, _ = build()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    assert bool(get_kind(kind_name).predict(model, x, params).isfinite().all())  # healthy model first
    assert explode_coupling_scales(model) > 0
    with pytest.raises((ValueError, FloatingPointError), match="non-finite"):
        get_kind(kind_name).predict(model, x, params)


@pytest.mark.slow
def test_distributed_training_stops_on_exploding_scales_and_keeps_the_last_good_checkpoint(
        ray_local, mlflow_store, constant_shards, tmp_path, figures):
    from mlflow.tracking import MlflowClient

    from pipelines.train import export_model, train

    cfg = reference_job(tmp_path, "exploding-scales", constant_shards, mlflow_store,
                        imports=["tests.toy_kind", "tests.reliability.faulty_kinds"],
                        model={"kind": "exploding"}, distributed={"max_failures": 0})
    last_good = f"checkpoint_{(EXPLODE_AT_STEP - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY:08d}"
    figures.count("numerical_faults_injected")
    with pytest.raises(Exception) as info:
        train(cfg)
    message = str(info.value)
    assert f"non-finite loss at step {EXPLODE_AT_STEP}" in message, message[-3000:]
    assert last_good in message, message[-3000:]  # the error says which checkpoint is still good

    storage = Path(cfg.resolved_storage_path()) / cfg.name
    snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == last_good
    assert sorted(p.name for p in storage.glob("checkpoint_*") if p.is_dir()) == [
        f"checkpoint_{s:08d}" for s in range(CHECKPOINT_EVERY, EXPLODE_AT_STEP, CHECKPOINT_EVERY)]
    # The kept checkpoint is complete and gives a working model with finite samples.
    state = json.loads((storage / last_good / "linearizer_state.json").read_text())
    assert state["step"] == EXPLODE_AT_STEP - 1
    model, _ = export_model(storage / last_good, cfg.model, get_kind("exploding"), cfg.distributed.zero_stage,
                            tmp_path / "recovered")
    assert all(bool(v.isfinite().all()) for v in model.state_dict().values() if v.is_floating_point())
    samples = get_kind("exploding").predict(model, torch.randn(4, 1, 8, 8), {"mode": "sample"})
    assert bool(samples.isfinite().all())

    client = MlflowClient(mlflow_store.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (cfg.run_dir / "model").exists() and not (cfg.run_dir / "result.json").exists()
    figures.count("numerical_faults_stopped_cleanly")
