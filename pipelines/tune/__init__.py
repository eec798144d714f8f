"""The sweep stage: Ray Tune sweeps of operator rank and flow depth over the training stage.

    python -m pipelines.tune --config configs/tune-small.yaml

Modules: `sweep` (the Tune run and its command line), `config` (the typed sweep config and
search space), `placement` (trial workers and the release of stopped trials' resources),
`summary` (the trial table, heat-map and registration of the best trial).
"""

from __future__ import annotations

from .sweep import (main, make_tuner, param_space, resolve_sweep, run_sweep, run_trial, start_sweep_run,
                    trial_storage)

__all__ = [
    "main", "make_tuner", "param_space", "resolve_sweep", "run_sweep", "run_trial", "start_sweep_run",
    "trial_storage",
]
