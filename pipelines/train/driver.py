"""Distributed training driver: shards -> Ray Train + DeepSpeed -> safe model -> MLflow registry.

    python -m pipelines.train --config jobs/onestep.yaml --set train.steps=500 --set distributed.zero_stage=2

Steps:
1. load and check the config (`pipelines.config`), import plugin modules, resolve the kind;
2. make sure the training shards exist (auto-build from `data.source`) or verify them;
3. open the MLflow run (a resubmitted job name reopens its run);
4. run a Ray Train V2 `TorchTrainer(worker_loop)` (embedded loopback Ray, or `$RAY_ADDRESS`);
   the same `name` + `storage_path` resumes from the latest checkpoint;
5. consolidate the final DeepSpeed checkpoint into fp32 weights, rebuild the model through its
   kind, `finalize` it and save it as safetensors + JSON (`linearizer.io.save_model`);
6. register it as a new version of `mlflow.registered_model` with the alias `mlflow.alias`.

Everything the run produced is listed in `<output_dir>/<name>/result.json`.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from linearizer.config import ModelConfig, to_dict
from linearizer.io import save_model
from linearizer.kinds import ModelKind, get_kind
from linearizer.perceptual import get_perceptual

from ..config import JobConfig, config_hash, deepspeed_settings, dump_job_config, load_job_config
from ..runtime import job_parser, prepare_environment, ray_session, resolve_local, run_cli, worker_env
from ..tracking import (RankZero, TrackingRun, check_tracking_server, end_run, redact, redact_uri, resolve_tracking,
                        start_run)

MODEL_DIR = "model"
FAULT_MARKER = "fault-injected"


@dataclass
class TrainOutcome:
    """What a training job produced.

    Attributes:
        run_dir: local run directory (config, exported model, result.json).
        checkpoint: the final Ray Train checkpoint (path or URI).
        metrics: rank 0's last reported metrics.
        model_dir: the exported model (config.json + model.safetensors).
        tracking_uri: MLflow store (credentials masked).
        run_id: MLflow run.
        model_name, model_version, alias: the registry entry (None when not registered).
        seconds: wall time of the job.
    """

    run_dir: Path
    checkpoint: str
    metrics: dict[str, Any]
    model_dir: Path
    tracking_uri: str
    run_id: str
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None
    seconds: float = 0.0
    placement: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def ensure_shards(cfg: JobConfig) -> dict[str, int]:
    """Build missing shard sets from `data.source`, verify existing ones.

    Returns:
        prefix -> sample count of the training set (and the held-out set when configured).

    Raises:
        FileNotFoundError: the training set is missing and `data.source` is "none".
        pipelines.shards.ShardError: an existing set fails verification.
    """
    from ..shards.cli import digits_samples, mnist_samples, read_manifests, verify_shards, write_shards

    d = cfg.data
    wanted = [(d.train_prefix, d.split, d.limit)]
    if d.heldout_prefix is not None:
        wanted.append((d.heldout_prefix, d.heldout_split, d.heldout_limit))
    size = cfg.model.image_shape[1]
    counts = {}
    for prefix, split, limit in wanted:
        existing = read_manifests(d.shards) if Path(d.shards).is_dir() else {}
        if prefix in existing:
            manifest = existing[prefix] if d.verify == "off" else verify_shards(d.shards, prefix, d.verify == "deep")
        elif d.source == "none":
            raise FileNotFoundError(f"shard set {prefix!r} not found in {d.shards} and data.source is 'none'")
        else:
            samples = (mnist_samples if d.source == "mnist" else digits_samples)(split, size, limit)
            source = {"name": d.source, "split": split, "size": size, "limit": limit}
            manifest = write_shards(samples, d.shards, prefix, d.maxcount, source=source)
        counts[prefix] = manifest.count
    return counts


# --------------------------------------------------------------------------------------------
# Export: DeepSpeed checkpoint -> safetensors + JSON
# --------------------------------------------------------------------------------------------


def consolidated_state_dict(checkpoint_dir: str | Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights (parameters and buffers) from a DeepSpeed checkpoint directory.

    ZeRO 1-3 keep fp32 master weights partitioned across ranks: DeepSpeed's `zero_to_fp32`
    reassembles them. Stage 0 keeps the whole module in `mp_rank_00_model_states.pt`.
    DeepSpeed checkpoints are torch pickles: load only checkpoints your own runs wrote.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if zero_stage >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir))
    else:
        tag = (checkpoint_dir / "latest").read_text().strip()
        files = sorted((checkpoint_dir / tag).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"no mp_rank_*_model_states.pt under {checkpoint_dir / tag}")
        state = torch.load(files[0], map_location="cpu", weights_only=True)["module"]
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def export_model(checkpoint_dir: str | Path, model_cfg: ModelConfig, kind: ModelKind, zero_stage: int,
                 out_dir: str | Path) -> tuple[nn.Module, Path]:
    """Rebuild the trained model from a checkpoint, finalize it and save it safely.

    A checkpoint that holds an average of the weights (`train.ema_decay > 0`, the worker's
    `EMA_FILE`) exports the average: it is what the run samples with.

    Returns:
        (the finalized model in eval mode, the saved model directory).

    Raises:
        ValueError: the checkpoint does not fit a model built from `model_cfg`.
    """
    from .worker import EMA_FILE

    ema_path = Path(checkpoint_dir) / EMA_FILE
    if ema_path.is_file():
        from safetensors.torch import load_file

        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(ema_path)).items()}
    else:
        state = consolidated_state_dict(checkpoint_dir, zero_stage)
    model = kind.build(model_cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint_dir} does not fit kind {kind.name!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    kind.finalize(model)
    return model, save_model(model, model_cfg, out_dir)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def loop_config(cfg: JobConfig, run: TrackingRun, fault_marker: Path) -> dict[str, Any]:
    """What every worker receives: the job with absolute paths, the DeepSpeed dict, MLflow ids."""
    job = to_dict(cfg)
    job["data"]["shards"] = resolve_local(cfg.data.shards)
    job["output_dir"] = resolve_local(cfg.output_dir)
    return {"job": job, "deepspeed": deepspeed_settings(cfg), "tracking_uri": run.tracking_uri,
            "run_id": run.run_id, "fault_marker": str(fault_marker)}


def fit(cfg: JobConfig, run: TrackingRun) -> Any:
    """Run the Ray Train job; returns the `ray.train.Result` (raises if training failed)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .worker import worker_loop

    dist = cfg.distributed
    run_dir = cfg.run_dir.resolve()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=loop_config(cfg, run, run_dir / FAULT_MARKER),
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu,
                                     resources_per_worker={"CPU": dist.cpus_per_worker},
                                     placement_strategy=dist.placement_strategy),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.resolved_storage_path(),
                             checkpoint_config=CheckpointConfig(num_to_keep=dist.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=dist.max_failures),
                             worker_runtime_env={"env_vars": worker_env(run.tracking_uri, dist.use_gpu)}),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name!r} finished without a checkpoint in {cfg.resolved_storage_path()}")
    return result


def check_storage(storage_path: str) -> None:
    """Fail before any work when a local `storage_path` cannot hold checkpoints (remote URIs
    such as s3:// are left to Ray).

    Raises:
        OSError: naming the storage_path and the reason.
    """
    if "://" in storage_path:
        return
    path = Path(storage_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"storage_path {path} is not a writable directory ({e.strerror or e}); "
                      f"checkpoints could not be saved") from e


def train(cfg: JobConfig, address: str | None = None) -> TrainOutcome:
    """Run a whole training job (see the module docstring).

    Args:
        cfg: a config from `load_job_config`.
        address: Ray cluster address (default `$RAY_ADDRESS`; none: embedded loopback Ray; a Ray
            this process already initialised is used as it is).

    Returns:
        The outcome, also written to `<run_dir>/result.json`.
    """
    started = time.perf_counter()
    prepare_environment(address, cfg.distributed.use_gpu)
    for module in cfg.imports:
        importlib.import_module(module)
    kind = get_kind(cfg.model.kind)
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_storage(cfg.resolved_storage_path())
    check_tracking_server(resolve_tracking(cfg)[0])
    ensure_shards(cfg)
    if cfg.model.loss.perceptual == "classifier":
        # its classifier is trained on first use and cached: once here, not by every worker at once
        get_perceptual("classifier")
    dump_job_config(cfg, run_dir / "config.json")
    run = start_run(cfg, tags={"linearizer.kind": kind.name, "linearizer.config_hash": config_hash(cfg)})
    log = RankZero(0, run.tracking_uri, run.run_id)
    log.log_artifact(run_dir / "config.json")
    log.log_dict(deepspeed_settings(cfg), "deepspeed.json")
    try:
        with ray_session(address):
            result = fit(cfg, run)
        with result.checkpoint.as_directory() as directory:
            _, model_dir = export_model(directory, cfg.model, kind, cfg.distributed.zero_stage, run_dir / MODEL_DIR)
        outcome = TrainOutcome(run_dir=run_dir, checkpoint=result.checkpoint.path, metrics=dict(result.metrics or {}),
                               model_dir=model_dir, tracking_uri=redact_uri(run.tracking_uri), run_id=run.run_id)
        outcome.placement = json.loads(outcome.metrics.get("placement", "[]"))
        if cfg.mlflow.registered_model:
            from ..registry import register_model

            version = register_model(model_dir, cfg, run, imports=cfg.imports)
            outcome.model_name, outcome.model_version, outcome.alias = (cfg.mlflow.registered_model, version,
                                                                        cfg.mlflow.alias)
    except BaseException:
        end_run(run, "FAILED")
        raise
    outcome.seconds = time.perf_counter() - started
    (run_dir / "result.json").write_text(json.dumps(redact(_jsonable(asdict(outcome))), indent=2) + "\n")
    log.log_artifact(run_dir / "result.json")
    end_run(run, "FINISHED")
    return outcome


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = job_parser("pipelines.train", __doc__, "job", "train.steps=200").parse_args(argv)
    prepare_environment(args.address)  # before Ray is imported anywhere
    outcome, status = run_cli(lambda: train(load_job_config(args.config, args.overrides), args.address))
    if status:
        return status
    print(json.dumps(redact(_jsonable(asdict(outcome))), indent=2))
    return 0
