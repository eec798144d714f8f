"""ZeRO stages and precisions through the real pipeline: local Ray, DeepSpeed on CPU, 2 workers.

ZeRO-3 holds each rank's slice of a weight and gathers the whole weight only inside its module's
`forward` (module hooks). The fast test below checks that contract without DeepSpeed: with every
parameter emptied outside its module's forward, the one-step model still encodes, decodes and
samples, bit-identically.

The one-step Linearizer trains on shards that hold one image many times, so every batch of every
stream is the same batch: a run stopped at step 2 and resumed must then end bit-identical to a
run that never stopped (weights, Adam moments and the step count all have to come back exactly),
although a resumed run draws a fresh data stream. The kind's per-sample noise is seeded by
(seed, rank, step), so the loss a worker logs can be recomputed here from the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from linearizer.io import load_model
from linearizer.kinds import get_kind
from linearizer.onestep.model import noise_like
from linearizer.viz import make_grid, to_pil
from pipelines.shards import digits_samples, iter_batches, write_shards
from pipelines.train import consolidated_state_dict, train
from linearizer.config import ModelConfig, from_dict
from pipelines.train.worker import _seed
from tests.toy_kind import ONESTEP_MODEL, tiny_job

ROOT = Path(__file__).resolve().parents[1]


class EmptyOutsideForward:
    """Keep every parameter empty (`[0]`, its dtype kept) except while its own module's forward
    runs, as ZeRO-3 keeps a partition: any read of a weight outside that window fails or
    gives a wrong shape.

    Args:
        model: the module whose parameters are managed (hooks on every module that owns some).
    """

    def __init__(self, model: torch.nn.Module):
        self.whole: dict[torch.nn.Parameter, torch.Tensor] = {}
        for module in model.modules():
            if next(module.parameters(recurse=False), None) is not None:
                module.register_forward_pre_hook(self._gather)
                module.register_forward_hook(self._release)
        for p in model.parameters():
            self.whole[p] = p.data
            p.data = p.data.new_empty(0)

    def _gather(self, module: torch.nn.Module, args) -> None:
        for p in module.parameters(recurse=False):
            p.data = self.whole[p]

    def _release(self, module: torch.nn.Module, args, output) -> None:
        for p in module.parameters(recurse=False):
            p.data = p.data.new_empty(0)


@pytest.mark.parametrize("scales", [1, 2], ids=["one-scale", "multiscale"])
def test_flows_and_sampler_use_weights_only_inside_their_modules_forward(scales):
    cfg = from_dict(ModelConfig, {**ONESTEP_MODEL, "flow": {**ONESTEP_MODEL["flow"], "scales": scales}})
    kind = get_kind("onestep")
    torch.manual_seed(0)
    model = kind.build(cfg).double()
    x1 = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model.initialize(x1, torch.Generator().manual_seed(2))
    model.eval()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            z1 = model.encode_data(x1)
            return [z1, model.decode_data(z1), model.decode_noise(model.encode_noise(x0)),
                    model.sample_multistep(x0, steps=4)]

    whole = run()
    EmptyOutsideForward(model)
    assert all(p.numel() == 0 for p in model.parameters())
    for got, want in zip(run(), whole):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(whole[1], x1, rtol=0, atol=1e-12)  # the inverse really inverts


@pytest.fixture(scope="module")
def one_image_shards(tmp_path_factory) -> Path:
    """64 copies of one 8x8 digit in 2 shards (prefix `digits-train`, as `tiny_job` reads)."""
    directory = tmp_path_factory.mktemp("one-image")
    first = next(digits_samples("train", 8, 1))
    write_shards(({**first} for _ in range(64)), directory, "digits-train", maxcount=32)
    return directory


@pytest.fixture(scope="module")
def zero3_partitioned(tmp_path_factory) -> Path:
    """`infra/deepspeed/zero3.json` with a persistence threshold of 0: every parameter is
    partitioned, so each use of a weight outside a gathering hook would fail."""
    ds = json.loads((ROOT / "infra/deepspeed/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path_factory.mktemp("ds") / "zero3-partitioned.json"
    path.write_text(json.dumps(ds))
    return path


def _job(tmp_path: Path, name: str, shards: Path, store, distributed: dict, **sections):
    return tiny_job(tmp_path, name, shards, store.tracking_uri, store.artifact_location, model=ONESTEP_MODEL,
                    distributed={"num_workers": 2, "cpus_per_worker": 0.5, **distributed}, **sections)


def _weights(outcome, zero_stage: int) -> dict[str, torch.Tensor]:
    return consolidated_state_dict(outcome.checkpoint, zero_stage)


def _logged_grid(store, run_id: str, step: int) -> np.ndarray:
    """The sample grid the workers logged at `step`, as uint8 pixels."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    client = MlflowClient(store.tracking_uri)
    names = [a.path for a in client.list_artifacts(run_id, "images")
             if a.path.startswith(f"images/samples+step+{step}+") and a.path.endswith(".png")]
    assert len(names) == 1, f"expected one grid at step {step}, found {names}"
    local = client.download_artifacts(run_id, names[0])
    return np.asarray(Image.open(local))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_onestep_resumes_bit_exactly_and_exports_the_live_model(stage, ray_local, mlflow_store, one_image_shards,
                                                                    zero3_partitioned, tmp_path):
    distributed: dict = {"zero_stage": stage}
    if stage == 3:
        distributed["deepspeed_config"] = str(zero3_partitioned)
    straight = train(_job(tmp_path, f"zero{stage}-straight", one_image_shards, mlflow_store, distributed))
    assert (straight.metrics["step"], straight.metrics["start_step"]) == (4, 0)
    assert np.isfinite(straight.metrics["loss"])

    _ = train(_job(tmp_path, f"zero{stage}-resumed", one_image_shards, mlflow_store, distributed,
                   train={"steps": 2}))
    resumed = train(_job(tmp_path, f"zero{stage}-resumed", one_image_shards, mlflow_store, distributed))
    assert (resumed.metrics["step"], resumed.metrics["start_step"]) == (4, 2)

    # Bit-exact resume: the same weights after 4 steps, stopped at 2 or not.
    a, b = _weights(straight, stage), _weights(resumed, stage)
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    start = consolidated_state_dict(Path(straight.checkpoint).parent / "checkpoint_00000002", stage)
    assert any(not torch.equal(start[k], a[k]) for k in a), "steps 3 and 4 changed no weight"

    # The export (ZeRO partitions consolidated -> safetensors) samples what the live (at ZeRO-3:
    # partitioned) model sampled at its last step: the same grid, pixel for pixel.
    model, _ = load_model(straight.model_dir)
    job = _job(tmp_path, f"zero{stage}-straight", one_image_shards, mlflow_store, distributed)
    x0 = noise_like(torch.empty(job.mlflow.sample_grid, *model.image_shape),
                    torch.Generator().manual_seed(job.train.seed))
    with torch.no_grad():
        exported = model.sample_multistep(x0).clamp(0, 1)
    rendered = np.asarray(to_pil(make_grid(exported)))
    np.testing.assert_array_equal(rendered, _logged_grid(mlflow_store, straight.run_id, 4))


@pytest.mark.slow
def test_zero0_bf16_trains_under_autocast_and_exports_the_module_state(ray_local, mlflow_store, one_image_shards,
                                                                       tmp_path):
    job = _job(tmp_path, "zero0-bf16", one_image_shards, mlflow_store, {"zero_stage": 0, "precision": "bf16"},
               train={"steps": 2})
    outcome = train(job)
    assert outcome.metrics["step"] == 2

    # ZeRO-0 export reads DeepSpeed's whole-module file; the exported weights are exactly it.
    checkpoint = Path(outcome.checkpoint)
    tag = (checkpoint / "latest").read_text().strip()
    module = torch.load(checkpoint / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)["module"]  # written by this test's run
    exported, _ = load_model(outcome.model_dir)
    for key, value in exported.state_dict().items():
        if not key.startswith("B_"):  # B is built by the export (finalize), not trained
            torch.testing.assert_close(value, module[key].to(value.dtype), rtol=0, atol=0, msg=key)

    # The logged step-1 loss is the kind's loss under bf16 autocast on the workers' initial model,
    # recomputed here: it matches in bf16 and is measurably off the fp32 loss.
    from mlflow.tracking import MlflowClient

    history = MlflowClient(mlflow_store.tracking_uri).get_metric_history(outcome.run_id, "loss")
    logged = next(m.value for m in history if m.step == 1)
    kind = get_kind("onestep")
    # every batch of these shards is the same: any rank's first batch is the workers' batch
    micro = job.train.batch_size // 2
    batch = next(iter_batches(one_image_shards, job.data.train_prefix, micro, 0, 2, seed=0, steps=1))
    torch.manual_seed(job.train.seed)
    model = kind.build(job.model)
    model.train()
    with torch.no_grad():
        kind.loss(model, batch, torch.Generator().manual_seed(_seed(job.train.seed, 0, 7)))  # rank 0's ActNorm init

    def step1_loss(bf16: bool) -> float:
        losses = []
        for rank in range(2):
            generator = torch.Generator().manual_seed(_seed(job.train.seed, rank, 1))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses.append(float(kind.loss(model, batch, generator)[0]))
        return sum(losses) / 2

    bf16, fp32 = step1_loss(True), step1_loss(False)
    assert logged == pytest.approx(bf16, rel=1e-6, abs=1e-7)
    assert abs(bf16 - fp32) > 1e-4 * abs(fp32), "autocast changed nothing: bf16 was not in effect"
