"""The reference job of the fault tests and what its final checkpoint records.

The reference job: a 2-worker DeepSpeed run of the real one-step kind (`tests.toy_kind`'s
`ONESTEP_MODEL`, 8x8) on a *constant* data set (every sample is the same image). With
constant data the order in which samples are drawn does not matter, so a run that restarts from
a checkpoint must end with exactly the weights of a run that never stopped, bit for bit: the
weights, the optimiser state, the step counter and the per-step noise seeds must all survive
the restart. (With real data they cannot match: a resumed run draws a fresh sample stream
seeded by the step it resumes from; see docs/reliability.md.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.toy_kind import ONESTEP_MODEL, tiny_job

CONSTANT_PREFIX = "const-train"
#: reference job: 6 steps, a checkpoint every 2 (checkpoints 2, 4 and 6).
STEPS, CHECKPOINT_EVERY = 6, 2


def reference_job(tmp: Path, name: str, shards: Path, store, **sections: Any):
    """The reference configuration (see the module docstring); `sections` update it."""
    train = {"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, **sections.pop("train", {})}
    data = {"source": "none", "prefix": CONSTANT_PREFIX, **sections.pop("data", {})}
    model = {**ONESTEP_MODEL, **sections.pop("model", {})}
    return tiny_job(tmp, name, shards, store.tracking_uri, store.artifact_location, model=model,
                    train=train, data=data, **sections)


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
