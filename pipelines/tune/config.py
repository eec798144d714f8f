"""The sweep config: a base training job plus what Ray Tune varies, how it searches and when it stops.

A sweep file has the sweep's own keys at the top and the base job under `job` (a whole
`pipelines.config.JobConfig`, checked by the same rules as a training job). Every trial is that
job with `model.operator.rank`, `model.flow.depth` and `train.lr` taken from the search space,
and with `train.checkpoint_every = eval_every`: each evaluation is one report to Tune (metrics,
validation and a checkpoint together).

    name: rank-depth                  # the sweep: storage dir, MLflow parent run; rerun = resume
    search: grid                      # or "optuna"
    space: {rank: [4, 8, 16, 32], depth: [2, 4, 6], lr_range: [1.0e-4, 3.0e-3]}
    metric: val_loss                  # what ASHA and the best-trial choice compare
    eval_every: 100                   # steps between validations (= reports)
    asha: {grace_period: 200, reduction_factor: 2}
    validation: {heldout_samples: 512, fid_samples: 256}
    job: {...}                        # a JobConfig

Example:
    >>> cfg = load_sweep_config("configs/tune-small.yaml", ["space.rank=[2, 4, 8]", "job.train.steps=40"])
    >>> trial_count(cfg), reports_per_trial(cfg), asha_max_t(cfg)
    (6, 10, 41)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from linearizer.config import ConfigError, apply_overrides, from_dict, load_config, to_dict

from ..config import JobConfig, deepspeed_settings, public_dict
from ..train.validation import ValidationConfig

#: MLflow tags of trial runs and of the sweep's parent run.
SWEEP_TAG = "linearizer.sweep"
SWEEP_RUN_TAG = "linearizer.sweep_run_id"
SWEEP_HASH_TAG = "linearizer.sweep_hash"
TRIAL_TAG = "linearizer.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own key: the UI nests trial runs under the sweep
#: CPUs Tune reserves for a trial's own actor (0 is refused); the trial's workers reserve their own.
TRIAL_CPU = 0.01
#: sweep names become directory names, Ray experiment names and MLflow run names and tags.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class SearchSpace:
    """The values Tune tries.

    Attributes:
        rank: operator ranks r (a grid axis, or Optuna's categorical choices).
        depth: flow depths (blocks of `g`).
        lr: learning rates (a grid axis / categorical); ignored when `lr_range` is set.
        lr_range: `[low, high]`: draw the learning rate log-uniformly instead (per grid point
            and repetition for "grid", per trial for "optuna").
    """

    rank: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    depth: list[int] = field(default_factory=lambda: [2, 4, 6])
    lr: list[float] = field(default_factory=lambda: [1e-3])
    lr_range: list[float] | None = None

    def validate(self, path: str) -> None:
        for name in ("rank", "depth", "lr"):
            values = getattr(self, name)
            _check(len(values) >= 1, f"{path}.{name} must list at least one value, got []")
            _check(len(set(values)) == len(values), f"{path}.{name} has duplicates: {values}")
            _check(all(v > 0 for v in values), f"{path}.{name} values must be > 0, got {values}")
        if self.lr_range is not None:
            _check(len(self.lr_range) == 2 and 0 < self.lr_range[0] < self.lr_range[1],
                   f"{path}.lr_range must be [low, high] with 0 < low < high, got {self.lr_range}")


@dataclass
class AshaConfig:
    """Asynchronous successive halving, in units of optimizer steps (the reported `step`).

    A trial reaching a rung (grace_period * reduction_factor^k steps) is stopped when its metric
    is worse than the best 1/reduction_factor of the trials that reached that rung before it.

    Attributes:
        enabled: False runs every trial to the end.
        grace_period: no trial is stopped before this many steps.
        reduction_factor: keep the best 1/reduction_factor at each rung.
        max_t: ASHA's horizon in steps; None means `job.train.steps + 1`. It must exceed
            `job.train.steps`: trials end by themselves at `train.steps`, and a trial stopped at
            max_t would be stopped on its last report, racing Ray Train's own teardown of its
            workers (a known way to leak their placement group; see `pipelines.tune.placement`).
    """

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None

    def validate(self, path: str) -> None:
        _check(self.grace_period >= 1, f"{path}.grace_period must be >= 1 step, got {self.grace_period}")
        _check(self.reduction_factor > 1, f"{path}.reduction_factor must be > 1, got {self.reduction_factor}")
        _check(self.max_t is None or self.max_t > self.grace_period,
               f"{path}.max_t must be > grace_period={self.grace_period}, got {self.max_t}")


@dataclass
class SweepConfig:
    """A whole sweep.

    Attributes:
        name: the sweep's identity: Tune experiment `<storage>/<name>`, MLflow parent run and
            output directory `<job.output_dir>/<name>`. Rerunning a name resumes that sweep.
        search: "grid" (every combination, `num_samples` times) or "optuna" (TPE, `num_samples`
            trials drawn from the space).
        num_samples: grid repetitions, or Optuna trials.
        seed: seed of the search (log-uniform draws, Optuna's sampler).
        metric: the validation metric ASHA and the best-trial choice compare ("val_loss": held-out
            loss; "val_fid": FID of samples, needs `validation.fid_samples`).
        mode: "min" or "max".
        eval_every: steps between validations; every trial reports then (and at its last step).
        max_concurrent_trials: None derives it from the cluster: CPUs (or GPUs) / what one trial's
            workers take, at least 1.
        space, asha, validation: see `SearchSpace`, `AshaConfig`, `pipelines.train.validation.ValidationConfig`.
        job: the base training job of every trial.
    """

    name: str = "sweep"
    search: Literal["grid", "optuna"] = "grid"
    num_samples: int = 1
    seed: int = 0
    metric: Literal["val_loss", "val_fid"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    eval_every: int = 50
    max_concurrent_trials: int | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    asha: AshaConfig = field(default_factory=AshaConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    job: JobConfig = field(default_factory=JobConfig)

    def validate(self, path: str) -> None:
        _check(bool(_NAME.match(self.name)), f"name must start with a letter or digit and contain only letters, "
               f"digits, '_', '.' and '-' (at most 64), got {self.name!r}")
        _check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        _check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
               f"max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        steps = self.job.train.steps
        _check(self.asha.max_t is None or self.asha.max_t > steps,
               f"asha.max_t={self.asha.max_t} must exceed job.train.steps={steps} (or be null): a trial stopped at "
               f"max_t is stopped on its last report and can leak its workers' placement group")
        _check(self.job.data.heldout_split is not None,
               "job.data.heldout_split is null: validation needs a held-out set (e.g. 'test' for mnist)")
        _check(self.metric != "val_fid" or self.validation.fid_samples > 0,
               "metric 'val_fid' needs validation.fid_samples > 0")
        _check(self.mode == "min" or self.metric not in ("val_loss", "val_fid"),
               f"metric {self.metric!r} is better when lower: set mode to 'min', got {self.mode!r}")
        self.validation.check_job(self.job)


# --------------------------------------------------------------------------------------------
# Loading and derived quantities
# --------------------------------------------------------------------------------------------


def load_sweep_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SweepConfig:
    """Load and check a sweep config (its job's DeepSpeed file included).

    Args:
        path: a YAML or JSON file; None starts from the defaults.
        overrides: `dotted.key=value` strings (e.g. `job.train.steps=20`, `space.rank=[2, 4]`).

    Raises:
        ConfigError: naming the offending key.
    """
    cfg = load_config(SweepConfig, path, overrides)
    deepspeed_settings(cfg.job)
    return cfg


def sweep_from_dict(data: dict[str, Any]) -> SweepConfig:
    """Rebuild a `SweepConfig` from `to_dict` output (inside trials: no file checks)."""
    return from_dict(SweepConfig, data)


def sweep_hash(cfg: SweepConfig) -> str:
    """Digest of everything that defines the sweep's trials (all but `max_concurrent_trials`,
    which only changes how many run at once): 16 hex digits of sha256."""
    data = to_dict(cfg)
    data["job"] = public_dict(cfg.job)
    data.pop("max_concurrent_trials")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_job(cfg: SweepConfig, rank: int, depth: int, lr: float, trial_id: str) -> JobConfig:
    """The training job of one trial: the base job with the trial's values, its own run name and
    reports every `eval_every` steps."""
    return apply_overrides(cfg.job, [
        f"name={cfg.name}.{trial_id}",
        f"model.operator.rank={int(rank)}",
        f"model.flow.depth={int(depth)}",
        f"train.lr={float(lr)!r}",
        f"train.checkpoint_every={cfg.eval_every}",
    ])


def trial_count(cfg: SweepConfig) -> int:
    """Trials the sweep runs."""
    if cfg.search == "optuna":
        return cfg.num_samples
    lrs = 1 if cfg.space.lr_range is not None else len(cfg.space.lr)
    return len(cfg.space.rank) * len(cfg.space.depth) * lrs * cfg.num_samples


def report_steps(cfg: SweepConfig) -> list[int]:
    """The steps at which every trial reports: multiples of `eval_every`, and the last step."""
    steps = cfg.job.train.steps
    marks = list(range(cfg.eval_every, steps + 1, cfg.eval_every))
    return marks if marks and marks[-1] == steps else [*marks, steps]


def reports_per_trial(cfg: SweepConfig) -> int:
    return len(report_steps(cfg))


def asha_max_t(cfg: SweepConfig) -> int:
    """ASHA's horizon in steps: beyond the last report, so ASHA never stops a trial at its end."""
    return cfg.asha.max_t if cfg.asha.max_t is not None else cfg.job.train.steps + 1


def max_concurrent_trials(cfg: SweepConfig, resources: dict[str, float]) -> int:
    """How many trials fit on the cluster at once.

    Args:
        cfg: the sweep (`job.distributed` says what one trial's workers take).
        resources: `ray.cluster_resources()`.

    Returns:
        `cfg.max_concurrent_trials` when set, else
        floor(CPUs / (workers * cpus_per_worker + TRIAL_CPU)) (and GPUs / workers when trials use
        GPUs), at least 1. The trial actor's token CPU counts: two trials of one 1-CPU worker
        need 2.02 CPUs, so on 2 CPUs the second would only wait.

    Example:
        >>> max_concurrent_trials(cfg, {"CPU": 16.0})   # 2 workers x 0.5 CPU each
        15
    """
    if cfg.max_concurrent_trials is not None:
        return cfg.max_concurrent_trials
    dist = cfg.job.distributed
    fits = math.floor(resources.get("CPU", 0.0) / (dist.num_workers * dist.cpus_per_worker + TRIAL_CPU) + 1e-9)
    if dist.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / dist.num_workers + 1e-9))
    return max(1, fits)
