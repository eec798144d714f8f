"""Job config, DeepSpeed settings, redaction and the loss guard: fast, no Ray, no MLflow store."""

from __future__ import annotations

import json
import math

import pytest
import torch

from linearizer.config import ConfigError
from pipelines.config import (JobConfig, config_hash, deepspeed_settings, dump_job_config, load_job_config)
from pipelines.tracking import flatten, redact, redact_uri
from pipelines.train.worker import check_finite, check_resumable


@pytest.mark.parametrize("base, overrides, message", [
    ({"trian": {"steps": 3}}, [], "unknown config key 'trian' (did you mean 'train'?)"),
    ({}, ["distributed.num_worker=4"], "unknown config key 'distributed.num_worker'"),
    ({}, ["train.batch_size=63"], "train.batch_size=63 is not divisible by distributed.num_workers=2"),
    ({"distributed": {"num_workers": 3}}, [], "train.batch_size=64 is not divisible by distributed.num_workers=3"),
    ({}, ["distributed.zero_stage=4"], "distributed.zero_stage must be 0, 1, 2 or 3, got 4"),
    ({}, ["distributed.deepspeed_config=no/such/ds.json"], "DeepSpeed config file not found: no/such/ds.json"),
    ({}, ["distributed.fault_injection.rank=1"], "max_failures=0 lets nothing restart it"),
    ({"distributed": {"max_failures": 1, "fault_injection": {"rank": 2}}}, [],
     "fault_injection.rank must be < num_workers=2, got 2"),
    ({"distributed": {"max_failures": 1, "fault_injection": {"rank": 0, "step": 11}}, "train": {"steps": 10}}, [],
     "fault_injection.step=11 is after the last step"),
    ({}, ["model.image_shape=[3,32,32]"], "model.image_shape must be (1, S, S) for the grey, square mnist source"),
    ({}, ["name=../escape"], "name must start with a letter or digit"),
    ({}, ["distributed.precision=fp16"], "distributed.precision must be one of ['fp32', 'bf16']"),
    ({}, ["data.source=none"], "data.prefix must be set when data.source is 'none'"),
])
def test_config_errors_name_the_key_and_the_problem(base, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_job_config(base=base, overrides=overrides)
    assert message in str(info.value)


def test_deepspeed_file_must_agree_with_the_job(tmp_path):
    stage2 = tmp_path / "stage2.json"
    stage2.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"sets zero_optimization.stage=2, but distributed.zero_stage=1"):
        load_job_config(base={"distributed": {"deepspeed_config": str(stage2)}})
    with_optimizer = tmp_path / "adam.json"
    with_optimizer.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="declares an optimizer"):
        load_job_config(base={"distributed": {"deepspeed_config": str(with_optimizer)}})
    bf16_weights = tmp_path / "bf16.json"
    bf16_weights.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="set distributed.precision=bf16 instead"):
        load_job_config(base={"distributed": {"deepspeed_config": str(bf16_weights)}})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_job_config(base={"distributed": {"deepspeed_config": str(broken)}})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deepspeed_settings_take_batch_clipping_and_precision_from_the_job(stage, precision):
    cfg = load_job_config(overrides=[f"distributed.zero_stage={stage}", f"distributed.precision={precision}",
                                     "distributed.num_workers=4", "train.batch_size=96", "train.grad_clip=0.5"])
    ds = deepspeed_settings(cfg)
    batch = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    assert batch == (96, 24, 1)
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"]["stage"] == stage
    # bf16 is autocast in the worker: DeepSpeed keeps fp32 weights (the flow's triangular solves need them)
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert "optimizer" not in ds  # torch AdamW is passed in: no JIT-compiled fused Adam


def test_cli_reports_config_errors_with_exit_status_2(capsys):
    from pipelines.train import main

    assert main(["--set", "train.batch_size=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and "not divisible by distributed.num_workers=2" in err


@pytest.mark.parametrize("uri, expected", [
    ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("https://ghp_TOKEN@mlflow.example.com/", "https://***@mlflow.example.com/"),
    ("s3://bucket/runs?X-Amz-Signature=abc&region=eu", "s3://bucket/runs?X-Amz-Signature=***&region=eu"),
    ("https://host/api?token=t0k&page=2", "https://host/api?token=***&page=2"),
    ("sqlite:////abs/runs/mlflow.db", "sqlite:////abs/runs/mlflow.db"),
    ("s3://bucket/path", "s3://bucket/path"),
    ("runs/local", "runs/local"),
])
def test_redact_uri_masks_credentials_only(uri, expected):
    assert redact_uri(uri) == expected


def test_dumped_config_and_hash_carry_no_credentials(tmp_path):
    secret = "postgresql://u:s3cr3t@db/mlflow"
    cfg = load_job_config(overrides=[f"mlflow.tracking_uri={secret}", "storage_path=s3://k:s3cr3t@bucket/ray"])
    text = dump_job_config(cfg, tmp_path / "config.json").read_text()
    assert "s3cr3t" not in text
    dumped = json.loads(text)
    assert dumped["mlflow"]["tracking_uri"] == "postgresql://u:***@db/mlflow"
    assert "s3cr3t" not in json.dumps(redact({"nested": [secret]}))
    # The hash covers the dumped form: a changed credential alone does not change it, any setting does.
    other_secret = load_job_config(overrides=["mlflow.tracking_uri=postgresql://u:other@db/mlflow",
                                              "storage_path=s3://k:s3cr3t@bucket/ray"])
    assert config_hash(other_secret) == config_hash(cfg)
    assert config_hash(load_job_config(overrides=["train.lr=0.002"])) != config_hash(load_job_config())
    assert len(config_hash(cfg)) == 16


def test_flatten_gives_dotted_string_params():
    flat = flatten({"model": {"image_shape": [1, 8, 8], "flow": {"depth": 2}}, "name": "x"})
    assert flat == {"model.image_shape": "[1, 8, 8]", "model.flow.depth": "2", "name": "x"}


def test_defaults_resolve_paths_and_the_deepspeed_file():
    cfg = JobConfig()
    assert cfg.distributed.resolved_deepspeed_config().name == "zero1.json"
    assert cfg.resolved_storage_path().endswith("runs/ray_results")
    assert str(cfg.run_dir) == "runs/onestep-mnist"
    assert cfg.data.train_prefix == "mnist-train" and cfg.data.heldout_prefix == "mnist-test"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_raises_naming_the_step_and_checkpoint(value):
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 on rank\(s\) \[0\].*checkpoint_00000006"):
        check_finite(torch.tensor(value), {"mse": value}, step=7, last_checkpoint="checkpoint_00000006")
    check_finite(torch.tensor(0.5), {"mse": 0.5}, step=7, last_checkpoint=None)  # finite: no error


def test_resume_refuses_another_world_size_or_stage():
    cfg = load_job_config()
    state = {"world_size": 2, "zero_stage": 1, "kind": "onestep"}
    check_resumable(state, cfg, "ckpt")
    with pytest.raises(ValueError, match="cannot be resumed at another world size or stage"):
        check_resumable({**state, "world_size": 4}, cfg, "ckpt")


def test_embedded_ray_hook_silences_only_the_state_api_pollers(caplog):
    """The embedded Ray has no dashboard, so Ray Train's placement-group cleaner warns once a
    second that the State API does not answer (22 warnings in a 40-step job, 0 with the hook;
    docs/pipeline.md). The hook, importable by its dotted name, mutes exactly those loggers."""
    import importlib
    import logging

    from pipelines import runtime

    module, _, name = "pipelines.runtime.quiet_state_api_pollers".rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    poller = logging.getLogger(runtime.STATE_API_POLLERS[0])
    other = logging.getLogger("ray.train.v2._internal.execution.controller")
    saved = poller.level, other.level
    try:
        hook()
        with caplog.at_level(logging.WARNING):
            poller.warning("Failed to query Ray Train Controller actor state.")
            other.warning("a warning that must still be shown")
        assert "Failed to query" not in caplog.text
        assert "must still be shown" in caplog.text
    finally:
        poller.setLevel(saved[0])
        other.setLevel(saved[1])
