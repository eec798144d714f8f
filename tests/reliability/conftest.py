"""Fixtures of the reliability suite: its figures, a constant shard set, the reference run.

Figures: tests count what they inject and what survives (`figures.count("worker_faults_injected")`);
with `RELIABILITY_FIGURES=path.json` set, the totals of the session are written there, which is
how docs/reliability.md gets its numbers:

    RELIABILITY_FIGURES=/tmp/figures.json .venv/bin/pytest -q tests/reliability

The reference run: a 2-worker DeepSpeed job of the real one-step kind on a *constant* data set
(every sample is the same image). With constant data the order in which samples are drawn does
not matter, so a run that restarts from a checkpoint must end with exactly the weights of a run
that never stopped, bit for bit: the weights, the optimiser state, the step counter and the
per-step noise seeds must all survive the restart. (With real data they cannot match: a resumed
run draws a fresh sample stream seeded by the step it resumes from, see docs/reliability.md.)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.toy_kind import ONESTEP_MODEL, tiny_job

CONSTANT_PREFIX = "const-train"
#: reference job: 6 steps, a checkpoint every 2 (checkpoints 2, 4 and 6).
STEPS, CHECKPOINT_EVERY = 6, 2


class Figures:
    """Session-wide counters, written to $RELIABILITY_FIGURES at the end of the session."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.notes: dict[str, Any] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value


@pytest.fixture(scope="session")
def figures():
    recorder = Figures()
    yield recorder
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        Path(path).write_text(json.dumps({"counts": dict(sorted(recorder.counts.items())), "notes": recorder.notes},
                                         indent=2, sort_keys=True, default=str) + "\n")


@pytest.fixture(scope="session")
def constant_shards(tmp_path_factory) -> Path:
    """128 copies of one random 8x8 image, in 4 shards."""
    from pipelines.data import write_shards

    directory = tmp_path_factory.mktemp("constant-shards")
    image = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    write_shards(({"image": image, "label": 0} for _ in range(128)), directory, CONSTANT_PREFIX, maxcount=32)
    return directory


def reference_job(tmp: Path, name: str, shards: Path, store, **sections: Any):
    """The reference configuration (see the module docstring); `sections` update it."""
    train = {"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, **sections.pop("train", {})}
    data = {"source": "none", "prefix": CONSTANT_PREFIX, **sections.pop("data", {})}
    return tiny_job(tmp, name, shards, store.tracking_uri, store.artifact_location, model=ONESTEP_MODEL,
                    train=train, data=data, **sections)


@pytest.fixture(scope="session")
def uninterrupted(ray_local, mlflow_store, constant_shards, tmp_path_factory):
    """The reference job run once, start to end, with no fault (shared by every comparison)."""
    from pipelines.train import train

    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = reference_job(tmp, "reference", constant_shards, mlflow_store)
    return cfg, train(cfg)


def final_state(checkpoint: str | Path) -> dict[str, Any]:
    """What a final DeepSpeed checkpoint of the pipeline records: the engine's optimiser step
    count, the pipeline's step, Adam's per-parameter step counts (one per rank partition), and
    the consolidated fp32 weights. Only checkpoints our own runs wrote are loaded."""
    from pipelines.train import consolidated_state_dict

    checkpoint = Path(checkpoint)
    tag = (checkpoint / "latest").read_text().strip()
    model_states = torch.load(checkpoint / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=False)  # written by this suite's own run
    adam_steps = []
    for path in sorted((checkpoint / tag).glob("*optim_states.pt")):
        optim = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        inner = optim.get("base_optimizer_state", optim)
        states = inner["state"] if isinstance(inner, dict) and "state" in inner else inner
        for entry in (states.values() if isinstance(states, dict) else states):
            if isinstance(entry, dict) and "step" in entry:
                adam_steps.append(int(torch.as_tensor(entry["step"]).item()))
    return {"global_steps": int(model_states["global_steps"]),
            "pipeline_step": json.loads((checkpoint / "linearizer_state.json").read_text())["step"],
            "adam_steps": sorted(set(adam_steps)),
            "weights": consolidated_state_dict(checkpoint, zero_stage=1)}
