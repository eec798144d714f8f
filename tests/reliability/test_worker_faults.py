"""Worker faults: a training worker dies at a random step; the run restarts and loses nothing.

The pipeline's own fault injection (`distributed.fault_injection`) makes one rank call
`os._exit(1)` at the start of a step, once, after the last reported checkpoint was committed;
Ray Train restarts the worker group from the latest checkpoint (`max_failures: 1`). The rank and
step come from a seeded draw. Each faulted run of the reference job (conftest: real one-step
kind, constant data, 6 steps, a checkpoint every 2) must

- resume from the latest checkpoint before the fault: at most one checkpoint interval is lost;
- end with the same number of optimiser steps as the uninterrupted run (DeepSpeed's
  `global_steps`, Adam's per-parameter `step`, the pipeline's step counter);
- end with exactly the uninterrupted run's weights, bit for bit (constant data: see conftest).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from pipelines.train import FAULT_MARKER, train
from tests.reliability.reference import CHECKPOINT_EVERY, STEPS, final_state, reference_job

pytestmark = pytest.mark.slow

#: seeds of the (rank, step) draws: rank 0 at step 5 (after checkpoint 4), rank 1 at step 2
#: (before the first checkpoint: the restart begins from scratch).
SEEDS = (1, 7)


def fault_plan(seed: int, world: int = 2) -> tuple[int, int]:
    """The (rank, step) a seed kills: uniform over ranks and over steps 1..STEPS."""
    rng = random.Random(seed)
    return rng.randrange(world), rng.randint(1, STEPS)


def _loss_steps(store, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(store.tracking_uri).get_metric_history(run_id, "loss"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_killed_worker_resumes_and_ends_with_the_uninterrupted_weights(
        seed, uninterrupted, mlflow_store, constant_shards, tmp_path, figures):
    _, reference = uninterrupted
    rank, step = fault_plan(seed)
    cfg = reference_job(tmp_path, f"worker-fault-{seed}", constant_shards, mlflow_store,
                        distributed={"max_failures": 1, "fault_injection": {"rank": rank, "step": step}})
    outcome = train(cfg)

    marker = json.loads((cfg.run_dir / FAULT_MARKER).read_text())
    assert (marker["rank"], marker["step"]) == (rank, step), "the fault was not injected"
    figures.count("worker_faults_injected")
    resumed = (step - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY  # the last checkpoint before the fault
    assert outcome.metrics["start_step"] == resumed
    lost = (step - 1) - resumed  # steps completed before the fault that ran again
    assert 0 <= lost < CHECKPOINT_EVERY
    figures.note(f"worker fault seed {seed}", {"rank": rank, "step": step, "resumed_from": resumed,
                                               "steps_redone": lost})
    # rank 0 logs every step: those before the crash, then the redone and remaining ones
    assert _loss_steps(mlflow_store, outcome.run_id) == sorted([*range(1, step), *range(resumed + 1, STEPS + 1)])

    mine, theirs = final_state(outcome.checkpoint), final_state(reference.checkpoint)
    assert mine["global_steps"] == theirs["global_steps"] == STEPS
    assert mine["pipeline_step"] == theirs["pipeline_step"] == STEPS
    assert mine["adam_steps"] == theirs["adam_steps"] == [STEPS]
    assert mine["weights"].keys() == theirs["weights"].keys()
    for key, value in theirs["weights"].items():
        torch.testing.assert_close(mine["weights"][key], value, rtol=0, atol=0, msg=key)
    figures.count("worker_faults_survived_bit_exact")
