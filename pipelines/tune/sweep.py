"""Ray Tune sweeps of operator rank, flow depth and learning rate over the training pipeline.

    python -m pipelines.tune --config configs/tune-small.yaml --set job.train.steps=40

Each trial is one Ray Train run of the training pipeline's worker (`pipelines.train.worker`), built
inside a Tune function trainable (the Ray Train V2 way: `Tuner(TorchTrainer(...))` is not
supported). The workers report `val_loss` (and `val_fid`) every `eval_every` steps
(`pipelines.train.validation`); `TuneReportCallback` forwards the reports to Tune, where ASHA stops
trials that fall behind. Trials take a token 0.01 CPU themselves; their workers take what
`job.distributed` asks for, and `max_concurrent_trials` keeps only as many running as the
cluster holds.

MLflow: the sweep is a parent run (run name = sweep name, tag `linearizer.sweep`); each trial is
a nested run (`mlflow.parentRunId`) tagged with the sweep, its parent run id, the trial id, rank,
depth and lr; its params are the whole trial job, logged by the workers. At the end the parent
run gets `results.csv`, `heatmap.png` and the best trial's metrics, and the best completed
trial's model is registered with the alias `job.mlflow.alias` ("challenger"), logged into that
trial's run (`pipelines.tune.summary`).

Resuming: rerunning a sweep name restores the Tune experiment `<storage>/<name>`: finished and
stopped trials are kept as they are, interrupted trials restart and their Ray Train runs resume
from their latest checkpoints, pending trials start. The sweep config must be unchanged (its
hash is a tag of the parent run); change the name to sweep something else.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from linearizer.config import ConfigError, apply_overrides, to_dict
from linearizer.kinds import get_kind

from ..runtime import job_parser, prepare_environment, ray_session, resolve_local, run_cli, worker_env
from ..tracking import TrackingRun, check_tracking_server, end_run, redact, resolve_tracking, start_run
from .config import (PARENT_TAG, SWEEP_HASH_TAG, SWEEP_RUN_TAG, SWEEP_TAG, TRIAL_CPU, TRIAL_TAG, SweepConfig,
                          asha_max_t, load_sweep_config, max_concurrent_trials, sweep_from_dict, sweep_hash,
                          trial_count, trial_job)
from .summary import SweepOutcome, fail_unless_closed, summarize
from ..train.validation import LOOP_KEY


# --------------------------------------------------------------------------------------------
# One trial (runs in Tune's trial actor)
# --------------------------------------------------------------------------------------------


def run_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune's function trainable: fit the trial's job with Ray Train, reporting to Tune.

    Args:
        config: the trial's point of the search space: {"rank", "depth", "lr"}.
        setup: {"sweep": the resolved `SweepConfig` as a dict, "parent_run_id": the sweep's run,
            "registry": the name of the sweep's `placement.PlacementRegistry`}.

    Raises:
        Whatever the training run raised (the trial is then marked errored by Tune and its
        MLflow run FAILED).
    """
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.driver import FAULT_MARKER, loop_config
    from .placement import REGISTRY_KEY, TRIAL_KEY, trial_worker_loop

    sweep = sweep_from_dict(setup["sweep"])
    trial_id = tune.get_context().get_trial_id()
    job = trial_job(sweep, config["rank"], config["depth"], config["lr"], trial_id)
    for module in job.imports:
        importlib.import_module(module)
    parent = setup["parent_run_id"]
    # A resumed trial reopens its run (start_run matches the run name), so it keeps one run.
    run = start_run(job, tags={SWEEP_TAG: sweep.name, SWEEP_RUN_TAG: parent, PARENT_TAG: parent,
                               TRIAL_TAG: trial_id, "linearizer.rank": str(config["rank"]),
                               "linearizer.depth": str(config["depth"]), "linearizer.lr": repr(float(config["lr"])),
                               "linearizer.kind": job.model.kind})
    loop = loop_config(job, run, job.run_dir / FAULT_MARKER)
    loop.update({LOOP_KEY: to_dict(sweep.validation), REGISTRY_KEY: setup["registry"], TRIAL_KEY: trial_id})
    dist = job.distributed
    env = worker_env(run.tracking_uri, dist.use_gpu)
    if sweep.validation.cache_dir:
        env["LINEARIZER_CACHE"] = sweep.validation.cache_dir
    trainer = TorchTrainer(
        trial_worker_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu,
                                     resources_per_worker={"CPU": dist.cpus_per_worker},
                                     placement_strategy=dist.placement_strategy),
        run_config=RunConfig(name=trial_id, storage_path=trial_storage(sweep),
                             checkpoint_config=CheckpointConfig(num_to_keep=dist.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=dist.max_failures),
                             worker_runtime_env={"env_vars": env}, callbacks=[TuneReportCallback()]),
    )
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except BaseException:
        # ASHA's stop ends this process while fit() is still unwinding; the driver then owns the
        # run's final status (KILLED) and a late FAILED from here must not overwrite it.
        fail_unless_closed(run)
        raise
    end_run(run, "FINISHED")


def trial_storage(sweep: SweepConfig) -> str:
    """Where the trials' Ray Train runs keep checkpoints: `<storage>/<sweep>-trials/<trial id>`."""
    return f"{sweep.job.resolved_storage_path().rstrip('/')}/{sweep.name}-trials"


# --------------------------------------------------------------------------------------------
# The Tuner
# --------------------------------------------------------------------------------------------


def param_space(cfg: SweepConfig) -> dict[str, Any]:
    """Tune's search space: grid axes for "grid", categorical choices for "optuna"; the learning
    rate log-uniform when `space.lr_range` is set."""
    from ray import tune

    axis = tune.grid_search if cfg.search == "grid" else tune.choice
    lr = tune.loguniform(*cfg.space.lr_range) if cfg.space.lr_range else axis(list(cfg.space.lr))
    return {"rank": axis(list(cfg.space.rank)), "depth": axis(list(cfg.space.depth)), "lr": lr}


def make_tuner(cfg: SweepConfig, parent_run_id: str, concurrency: int) -> tuple[Any, bool]:
    """A new Tuner for the sweep, or the restored one when its experiment exists.

    The sweep's `placement.PlacementRegistry` must be running (`start_registry`).

    Returns:
        (tuner, resumed).
    """
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .placement import ReleaseStoppedTrials, registry_name

    registry = registry_name(cfg.name)  # a name: a restored callback finds the new driver's registry
    setup = {"sweep": to_dict(cfg), "parent_run_id": parent_run_id, "registry": registry}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": TRIAL_CPU})
    storage = cfg.job.resolved_storage_path()
    path = f"{storage.rstrip('/')}/{cfg.name}"
    if tune.Tuner.can_restore(path):
        # Finished and early-stopped trials stay as they are; interrupted and errored ones run again.
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True), True
    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search, limit = OptunaSearch(seed=cfg.seed), concurrency  # Tune wraps it in a ConcurrencyLimiter
    else:  # the grid generator takes its limit itself: Tune ignores max_concurrent_trials for it
        search, limit = BasicVariantGenerator(max_concurrent=concurrency, random_state=cfg.seed), None
    scheduler = (AsyncHyperBandScheduler(time_attr="step", max_t=asha_max_t(cfg), grace_period=cfg.asha.grace_period,
                                         reduction_factor=cfg.asha.reduction_factor)
                 if cfg.asha.enabled else FIFOScheduler())
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, search_alg=search, scheduler=scheduler,
                                    num_samples=cfg.num_samples, max_concurrent_trials=limit),
        run_config=tune.RunConfig(name=cfg.name, storage_path=storage, verbose=1,
                                  callbacks=[ReleaseStoppedTrials(registry)]),
    )
    return tuner, False


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def resolve_sweep(cfg: SweepConfig) -> SweepConfig:
    """The sweep with every path absolute and the MLflow store explicit: trials run in Tune's
    trial directories, where relative paths would point elsewhere."""
    uri, artifact_location = resolve_tracking(cfg.job)
    job = cfg.job
    overrides = [f"job.output_dir={json.dumps(resolve_local(job.output_dir))}",
                 f"job.data.shards={json.dumps(resolve_local(job.data.shards))}",
                 f"job.storage_path={json.dumps(job.resolved_storage_path())}",
                 f"job.mlflow.tracking_uri={json.dumps(uri)}"]
    if artifact_location is not None:
        overrides.append(f"job.mlflow.artifact_location={json.dumps(artifact_location)}")
    if cfg.validation.cache_dir is not None:
        overrides.append(f"validation.cache_dir={json.dumps(resolve_local(cfg.validation.cache_dir))}")
    return apply_overrides(cfg, overrides)


def start_sweep_run(cfg: SweepConfig) -> TrackingRun:
    """Create or reopen the sweep's parent run.

    Raises:
        ConfigError: the sweep name exists with another config (resuming would mix two sweeps).
    """
    from mlflow.tracking import MlflowClient

    digest = sweep_hash(cfg)
    client = MlflowClient(cfg.job.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.job.mlflow.experiment)
    if experiment is not None:
        previous = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{cfg.name}' "
                                      f"and tags.`linearizer.role` = 'sweep'", max_results=1)
        if previous and previous[0].data.tags.get(SWEEP_HASH_TAG) != digest:
            raise ConfigError(f"sweep {cfg.name!r} was started with another config (hash "
                              f"{previous[0].data.tags.get(SWEEP_HASH_TAG)}, now {digest}); resuming it would mix "
                              f"two sweeps: choose a new name")
    job = apply_overrides(cfg.job, [f"name={cfg.name}"])
    return start_run(job, tags={SWEEP_TAG: cfg.name, SWEEP_HASH_TAG: digest, "linearizer.role": "sweep"})


def run_sweep(cfg: SweepConfig, address: str | None = None) -> SweepOutcome:
    """Run (or resume) a whole sweep; see the module docstring.

    Args:
        cfg: from `load_sweep_config`.
        address: Ray cluster address (default `$RAY_ADDRESS`; none: embedded loopback Ray; a Ray
            this process already initialised is used as it is).

    Returns:
        The outcome, also written to `<output_dir>/<name>/sweep.json`.
    """
    from ..train.driver import check_storage, ensure_shards

    started = time.perf_counter()
    prepare_environment(address, cfg.job.distributed.use_gpu)
    for module in cfg.job.imports:
        importlib.import_module(module)
    kind = get_kind(cfg.job.model.kind)
    cfg = resolve_sweep(cfg)
    # the training job's pre-flight: fail before data, Ray or MLflow work starts
    check_storage(cfg.job.resolved_storage_path())
    check_tracking_server(resolve_tracking(cfg.job)[0])
    ensure_shards(cfg.job)
    if cfg.validation.fid_samples:
        cfg.validation.extractor()  # train and cache the FID classifier once, before trials need it
    out_dir = cfg.job.run_dir.parent / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = start_sweep_run(cfg)
    try:
        with ray_session(address) as where:
            import ray
            from ray.tune import ExperimentAnalysis

            from .placement import start_registry

            concurrency = max_concurrent_trials(cfg, ray.cluster_resources())
            registry = start_registry(cfg.name)  # noqa: F841 - the handle keeps the actor alive during fit
            tuner, resumed = make_tuner(cfg, parent.run_id, concurrency)
            print(f"sweep {cfg.name!r}: {trial_count(cfg)} trials, {concurrency} at a time, Ray {where}, "
                  f"{'resumed' if resumed else 'new'}", file=sys.stderr)
            grid = tuner.fit()
            trials = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
        outcome = SweepOutcome(name=cfg.name, experiment_path=grid.experiment_path, resumed=resumed,
                               run_id=parent.run_id, max_concurrent_trials=concurrency)
        summarize(cfg, trials, parent, kind, out_dir, outcome)
    except BaseException:
        end_run(parent, "FAILED")
        raise
    outcome.seconds = time.perf_counter() - started
    (out_dir / "sweep.json").write_text(json.dumps(redact(asdict(outcome)), indent=2, default=str) + "\n")
    end_run(parent, "KILLED" if outcome.interrupted else "FINISHED")
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = job_parser("pipelines.tune", __doc__, "sweep", "job.train.steps=200").parse_args(argv)
    prepare_environment(args.address)  # before Ray is imported anywhere
    outcome, status = run_cli(lambda: run_sweep(load_sweep_config(args.config, args.overrides), args.address))
    if status:
        return status
    print(json.dumps(redact(asdict(outcome)), indent=2, default=str))
    if outcome.interrupted:
        print(f"sweep {outcome.name!r} was interrupted: rerun the same command to continue it", file=sys.stderr)
        return 130
    return 0
