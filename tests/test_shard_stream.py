"""The tar stream the training reader and `verify_shards(deep=True)` share (`pipelines.shards.stream`)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from pipelines.shards import ShardError, collate
from pipelines.shards.stream import SkipBudget, shard_samples, tar_samples


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _members(n: int) -> list[tuple[str, bytes]]:
    return [(f"{i:06d}.{ext}", f"{i}-{ext}".encode() * 100) for i in range(n) for ext in ("png", "cls")]


def test_samples_match_webdatasets_own_reader(tmp_path):
    path = _tar(tmp_path / "s.tar", _members(5) + [("sub/dir/x7.seg.png", b"abc"), ("sub/dir/x7.cls", b"1")])
    ours = list(shard_samples(str(path), SkipBudget(), expected=6))
    theirs = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in a.items()} == {k: v for k, v in b.items() if k in a}
        assert set(b) - set(a) <= {"__local_path__"}


def test_a_cut_inside_a_member_names_it_and_the_last_complete_sample(tmp_path):
    path = _tar(tmp_path / "s.tar", _members(4))
    with tarfile.open(path) as tar:
        cut = [m for m in tar][5]  # 000002.cls
    path.write_bytes(path.read_bytes()[: cut.offset_data + 10])
    with pytest.raises(ShardError) as info:
        list(shard_samples(str(path), SkipBudget()))
    message = str(info.value)
    assert str(path) in message and "'000002.cls'" in message and "after sample '000001'" in message
    assert "'000002' is incomplete" in message


def test_a_cut_at_a_header_is_caught_only_by_the_manifest_count(tmp_path):
    path = _tar(tmp_path / "s.tar", _members(4))
    with tarfile.open(path) as tar:
        cut = [m for m in tar][4]  # the header of 000002.png
    path.write_bytes(path.read_bytes()[: cut.offset])
    assert len(list(shard_samples(str(path), SkipBudget()))) == 2  # tarfile sees a clean end
    with pytest.raises(ShardError, match=r"holds 2 samples, manifest says 4.*after sample '000001'"):
        list(shard_samples(str(path), SkipBudget(), expected=4))


def test_a_cut_shard_skipped_counts_every_sample_it_lost(tmp_path):
    path = _tar(tmp_path / "s.tar", _members(6))
    with tarfile.open(path) as tar:
        cut = [m for m in tar][5]
    path.write_bytes(path.read_bytes()[: cut.offset_data + 10])
    budget = SkipBudget(limit=10)
    assert [s["__key__"] for s in shard_samples(str(path), budget, expected=6)] == ["000000", "000001"]
    assert budget.skipped == 4 and budget.take_unreported() == 4 and budget.take_unreported() == 0


def test_keys_that_come_back_later_are_refused(tmp_path):
    members = _members(2)
    path = _tar(tmp_path / "s.tar", members[:2] + members[2:3] + [("000000.json", b"{}")])
    with pytest.raises(ShardError, match="'000000': key appears twice"):
        list(shard_samples(str(path), SkipBudget(limit=5)))


def test_the_budget_raises_the_original_error_at_zero_and_names_the_limit_past_it():
    error = ShardError("shard.tar: sample 'k': corrupt png member 'png'")
    with pytest.raises(ShardError) as info:
        SkipBudget(0).skip(error)
    assert info.value is error
    budget = SkipBudget(2)
    budget.skip(error)
    budget.skip(error)
    with pytest.raises(ShardError, match=r"corrupt png .*skip limit reached: 2 of 2"):
        budget.skip(error)
    with pytest.raises(ValueError, match=">= 0"):
        SkipBudget(-1)


def test_stage_reads_shards_in_the_order_given_and_checks_each_count(tmp_path):
    a = _tar(tmp_path / "a.tar", _members(2))
    b = _tar(tmp_path / "b.tar", _members(3))
    keys = [s["__key__"] for s in tar_samples(iter([{"url": str(b)}, {"url": str(a)}]), SkipBudget(),
                                             {str(a): 2, str(b): 3})]
    assert keys == ["000000", "000001", "000002", "000000", "000001"]
    with pytest.raises(ShardError, match="manifest says 5"):
        list(tar_samples(iter([{"url": str(a)}]), SkipBudget(), {str(a): 5}))


def test_collate_sums_the_skips_of_its_samples():
    batch = collate([{"__key__": "a", "__skipped__": 2}, {"__key__": "b", "__skipped__": 0},
                     {"__key__": "c", "__skipped__": 3}])
    assert batch["__skipped__"] == 5 and batch["__key__"] == ["a", "b", "c"]
