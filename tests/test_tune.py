"""Sweeps: the config, the validation metric, the summary, and a real 4-trial sweep.

The fast tests need neither Ray nor DeepSpeed. The slow one runs a 2 ranks x 2 depths sweep of
the real one-step Linearizer (8x8 MNIST, 8 steps, validated every 4) on the session's local Ray
and SQLite MLflow store, then reruns the sweep's name to check that it resumes instead of
training again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from linearizer.config import ConfigError, apply_overrides, from_dict
from linearizer.kinds import get_kind
from pipelines.shards import mnist_samples, write_shards
from pipelines.tune.config import (SweepConfig, asha_max_t, max_concurrent_trials, report_steps, sweep_hash,
                                   trial_count, trial_job)
from pipelines.tracking import TrackingRun
from pipelines.tune.summary import (EARLY_STOP_TAG, TrialRow, best_trial, close_trial_runs, fail_unless_closed,
                                    heatmap_cells, plot_heatmap, trial_rows, write_results_csv)
from pipelines.train.validation import ValidationConfig, Validator
from tests.toy_kind import ONESTEP_MODEL, TOY_MODEL

#: the search seed of the slow sweep. It draws the learning rates 4.0e-3, 4.1e-3, 2.0e-4 and
#: 1.9e-5 for the cells (2, 1), (2, 2), (4, 1), (4, 2), in the order the trials run: the last two
#: barely move in 4 steps and reach ASHA's rung behind the first two.
SEED = 5


def sweep_dict(tmp: Path, shards: Path, name: str = "sweep", tracking_uri: str = "sqlite:///unused.db",
               artifact_location: str | None = None, model: dict | None = None) -> dict:
    """A 2 ranks x 2 depths sweep of 8-step trials on 8x8 MNIST shards."""
    return {
        "name": name, "search": "grid", "seed": SEED, "metric": "val_loss", "mode": "min", "eval_every": 4,
        "max_concurrent_trials": 1,
        "space": {"rank": [2, 4], "depth": [1, 2], "lr_range": [1e-6, 3e-2]},
        "asha": {"grace_period": 4, "reduction_factor": 2},
        "validation": {"heldout_samples": 64, "batch_size": 32},
        "job": {
            "name": name, "output_dir": str(tmp),
            "data": {"shards": str(shards), "source": "mnist", "limit": 256, "heldout_limit": 64, "maxcount": 64},
            "model": dict(model or ONESTEP_MODEL),
            "train": {"steps": 8, "batch_size": 16, "log_every": 4},
            "distributed": {"num_workers": 1, "cpus_per_worker": 1.0, "zero_stage": 1},
            "mlflow": {"tracking_uri": tracking_uri, "artifact_location": artifact_location, "experiment": name,
                       "registered_model": f"{name}-model", "sample_grid": 0},
        },
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """256 training and 64 held-out MNIST digits at 8x8, as the sweep's job names them."""
    directory = tmp_path_factory.mktemp("tune-shards")
    write_shards(mnist_samples("train", 8, 256), directory, "mnist-train", maxcount=64)
    write_shards(mnist_samples("test", 8, 64), directory, "mnist-test", maxcount=64)
    return directory


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("asha.max_t=8", "must exceed job.train.steps=8"),
    ("job.data.heldout_split=null", "validation needs a held-out set"),
    ("metric=val_fid", "needs validation.fid_samples > 0"),
    ("validation.fid_samples=64", "needs model.image_shape [1, 32, 32]"),
    (["job.distributed.num_workers=2", "validation.heldout_samples=63"],
     "not divisible by job.distributed.num_workers=2"),
    ("validation.heldout_samples=128", "job.data.heldout_limit=64"),
    ("space.rank=[]", "space.rank must list at least one value"),
    ("space.depth=[2, 2]", "space.depth has duplicates"),
    ("space.lr_range=[0.01, 0.001]", "0 < low < high"),
    ("asha.reduction_factor=1", "reduction_factor must be > 1"),
    ("name=\"bad name\"", "name must start with a letter or digit"),
    ("mode=max", "set mode to 'min'"),
    ("search=random", "search must be one of ['grid', 'optuna']"),
])
def test_config_rejects_what_cannot_run(tmp_path, override, message):
    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path))
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, override if isinstance(override, list) else [override])
    assert message in str(info.value)


def test_trial_job_takes_the_trials_values_and_reports_every_eval_interval(tmp_path):
    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path))
    job = trial_job(cfg, rank=4, depth=2, lr=3.5e-4, trial_id="ab12_00003")
    assert (job.model.operator.rank, job.model.flow.depth, job.train.lr) == (4, 2, 3.5e-4)
    assert job.name == "sweep.ab12_00003" and job.train.checkpoint_every == 4
    assert job.model.flow.hidden == cfg.job.model.flow.hidden  # the rest is the base job
    assert report_steps(cfg) == [4, 8] and asha_max_t(cfg) == 9
    assert report_steps(apply_overrides(cfg, ["job.train.steps=10"])) == [4, 8, 10]


@pytest.mark.parametrize("overrides, trials", [
    ([], 4),                                                     # log-uniform lr: one draw per cell
    (["space.lr_range=null", "space.lr=[0.001, 0.01, 0.1]"], 12),
    (["num_samples=3"], 12),
    (["search=optuna", "num_samples=5"], 5),
])
def test_trial_count(tmp_path, overrides, trials):
    assert trial_count(apply_overrides(from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path)), overrides)) == trials


@pytest.mark.parametrize("workers, cpus, gpu, resources, expected", [
    (2, 0.5, False, {"CPU": 2.0}, 1),            # a second trial would need 2 x 1.01 CPUs
    (2, 0.5, False, {"CPU": 16.0}, 15),
    (1, 0.5, False, {"CPU": 2.0}, 3),
    (4, 1.0, False, {"CPU": 6.0}, 1),
    (4, 1.0, False, {"CPU": 2.0}, 1),            # not even one fits: still one at a time
    (1, 0.29, False, {"CPU": 0.9}, 3),           # no float round-down (0.9 / 0.3 = 2.9999...)
    (2, 1.0, True, {"CPU": 32.0, "GPU": 4.0}, 2),
    (2, 1.0, True, {"CPU": 32.0}, 1),
])
def test_max_concurrent_trials_from_cluster_resources(tmp_path, workers, cpus, gpu, resources, expected):
    cfg = apply_overrides(from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path)),
                          ["max_concurrent_trials=null", f"job.distributed.num_workers={workers}",
                           f"job.distributed.cpus_per_worker={cpus}", f"job.distributed.use_gpu={str(gpu).lower()}"])
    assert max_concurrent_trials(cfg, resources) == expected
    assert max_concurrent_trials(apply_overrides(cfg, ["max_concurrent_trials=7"]), resources) == 7


def test_sweep_hash_ignores_concurrency_only(tmp_path):
    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path))
    assert sweep_hash(cfg) == sweep_hash(apply_overrides(cfg, ["max_concurrent_trials=3"]))
    assert sweep_hash(cfg) != sweep_hash(apply_overrides(cfg, ["space.rank=[2, 8]"]))
    assert sweep_hash(cfg) != sweep_hash(apply_overrides(cfg, ["job.train.steps=12"]))


def test_param_space_grid_and_optuna(tmp_path):
    from ray.tune.search.sample import Categorical, Float

    from pipelines.tune import param_space

    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path))
    grid = param_space(apply_overrides(cfg, ["space.lr_range=null", "space.lr=[0.001, 0.01]"]))
    assert grid == {"rank": {"grid_search": [2, 4]}, "depth": {"grid_search": [1, 2]},
                    "lr": {"grid_search": [0.001, 0.01]}}
    optuna = param_space(apply_overrides(cfg, ["search=optuna"]))
    assert isinstance(optuna["rank"], Categorical) and optuna["rank"].categories == [2, 4]
    assert isinstance(optuna["lr"], Float) and (optuna["lr"].lower, optuna["lr"].upper) == (1e-6, 3e-2)


# --------------------------------------------------------------------------------------------
# Validation (no Ray: one rank)
# --------------------------------------------------------------------------------------------


def _toy_setup(tmp_path, shards, **validation):
    import tests.toy_kind  # noqa: F401 - registers "toy"

    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, shards, model=TOY_MODEL))
    job = apply_overrides(cfg.job, ["distributed.num_workers=1"])
    kind = get_kind("toy")
    torch.manual_seed(0)
    model = kind.build(job.model)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 8, 8))  # the data-dependent buffer, as the worker's first batch sets it
    return ValidationConfig(**validation), job, kind, model


def test_val_loss_is_the_objective_on_fixed_heldout_images_with_fixed_noise(tmp_path, shards):
    vcfg, job, kind, model = _toy_setup(tmp_path, shards, heldout_samples=48, batch_size=32)
    validator = Validator(vcfg, job, kind, rank=0, world=1, device=torch.device("cpu"))
    first = validator.evaluate(model)
    assert model.training  # restored
    assert validator.evaluate(model) == first  # the same images and noise every time

    from pipelines.train.validation import heldout_images

    images = heldout_images(job, 48)["image"]
    assert images.shape == (48, 1, 8, 8)
    model.eval()
    expected, count = 0.0, 0
    with torch.no_grad():
        for i, start in enumerate(range(0, 48, 32)):
            batch = {"image": images[start:start + 32]}
            loss, _ = kind.loss(model, batch, validator._generator(i))
            expected += float(loss) * batch["image"].shape[0]
            count += batch["image"].shape[0]
    assert first["val_loss"] == pytest.approx(expected / count, rel=1e-12)

    with torch.no_grad():  # the number follows the weights
        model.decoder.bias.add_(0.5)
    model.train()
    assert validator.evaluate(model)["val_loss"] != first["val_loss"]


def test_val_fid_is_the_fid_of_fixed_samples_against_the_heldout_images(tmp_path):
    from linearizer.metrics import fid
    from pipelines.train.validation import heldout_images

    shards32 = tmp_path / "shards32"
    write_shards(mnist_samples("test", 32, 64), shards32, "mnist-test", maxcount=64)
    # A classifier trained for 2 steps is a poor feature network but a deterministic one: enough
    # to check that the validator computes FID as linearizer.metrics does.
    vcfg, job, kind, model = _toy_setup(tmp_path, shards32, heldout_samples=32, fid_samples=48, classifier_steps=2,
                                        cache_dir=str(tmp_path / "cache"))
    job = apply_overrides(job, ["model.image_shape=[1, 32, 32]"])
    torch.manual_seed(0)
    model = kind.build(job.model)
    validator = Validator(vcfg, job, kind, rank=0, world=1, device=torch.device("cpu"))
    scores = validator.evaluate(model)
    assert scores.keys() == {"val_loss", "val_fid"}
    samples = kind.samples(model, 48, validator._generator(-1))
    expected = fid(heldout_images(job, 48)["image"], samples, vcfg.extractor())
    assert expected.extractor == "mnist-classifier-v1"
    assert scores["val_fid"] == pytest.approx(expected.value, rel=1e-9)
    assert validator.evaluate(model)["val_fid"] == scores["val_fid"]


def test_ranks_split_the_heldout_images_evenly(tmp_path, shards):
    vcfg, job, kind, _ = _toy_setup(tmp_path, shards, heldout_samples=64)
    job = apply_overrides(job, ["distributed.num_workers=2"])
    parts = [Validator(vcfg, job, kind, rank=r, world=2, device=torch.device("cpu")).batch["image"] for r in (0, 1)]
    assert parts[0].shape == parts[1].shape == (32, 1, 8, 8)
    from pipelines.train.validation import heldout_images

    everything = heldout_images(job, 64)["image"]
    assert torch.equal(torch.stack(parts, 1).reshape(64, 1, 8, 8), everything)  # r, r + 2, ... interleave back


def _validate_on_rank(rank: int, port: int, tmp: str, shards: str, out: str) -> None:
    """One of two gloo processes: score the same toy model with this rank's share."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        vcfg, job, kind, model = _toy_setup(Path(tmp), Path(shards), heldout_samples=64, batch_size=16)
        job = apply_overrides(job, ["distributed.num_workers=2"])
        validator = Validator(vcfg, job, kind, rank=rank, world=2, device=torch.device("cpu"))
        torch.save(validator.evaluate(model), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_average_their_shares_into_one_val_loss(tmp_path, shards):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_validate_on_rank, args=(port, str(tmp_path), str(shards), str(tmp_path)), nprocs=2, join=True)
    scores = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert scores[0] == scores[1]  # every rank reports the same number

    # What the ranks computed together, by hand: rank r scores images r, r + 2, ... in batches
    # of 16 with its own noise; the result is the mean over all 64 images.
    vcfg, job, kind, model = _toy_setup(tmp_path, shards, heldout_samples=64, batch_size=16)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for rank in (0, 1):
            share = Validator(vcfg, apply_overrides(job, ["distributed.num_workers=2"]), kind, rank=rank, world=2,
                              device=torch.device("cpu"))
            images = share.batch["image"]
            for i, start in enumerate(range(0, 32, 16)):
                loss, _ = kind.loss(model, {"image": images[start:start + 16]}, share._generator(i))
                total += float(loss) * 16
    assert scores[0]["val_loss"] == pytest.approx(total / 64, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _row(trial, rank, depth, lr, status, loss, step=8):
    return TrialRow(trial, f"run-{trial}", rank, depth, lr, status, step, step // 4, loss, math.nan, f"/ckpt/{trial}")


ROWS = [
    _row("t0", 2, 1, 1e-3, "completed", 0.50),
    _row("t1", 2, 1, 1e-2, "completed", 0.40),
    _row("t2", 2, 2, 1e-3, "stopped", 0.30, step=4),  # lower, but after fewer steps: not the best
    _row("t3", 4, 1, 1e-3, "completed", 0.45),
    _row("t4", 4, 2, 1e-3, "error", math.nan, step=0),
]


def test_best_trial_is_the_best_completed_one():
    assert best_trial(ROWS, "val_loss", "min").trial_id == "t1"
    assert best_trial(ROWS, "val_loss", "max").trial_id == "t0"
    assert best_trial([r for r in ROWS if r.status != "completed"], "val_loss", "min") is None


def test_heatmap_cells_hold_the_best_value_per_rank_and_depth():
    ranks, depths, values = heatmap_cells(ROWS, "val_loss", "min")
    assert ranks == [2, 4] and depths == [1, 2]
    assert values[0] == [0.40, 0.45]           # depth 1: best over learning rates
    assert values[1][0] == 0.30 and math.isnan(values[1][1])   # depth 2: stopped value; no value


def test_results_csv_and_heatmap_files(tmp_path):
    path = write_results_csv(ROWS, tmp_path / "results.csv")
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["t0", "t1", "t2", "t3", "t4"]
    assert table[2]["status"] == "stopped" and float(table[2]["val_loss"]) == 0.30
    from PIL import Image

    png = plot_heatmap(ROWS, "val_loss", "min", tmp_path / "heatmap.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_trial_rows_tell_stopped_from_completed_and_interrupted(tmp_path):
    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, tmp_path))

    def trial(trial_id, status, step, **extra):
        last = {"step": step, "val_loss": 1.0 / (step or 1), "training_iteration": step // 4, **extra}
        return SimpleNamespace(trial_id=trial_id, status=status, last_result=last,
                               config={"rank": 2, "depth": 1, "lr": 1e-3})

    rows = trial_rows(cfg, [trial("a", "TERMINATED", 8, checkpoint_path="/c/a"), trial("b", "TERMINATED", 4),
                            trial("c", "ERROR", 4), trial("d", "RUNNING", 4), trial("e", "PENDING", 0)],
                      run_ids={"a": "run-a"})
    status = {r.trial_id: r.status for r in rows}
    assert status == {"a": "completed", "b": "stopped", "c": "error", "d": "interrupted", "e": "interrupted"}
    a = next(r for r in rows if r.trial_id == "a")
    assert (a.run_id, a.checkpoint, a.reports, a.val_loss) == ("run-a", "/c/a", 2, 0.125)


# --------------------------------------------------------------------------------------------
# A real sweep
# --------------------------------------------------------------------------------------------


def test_a_stopped_trials_late_failure_does_not_overwrite_the_drivers_killed(mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store.tracking_uri)
    experiment = client.create_experiment("late-failure")
    ids = {name: client.create_run(experiment).info.run_id for name in ("stopped", "errored", "raced")}
    run = {name: TrackingRun(mlflow_store.tracking_uri, experiment, run_id, resumed=False)
           for name, run_id in ids.items()}
    rows = [TrialRow(name, ids[name], 2, 1, 1e-3, "stopped" if name != "errored" else "error", 4, 1, 0.5,
                     math.nan, "") for name in ids]

    # The trial that errors before the driver looks is FAILED, by the trial itself.
    assert fail_unless_closed(run["errored"])
    # A stopped trial that wrote FAILED as it unwound, before the driver's pass: the driver rules.
    client.set_terminated(ids["raced"], status="FAILED")
    close_trial_runs(rows, mlflow_store.tracking_uri)
    # After the driver's pass, a stopped trial's late failure writes nothing...
    assert not fail_unless_closed(run["stopped"])
    # ...and one that read its run as open just before the pass and wrote after it is put right
    # by the driver's second pass.
    client.set_terminated(ids["stopped"], status="FAILED")
    close_trial_runs(rows, mlflow_store.tracking_uri)
    for name, status in (("stopped", "KILLED"), ("raced", "KILLED"), ("errored", "FAILED")):
        got = client.get_run(ids[name])
        assert got.info.status == status, name
        assert (got.data.tags.get(EARLY_STOP_TAG) == "true") == (status == "KILLED")


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_sweep_tracks_stops_early_registers_the_best_and_resumes(ray_local, mlflow_store, shards, tmp_path):
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from pipelines.tune import run_sweep
    from pipelines.tune.config import PARENT_TAG, SWEEP_TAG, TRIAL_TAG

    def held_groups() -> set[str]:
        return {k for k, v in ray_local.util.placement_group_table().items() if v["state"] != "REMOVED"}

    cfg = from_dict(SweepConfig, sweep_dict(tmp_path, shards, "tune-sweep", mlflow_store.tracking_uri,
                                            mlflow_store.artifact_location))
    groups_before = held_groups()
    outcome = run_sweep(apply_overrides(cfg, ["max_concurrent_trials=null"]))
    assert held_groups() <= groups_before  # stopped trials' workers gave their CPUs back
    client = MlflowClient(mlflow_store.tracking_uri)
    rows = outcome.trials
    assert not outcome.resumed and not outcome.interrupted
    assert outcome.max_concurrent_trials == 1  # 2 CPUs, trials of 1 worker x 1 CPU (+ 0.01)
    assert len(rows) == 4 and sorted((r["rank"], r["depth"]) for r in rows) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    lrs = [r["lr"] for r in rows]
    assert max(lrs) / min(lrs) > 100, f"the sweep is built to stop trials: its learning rates must differ a lot: {lrs}"

    # Every trial is a nested MLflow run of the sweep, with its values as params and tags.
    for row in rows:
        run = client.get_run(row["run_id"])
        assert run.data.tags[TRIAL_TAG] == row["trial_id"] and run.data.tags[SWEEP_TAG] == "tune-sweep"
        assert run.data.tags[PARENT_TAG] == outcome.run_id
        assert (run.data.tags["linearizer.rank"], run.data.tags["linearizer.depth"]) == (str(row["rank"]),
                                                                                        str(row["depth"]))
        assert run.data.params["model.operator.rank"] == str(row["rank"])
        assert run.data.params["model.flow.depth"] == str(row["depth"])
        assert float(run.data.params["train.lr"]) == row["lr"]
        # Validation at every report (a stopped trial may log one more before its workers go).
        reported = [4, 8][: row["step"] // 4]
        assert [s for s, _ in _history(client, row["run_id"], "val_loss")][: len(reported)] == reported

    # ASHA stopped at least one trial at the rung (step 4), and only one that was behind there.
    stopped = [r for r in rows if r["status"] == "stopped"]
    completed = [r for r in rows if r["status"] == "completed"]
    assert stopped and completed and len(stopped) + len(completed) == 4
    at_rung = {r["trial_id"]: dict(_history(client, r["run_id"], "val_loss"))[4] for r in rows}
    for row in stopped:
        assert row["step"] == 4
        assert at_rung[row["trial_id"]] > min(at_rung.values())
        run = client.get_run(row["run_id"])
        assert run.info.status == "KILLED" and run.data.tags["linearizer.early_stopped"] == "true"
    for row in completed:
        assert row["step"] == 8 and client.get_run(row["run_id"]).info.status == "FINISHED"

    # The summary: table, heat-map, and the best completed trial registered as challenger.
    parent = client.get_run(outcome.run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(outcome.run_id)} >= {"results.csv", "heatmap.png"}
    with open(outcome.results_csv) as f:
        assert len(list(csv.DictReader(f))) == 4
    best = min(completed, key=lambda r: r["val_loss"])
    assert outcome.best["trial_id"] == best["trial_id"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    version = client.get_model_version_by_alias("tune-sweep-model", "challenger")
    assert str(version.version) == outcome.model_version and version.run_id == best["run_id"]
    assert version.tags["trial_id"] == best["trial_id"]
    mlflow.set_tracking_uri(mlflow_store.tracking_uri)
    served = mlflow.pyfunc.load_model("models:/tune-sweep-model@challenger")
    noise = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    samples = served.predict(noise, params={"mode": "sample"})
    assert samples.shape == (3, 1, 8, 8) and np.isfinite(samples).all()

    # Rerunning the name resumes the finished sweep: no trial trains again, nothing is duplicated.
    histories = {r["run_id"]: _history(client, r["run_id"], "val_loss") for r in rows}
    trial_runs = client.search_runs([parent.info.experiment_id], f"tags.`{SWEEP_TAG}` = 'tune-sweep'")
    again = run_sweep(cfg)
    assert again.resumed and again.run_id == outcome.run_id
    assert [(r["trial_id"], r["run_id"], r["status"], r["step"]) for r in again.trials] == \
           [(r["trial_id"], r["run_id"], r["status"], r["step"]) for r in rows]
    assert {r["run_id"]: _history(client, r["run_id"], "val_loss") for r in again.trials} == histories
    assert len(client.search_runs([parent.info.experiment_id], f"tags.`{SWEEP_TAG}` = 'tune-sweep'")) == len(trial_runs)
    assert again.model_version == outcome.model_version
    assert len(client.search_model_versions("name = 'tune-sweep-model'")) == 1

    # A changed config under the same name is refused rather than mixed into the sweep.
    with pytest.raises(ConfigError, match="another config"):
        run_sweep(apply_overrides(cfg, ["space.rank=[2, 8]"]))
