"""Tiny registered models for the evaluation and scheduling tests.

Each helper builds a model of one kind small enough to evaluate in about a second on a CPU,
saves it with `linearizer.io` and registers it with the training pipeline's own
`pipelines.registry.register_model`, so the tests see exactly what training produces.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from linearizer.config import FlowConfig, ModelConfig, OperatorConfig, SamplerConfig, from_dict, to_dict
from linearizer.io import save_model
from linearizer.kinds import get_kind
from pipelines.evaluate import load_eval_config

ONESTEP = ModelConfig(kind="onestep", image_shape=(1, 32, 32), flow=FlowConfig(depth=1, hidden=4),
                      operator=OperatorConfig(rank=2, time_embed_dim=8, hidden=16), sampler=SamplerConfig(steps=4))
#: a classifier budget of seconds: the FID extractor is real, only small.
TINY_FID = ["fid.extractor=mnist-classifier", "fid.classifier_steps=20", "fid.classifier_limit=256", "fid.n_real=128"]


def onestep_model(seed: int = 0, stale: float = 0.0):
    """A tiny one-step model with B built; `stale > 0` perturbs A(t) afterwards (B no longer fits)."""
    kind = get_kind("onestep")
    torch.manual_seed(seed)
    model = kind.build(ONESTEP)
    model.initialize(torch.rand(8, 1, 32, 32))
    kind.finalize(model)
    with torch.no_grad():
        for p in model.A.parameters():
            p.add_(stale * torch.randn_like(p))
    return model, ONESTEP


def projective_model():
    from linearizer.projective.defaults import projective_config

    cfg = projective_config(rank=4, depth=1, hidden=4)
    torch.manual_seed(0)
    model = get_kind("projective").build(cfg)
    model.initialize(torch.rand(8, 1, 32, 32))
    return model, cfg


def style_model():
    cfg = from_dict(ModelConfig, {"kind": "style", "image_shape": [3, 16, 16], "flow": {"depth": 1, "hidden": 4},
                                  "operator": {"styles": ["grade", "pencil"], "kernel_size": 2}})
    torch.manual_seed(0)
    model = get_kind("style").build(cfg)
    model.initialize(torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16))
    with torch.no_grad():  # two distinct styles (both start as the identity)
        for p in model.operators.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, cfg


def register(store, name: str, model, cfg: ModelConfig, tmp: Path) -> str:
    """Save and register `model` as a new version of `name` the way training does; returns it."""
    from pipelines.config import JobConfig
    from pipelines.registry import register_model
    from pipelines.tracking import end_run, start_run

    job = from_dict(JobConfig, {
        "name": f"{name}-{time.time_ns()}", "output_dir": str(tmp), "model": to_dict(cfg),
        "data": ({"source": "digits", "heldout_split": None} if tuple(cfg.image_shape) == (1, 32, 32)
                 else {"source": "none", "prefix": "unused"}),
        "mlflow": {"tracking_uri": store.tracking_uri, "artifact_location": store.artifact_location,
                   "experiment": "evaluate-tests", "registered_model": name}})
    model_dir = save_model(model, cfg, tmp / f"{job.name}-model")
    run = start_run(job)
    version = register_model(model_dir, job, run)
    end_run(run, "FINISHED")
    return version


#: The tiny models above are untrained: every default quality floor refuses them, as it should.
#: Tests of other mechanisms (tags, claims, ranking, reports) waive the floors; tests/test_floors.py
#: keeps them.
WAIVE_FLOORS = ["sampling.max_fid=null", "projection.max_fixed_point_error=null", "projection.min_denoise_gain_db=null",
                "style.min_gain_db=null"]


def eval_cfg(store, tmp: Path, name: str, *overrides: str, floors: bool = False):
    """An evaluation config of `name` in `store`, small sizes; `floors=False` waives the quality floors."""
    return load_eval_config(None, [f"mlflow.tracking_uri={store.tracking_uri}", f"mlflow.registered_model={name}",
                                   f"mlflow.artifact_location={store.artifact_location}", f"output_dir={tmp}",
                                   "ray.enabled=false", "sampling.n=32", "sampling.agreement_n=8",
                                   "sampling.batch_size=32", "sampling.timing_batches=1",
                                   *([] if floors else WAIVE_FLOORS), *overrides])
