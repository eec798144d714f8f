"""The training stage: a job config to a trained, checkpointed, exported and registered model.

    python -m pipelines.train --config job.yaml --set train.steps=500

Modules: `driver` (the Ray Train + DeepSpeed job on the driver: pre-flight, TorchTrainer,
export, registration), `worker` (the loop every Ray Train worker runs), `validation` (held-out
loss and FID during training).
"""

from __future__ import annotations

from .driver import (check_storage, consolidated_state_dict, ensure_shards, export_model, FAULT_MARKER, fit,
                     loop_config, main, MODEL_DIR, train, TrainOutcome)

__all__ = [
    "check_storage", "consolidated_state_dict", "ensure_shards", "export_model", "FAULT_MARKER", "fit",
    "loop_config", "main", "MODEL_DIR", "train", "TrainOutcome",
]
