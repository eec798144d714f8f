"""Data faults on the training path: every damaged shard stops the job with its name and key.

Five faults (truncated tar, corrupt PNG, missing member, wrong image size, shard and manifest out
of step) are injected into a real 8x8 digits shard set, then the job's own data path is run:

- the pre-flight of `pipelines.train.train` (`ensure_shards`) at the default `verify: shallow`
  (sizes and checksums: the damage is on disk, the manifest is the writer's) and at `deep`;
- with `verify: off`, the reader every training worker runs (`pipelines.shards.iter_batches`,
  resampled shards, one micro-batch per rank and step, exactly the worker's arguments).

Each must raise `ShardError` naming the shard file and, where one applies, the sample key.
Only when a job opts in (`data.max_skipped = N`) are damaged samples skipped instead: each one
counted in the batches (`__skipped__`, reported by the trainer as `data_skipped`), never
returned, and the stream stops once more than N would be skipped.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.shards import ShardError, digits_samples, iter_batches, load_manifest, write_shards
from pipelines.train import ensure_shards
from tests.toy_kind import tiny_job

PREFIX = "digits-train"
#: the damaged shard and the sample in it that is hit.
SHARD = f"{PREFIX}-000001.tar"
#: steps x ranks x micro-batch samples read on the data path: ~10x the set, every shard is drawn.
STEPS, WORLD, BATCH = 40, 2, 16


@dataclass(frozen=True)
class Damage:
    """What was broken: the shard file, the sample keys a message may name (any one of them)."""

    shard: str
    keys: tuple[str, ...]


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


def _write_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Rewrite a tar in place; the manifest keeps the old checksum, as after disk corruption."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _png(height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _victim(shards: Path) -> str:
    """The key of the fifth sample of the damaged shard."""
    return _members(shards / SHARD)[2 * 4][0].split(".")[0]


def truncate_tar(shards: Path) -> Damage:
    """Cut the shard inside the data of a member (a copy or a write that stopped half-way)."""
    path = shards / SHARD
    with tarfile.open(path) as tar:
        members = [m for m in tar if m.isreg()]
    cut = members[len(members) // 2]
    previous = members[members.index(cut) - 1]
    path.write_bytes(path.read_bytes()[: cut.offset_data + cut.size // 2])
    return Damage(SHARD, (cut.name.split(".")[0], previous.name.split(".")[0]))


def truncate_tar_at_header(shards: Path) -> Damage:
    """Cut the shard exactly at a member header: `tarfile` reads this as a clean end of the
    archive, so only the manifest's sample count reveals the loss."""
    path = shards / SHARD
    with tarfile.open(path) as tar:
        members = [m for m in tar if m.isreg()]
    cut = members[len(members) // 2]
    previous = members[members.index(cut) - 1]
    path.write_bytes(path.read_bytes()[: cut.offset])
    return Damage(SHARD, (previous.name.split(".")[0],))


def corrupt_png(shards: Path) -> Damage:
    key = _victim(shards)
    members = [(n, b"\x89PNG\r\n\x1a\n" + d[8:40] if n == f"{key}.png" else d) for n, d in _members(shards / SHARD)]
    _write_members(shards / SHARD, members)
    return Damage(SHARD, (key,))


def missing_key(shards: Path) -> Damage:
    key = _victim(shards)
    _write_members(shards / SHARD, [(n, d) for n, d in _members(shards / SHARD) if n != f"{key}.cls"])
    return Damage(SHARD, (key,))


def wrong_image_size(shards: Path) -> Damage:
    key = _victim(shards)
    _write_members(shards / SHARD, [(n, _png(9, 8) if n == f"{key}.png" else d) for n, d in _members(shards / SHARD)])
    return Damage(SHARD, (key,))


def shard_missing(shards: Path) -> Damage:
    """The manifest lists a shard whose file is gone (deleted, or never copied to this node)."""
    (shards / SHARD).unlink()
    return Damage(SHARD, ())


FAULTS: dict[str, Callable[[Path], Damage]] = {
    "truncated tar": truncate_tar,
    "tar cut at a member header": truncate_tar_at_header,
    "corrupt png": corrupt_png,
    "missing key": missing_key,
    "wrong image size": wrong_image_size,
    "shard missing from the manifest's set": shard_missing,
}


@pytest.fixture
def shards(tmp_path) -> Path:
    """64 digits at 8x8 in 4 shards of 16."""
    directory = tmp_path / "shards"
    write_shards(digits_samples("train", 8, 64), directory, PREFIX, maxcount=16)
    return directory


def _job(tmp_path: Path, shards: Path, verify: str):
    return tiny_job(tmp_path, f"data-{verify}", shards, "sqlite:///unused.db", None,
                    data={"source": "none", "prefix": PREFIX, "verify": verify})


def _read_like_a_worker(shards: Path, max_skipped: int = 0, keys: set[str] | None = None) -> tuple[int, int]:
    """Every rank's batches, with the arguments `pipelines.train.worker.Trainer` passes; returns the
    samples read and the skips the batches report. `keys` collects the keys read."""
    read = skipped = 0
    for rank in range(WORLD):
        for batch in iter_batches(shards, PREFIX, BATCH // WORLD, rank, WORLD, seed=0, steps=STEPS,
                                  max_skipped=max_skipped):
            read += len(batch["__key__"])
            skipped += batch["__skipped__"]
            if keys is not None:
                keys.update(batch["__key__"])
    return read, skipped


def _assert_names(error: BaseException, damage: Damage, shards: Path) -> None:
    message = str(error)
    assert str(shards / damage.shard) in message, message
    if damage.keys:
        assert any(repr(k) in message or k in message for k in damage.keys), (damage.keys, message)


def test_the_undamaged_set_reads_cleanly(tmp_path, shards):
    """The baseline of the faults below: same reader, same steps, no error."""
    assert ensure_shards(_job(tmp_path, shards, "deep")) == {PREFIX: 64}
    assert _read_like_a_worker(shards) == (STEPS * BATCH, 0)


@pytest.mark.parametrize("verify", ["shallow", "deep"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_preflight_stops_the_job_naming_the_shard(tmp_path, shards, fault, verify, figures):
    damage = FAULTS[fault](shards)
    with pytest.raises(ShardError) as info:
        ensure_shards(_job(tmp_path, shards, verify))
    figures.count("data_faults_injected")
    assert str(shards / damage.shard) in str(info.value), str(info.value)
    figures.count("data_faults_stopped_naming_shard")
    if verify == "deep":  # shallow checks compare files with the manifest: no sample is decoded
        _assert_names(info.value, damage, shards)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_worker_data_path_raises_naming_shard_and_key(tmp_path, shards, fault, figures):
    """With pre-flight verification off, the damage reaches the workers' reader, which must
    stop with the shard and the key rather than train on, or skip, silently."""
    assert ensure_shards(_job(tmp_path, shards, "off")) == {PREFIX: 64}  # off: the damage passes the driver
    damage = FAULTS[fault](shards)
    figures.count("data_faults_injected")
    with pytest.raises(ShardError) as info:
        _read_like_a_worker(shards)
    assert str(shards / damage.shard) in str(info.value), str(info.value)
    figures.count("data_faults_stopped_naming_shard")
    _assert_names(info.value, damage, shards)


def test_unlisted_shard_stops_verification_and_is_never_read(tmp_path, shards, figures):
    """A tar in the directory that no manifest lists (a stray or foreign shard): pre-flight
    rejects it; a reader that runs anyway reads only what the manifest lists."""
    other = tmp_path / "other"
    write_shards(({"__key__": f"stray{i:03d}", **s} for i, s in enumerate(digits_samples("train", 8, 16))),
                 other, "stray", maxcount=16)
    stray = shards / f"{PREFIX}-000004.tar"
    (other / "stray-000000.tar").rename(stray)
    figures.count("data_faults_injected")
    with pytest.raises(ShardError, match="not listed") as info:
        ensure_shards(_job(tmp_path, shards, "shallow"))
    assert str(stray) in str(info.value)
    figures.count("data_faults_stopped_naming_shard")

    urls, keys = set(), set()
    for batch in iter_batches(shards, PREFIX, BATCH // WORLD, 0, WORLD, seed=0, steps=STEPS):
        urls.update(batch["__url__"])
        keys.update(batch["__key__"])
    assert str(stray) not in urls and not any(k.startswith("stray") for k in keys)
    assert urls == {str(shards / s.name) for s in load_manifest(shards, PREFIX).shards}


#: the faults that damage samples inside a listed shard (a missing shard file is not a sample:
#: it stops the job whatever `max_skipped` says, before any reading).
SKIPPABLE = [f for f in FAULTS if f != "shard missing from the manifest's set"]


@pytest.mark.parametrize("fault", SKIPPABLE)
def test_opt_in_skip_counts_every_damaged_sample_and_returns_none(tmp_path, shards, fault, figures):
    """`max_skipped` large: the stream delivers every batch from the intact samples, reports
    the skips, and never hands out a damaged sample."""
    damage = FAULTS[fault](shards)
    figures.count("data_faults_injected")
    keys: set[str] = set()
    read, skipped = _read_like_a_worker(shards, max_skipped=10**6, keys=keys)
    assert read == STEPS * BATCH
    assert skipped >= 1
    if fault in ("corrupt png", "missing key", "wrong image size"):
        assert not keys & set(damage.keys), keys & set(damage.keys)
    figures.count("data_faults_skipped_and_counted")


@pytest.mark.parametrize("fault", SKIPPABLE)
def test_skip_limit_stops_the_stream_naming_shard_and_key(tmp_path, shards, fault, figures):
    """The damaged shard is drawn again and again (resampled shards): past the limit the
    stream stops, with the usual message and the limit named."""
    damage = FAULTS[fault](shards)
    figures.count("data_faults_injected")
    with pytest.raises(ShardError, match="skip limit reached") as info:
        _read_like_a_worker(shards, max_skipped=1)
    _assert_names(info.value, damage, shards)
    figures.count("data_faults_stopped_naming_shard")


def test_max_skipped_must_not_be_negative(tmp_path, shards):
    from linearizer.config import ConfigError

    with pytest.raises(ConfigError, match="max_skipped must be >= 0"):
        tiny_job(tmp_path, "neg", shards, "sqlite:///unused.db", None, data={"max_skipped": -1})


def _corrupt_one_png_per_shard(shards: Path) -> list[str]:
    """The fifth sample of every shard gets a corrupt PNG: any stream meets damage early."""
    keys = []
    for path in sorted(shards.glob(f"{PREFIX}-*.tar")):
        members = _members(path)
        key = members[2 * 4][0].split(".")[0]
        _write_members(path, [(n, b"\x89PNG\r\n\x1a\n" + d[8:40] if n == f"{key}.png" else d) for n, d in members])
        keys.append(key)
    return keys


@pytest.mark.slow
def test_a_training_job_that_opts_in_reports_its_skips_in_the_run_metrics(
        ray_local, mlflow_store, tmp_path, shards, figures):
    """The whole path: Ray Train workers skip the damaged samples, the run finishes, and the
    MLflow run carries `data_skipped` (summed over ranks, cumulative)."""
    from mlflow.tracking import MlflowClient

    from pipelines.train import train

    _corrupt_one_png_per_shard(shards)
    figures.count("data_faults_injected", 4)
    cfg = tiny_job(tmp_path, "data-skip", shards, mlflow_store.tracking_uri, mlflow_store.artifact_location,
                   data={"source": "none", "prefix": PREFIX, "verify": "off", "max_skipped": 1000})
    train(cfg)
    client = MlflowClient(mlflow_store.tracking_uri)
    run, = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert run.info.status == "FINISHED"
    history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "data_skipped"),
                                       key=lambda m: m.step)]
    assert len(history) == cfg.train.steps and history[-1] >= 1, history
    assert history == sorted(history)  # cumulative
    figures.count("data_faults_skipped_and_counted", 4)
