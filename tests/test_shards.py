"""WebDataset shards: write -> manifest -> verify, every kind of damage named, readers
(ours, webdataset's, datasets'), equal batch counts across ranks, and the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from linearizer.data import load_mnist
from pipelines.shards import (ShardError, main, brace_pattern, digits_samples, folder_samples, hf_samples, iter_batches,
                            load_manifest, make_webdataset, mnist_samples, read_manifests, shard_urls,
                            verify_all, verify_shards, write_shards)
from pipelines.shards.format import encode_sample, file_digest

ROOT = Path(__file__).resolve().parents[1]
N = 250  # 3 shards of 100, 100, 50


def _samples(n: int = N, size: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (size, size, 1), dtype=np.uint8), "label": int(i % 10)} for i in range(n)]


@pytest.fixture
def shard_dir(tmp_path):
    write_shards(_samples(), tmp_path, "toy-train", maxcount=100, source={"name": "toy"})
    return tmp_path


# --------------------------------------------------------------------------------------------
# Writing and the manifest
# --------------------------------------------------------------------------------------------


def test_write_manifest_verify(shard_dir, tmp_path_factory):
    m = load_manifest(shard_dir, "toy-train")
    assert [s.name for s in m.shards] == [f"toy-train-00000{i}.tar" for i in range(3)]
    assert [s.count for s in m.shards] == [100, 100, 50] and m.count == N
    assert m.pattern == "toy-train-{000000..000002}.tar"
    assert m.schema == {"keys": ["cls", "png"], "images": {"png": [1, 8, 8]}, "dtype": "uint8"}
    assert m.source == {"name": "toy"} and m.created and m.format == "linearizer-shards/1"
    for s in m.shards:
        assert file_digest(shard_dir / s.name) == (s.sha256, s.bytes)
    assert verify_shards(shard_dir) == m
    assert sorted(p.name for p in shard_dir.iterdir() if p.name.endswith(".partial")) == []  # no temp files left
    # byte-identical shards from the same samples: checksums are reproducible
    again = write_shards(_samples(), tmp_path_factory.mktemp("again"), "toy-train", maxcount=100)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in m.shards]


def test_maxsize_rotates_shards(tmp_path):
    samples = _samples(40)
    m = write_shards(samples, tmp_path, "toy", maxcount=1000, maxsize=1000)
    payloads = [sum(len(v) for k, v in encode_sample(s, i)[0].items() if k != "__key__") for i, s in enumerate(samples)]
    expected, size = [], None  # ShardWriter's rule: a new shard once the payload reached maxsize
    for p in payloads:
        if size is None or size >= 1000:
            expected.append(0)
            size = 0
        expected[-1] += 1
        size += p
    assert [s.count for s in m.shards] == expected and len(expected) > 1
    verify_shards(tmp_path, "toy")


def test_round_trip_values_and_paired_fields(tmp_path):
    rng = np.random.default_rng(1)
    samples = [{"__key__": f"pair{i:03d}", "image": torch.rand(3, 12, 12), "target": rng.integers(0, 256, (12, 12, 3),
                dtype=np.uint8), "style": i % 4, "meta": {"i": i}} for i in range(30)]
    m = write_shards(samples, tmp_path, "pairs", maxcount=16)
    assert m.schema["keys"] == ["json", "png", "style.cls", "target.png"]
    assert m.schema["images"] == {"png": [3, 12, 12], "target.png": [3, 12, 12]}
    batches = list(make_webdataset(shard_urls(tmp_path, "pairs"), batch_size=10, shuffle=False))
    assert len(batches) == 3
    b = batches[0]
    assert b["__key__"] == [f"pair{i:03d}" for i in range(10)]
    assert b["image"].shape == (10, 3, 12, 12) and b["target"].shape == (10, 3, 12, 12)
    assert b["style"].dtype == torch.long and b["style"].tolist() == [i % 4 for i in range(10)]
    assert b["meta"] == [{"i": i} for i in range(10)]
    for i in range(10):  # PNG is lossless: float images come back as round(x * 255) / 255, arrays exactly
        assert torch.equal(b["image"][i], (samples[i]["image"] * 255).round() / 255)
        assert torch.equal(b["target"][i], torch.from_numpy(samples[i]["target"]).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("bad, message", [
    ([{"image": np.zeros((8, 8), np.uint8)}, {"image": np.zeros((9, 8), np.uint8)}], "image shapes"),
    ([{"image": np.zeros((8, 8), np.uint8), "label": 1}, {"image": np.zeros((8, 8), np.uint8)}], "has keys"),
    ([{"__key__": "a.b", "image": np.zeros((8, 8), np.uint8)}], "no dots"),
    ([{"image": np.zeros((8, 8), np.uint8)}, {"__key__": "000000000", "image": np.zeros((8, 8), np.uint8)}],
     "duplicate sample key"),
    ([{"label": "cat"}], "must be an image, an int or a dict"),
    ([{"image": 3}], "field 'image' must be an image"),
    ([{"image": np.zeros((8, 8), np.float32)}], "must be uint8"),
    ([], "no samples"),
])
def test_write_rejects_bad_samples_and_leaves_nothing(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_shards(bad, tmp_path, "bad")
    assert [p.name for p in tmp_path.iterdir() if p.name != ".manifest.lock"] == []


def test_overwrite_and_several_sets(shard_dir):
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(_samples(10), shard_dir, "toy-train")
    write_shards(_samples(120), shard_dir, "toy-train", maxcount=100, overwrite=True)  # 2 shards now
    assert not (shard_dir / "toy-train-000002.tar").exists()  # the stale third shard is gone
    write_shards(_samples(30), shard_dir, "toy-test", maxcount=100)
    assert sorted(read_manifests(shard_dir)) == ["toy-test", "toy-train"]
    assert {p: m.count for p, m in verify_all(shard_dir).items()} == {"toy-test": 30, "toy-train": 120}
    with pytest.raises(ShardError, match="several shard sets"):
        load_manifest(shard_dir)
    assert brace_pattern(shard_dir, "toy-test") == str(shard_dir / "toy-test-{000000..000000}.tar")


# --------------------------------------------------------------------------------------------
# Damage: every defect raises a ShardError naming the shard (and the sample key)
# --------------------------------------------------------------------------------------------


def _rewrite(directory: Path, name: str, edit) -> None:
    """Rewrite a shard's members through `edit(list of (member name, bytes))` and refresh its
    manifest entry, as a buggy writer would: only the deep check can see the damage."""
    path = directory / name
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, data in edit(members):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["sets"]["toy-train"]["shards"]:
        if entry["name"] == name:
            entry["sha256"], entry["bytes"] = file_digest(path)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _png(shape) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _replace(key_ext: str, data: bytes):
    return lambda members: [(n, data if n == key_ext else d) for n, d in members]


def _edit_bytes(path: Path, edit) -> None:
    path.write_bytes(edit(path.read_bytes()))


def _insert_after(after: str, name: str, data: bytes):
    return lambda members: [m for n, d in members for m in [(n, d)] + ([(name, data)] if n == after else [])]


KEY = "000000105"  # the sixth sample of shard 1
DAMAGE = {
    "corrupt png": (lambda d: _rewrite(d, "toy-train-000001.tar", _replace(f"{KEY}.png", b"\x89PNG\r\n\x1a\nbroken")),
                    ["toy-train-000001.tar", KEY, "corrupt png"]),
    "missing key": (lambda d: _rewrite(d, "toy-train-000001.tar",
                                       lambda ms: [(n, x) for n, x in ms if n != f"{KEY}.cls"]),
                    ["toy-train-000001.tar", KEY, "missing key", "cls"]),
    "wrong image size": (lambda d: _rewrite(d, "toy-train-000001.tar", _replace(f"{KEY}.png", _png((9, 8)))),
                         ["toy-train-000001.tar", KEY, "wrong image shape", "[1, 9, 8]"]),
    "unexpected key": (lambda d: _rewrite(d, "toy-train-000001.tar",
                                          _insert_after(f"{KEY}.png", f"{KEY}.extra.png", _png((8, 8)))),
                       ["toy-train-000001.tar", KEY, "unexpected key", "extra.png"]),
    "count": (lambda d: _rewrite(d, "toy-train-000001.tar", lambda ms: ms[:-2]),
              ["toy-train-000001.tar", "holds 99 samples, manifest says 100"]),
    "truncated": (lambda d: _edit_bytes(d / "toy-train-000001.tar", lambda b: b[:30000]),
                  ["toy-train-000001.tar", "checksum mismatch", "truncated", "after sample"]),
    # the last byte lies in the tar's zero padding: the archive still reads, only the digest differs
    "checksum": (lambda d: _edit_bytes(d / "toy-train-000002.tar", lambda b: b[:-1] + b"\x01"),
                 ["toy-train-000002.tar", "checksum mismatch"]),
    "missing shard": (lambda d: (d / "toy-train-000002.tar").unlink(), ["toy-train-000002.tar", "missing"]),
    "unlisted shard": (lambda d: shutil.copy(d / "toy-train-000000.tar", d / "toy-train-000003.tar"),
                       ["toy-train-000003.tar", "not listed"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_every_defect(shard_dir, damage):
    apply, expected = DAMAGE[damage]
    apply(shard_dir)
    with pytest.raises(ShardError) as info:
        verify_shards(shard_dir, "toy-train")
    for fragment in expected:
        assert fragment in str(info.value), (fragment, str(info.value))
    if damage == "checksum":
        assert "truncated" not in str(info.value)  # the tar itself still reads: only the digest differs


@pytest.mark.parametrize("damage", ["corrupt png", "missing key", "wrong image size", "count"])
def test_shallow_verify_checks_only_files(shard_dir, damage):
    DAMAGE[damage][0](shard_dir)
    verify_shards(shard_dir, "toy-train", deep=False)  # the manifest was refreshed: files match it


@pytest.mark.parametrize("damage", ["corrupt png", "truncated"])
def test_reader_errors_name_shard_and_key(shard_dir, damage):
    DAMAGE[damage][0](shard_dir)
    schema = load_manifest(shard_dir).schema
    with pytest.raises(ShardError) as info:
        for _ in make_webdataset(shard_urls(shard_dir), batch_size=50, shuffle=False, schema=schema):
            pass
    assert "toy-train-000001.tar" in str(info.value)
    if damage == "corrupt png":
        assert KEY in str(info.value)


# --------------------------------------------------------------------------------------------
# Readers: ours across ranks, webdataset's, datasets'
# --------------------------------------------------------------------------------------------


def test_iter_batches_equal_counts_across_ranks(shard_dir):
    steps, bs = 9, 32  # 9 * 32 = 288 > 250 samples: the stream must not run dry on any rank
    runs = {r: list(iter_batches(shard_dir, "toy-train", bs, rank=r, world_size=2, seed=7, steps=steps))
            for r in (0, 1)}
    for r, batches in runs.items():
        assert len(batches) == steps
        assert all(b["image"].shape == (bs, 1, 8, 8) and b["label"].shape == (bs,) for b in batches)
    keys = {r: [k for b in batches for k in b["__key__"]] for r, batches in runs.items()}
    assert keys[0] != keys[1]  # ranks draw different streams
    again = [k for b in iter_batches(shard_dir, "toy-train", bs, rank=0, world_size=2, seed=7, steps=steps)
             for k in b["__key__"]]
    assert again == keys[0]  # reproducible from (seed, rank)


def test_iter_batches_with_loader_workers(shard_dir):
    run = [list(iter_batches(shard_dir, None, 16, rank=1, world_size=2, seed=3, steps=4, num_workers=2))
           for _ in range(2)]
    assert len(run[0]) == 4 and [b["__key__"] for b in run[0]] == [b["__key__"] for b in run[1]]
    assert run[0][0]["__key__"] != run[0][1]["__key__"]  # the two workers draw different streams


def test_exact_partition_needs_epoch_len_and_then_stays_in_step(shard_dir):
    urls = shard_urls(shard_dir)
    with pytest.raises(ValueError, match="epoch_len"):
        make_webdataset(urls, batch_size=25, world_size=2, rank=0)
    # 3 shards on 2 ranks hold 200 / 50 or 150 / 100 samples; with_epoch keeps ranks in step, and
    # over several passes (12 * 25 = 300 samples > either share) each rank keeps its own shards
    runs = [list(make_webdataset(urls, 25, seed=0, rank=r, world_size=2, epoch_len=12)) for r in (0, 1)]
    assert [len(r) for r in runs] == [12, 12]
    shards = [{u for b in run for u in b["__url__"]} for run in runs]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(urls)
    one_rank = [k for b in make_webdataset(urls, 25, shuffle=False) for k in b["__key__"]]
    assert one_rank == [f"{i:09d}" for i in range(N)]  # one rank, one pass: every sample once, in order


def test_webdataset_and_datasets_read_the_shards(shard_dir, tmp_path):
    originals = _samples()
    ds = wds.WebDataset(brace_pattern(shard_dir, "toy-train"), shardshuffle=False).decode("l")
    seen = list(ds)
    assert len(seen) == N and seen[0]["png"].shape == (8, 8) and seen[0]["cls"] == 0
    import datasets

    hf = datasets.load_dataset("webdataset", data_files={"train": shard_urls(shard_dir)}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == N and {"png", "cls", "__key__"} <= set(hf.column_names)
    row = hf[17]
    assert row["cls"] == originals[17]["label"]
    assert np.array_equal(np.asarray(row["png"]), originals[17]["image"][:, :, 0])


def test_datasets_reads_paired_fields_streaming(tmp_path):
    import datasets

    samples = [{"image": np.full((4, 4, 3), i, np.uint8), "target": np.full((4, 4, 3), 255 - i, np.uint8),
                "style": i % 3} for i in range(8)]
    write_shards(samples, tmp_path, "pairs", maxcount=5)
    hf = datasets.load_dataset("webdataset", data_files={"train": shard_urls(tmp_path, "pairs")}, split="train",
                               streaming=True)
    rows = list(hf)
    assert len(rows) == 8
    assert np.asarray(rows[3]["target.png"])[0, 0].tolist() == [252, 252, 252] and rows[3]["style.cls"] == 0


# --------------------------------------------------------------------------------------------
# Sources and the CLI
# --------------------------------------------------------------------------------------------


def test_mnist_source_recovers_raw_bytes(tmp_path):
    m = write_shards(mnist_samples("test", limit=40), tmp_path, "mnist-test", maxcount=25, source={"name": "mnist"})
    assert m.count == 40 and m.schema["images"] == {"png": [1, 32, 32]}
    x, y = load_mnist("test", limit=40)
    batch = next(iter(make_webdataset(shard_urls(tmp_path), batch_size=40, shuffle=False)))
    assert torch.equal(batch["label"], y)
    assert torch.equal(batch["image"], x)  # byte k decodes to k/255 in both


def test_folder_and_hf_sources(tmp_path):
    import datasets

    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    m = write_shards(folder_samples(str(tmp_path / "photos"), size=8, channels=3), tmp_path / "out", "folder")
    batch = next(iter(make_webdataset(shard_urls(tmp_path / "out"), 3, shuffle=False)))
    assert batch["meta"] == [{"path": f"a/{i}.png"} for i in range(3)] and batch["label"].tolist() == [0, 0, 0]
    assert m.schema["images"] == {"png": [3, 8, 8]}

    saved = tmp_path / "hf"
    datasets.Dataset.from_dict({"image": [Image.fromarray(np.full((6, 6), i, np.uint8)) for i in range(7)],
                                "label": list(range(7))}).save_to_disk(str(saved))
    m = write_shards(hf_samples(str(saved), "train", size=6, channels=1, streaming=True), tmp_path / "out", "hf",
                     maxcount=3)
    assert [s.count for s in m.shards] == [3, 3, 1]
    verify_shards(tmp_path / "out", "hf")


def test_digits_source_split():
    assert sum(1 for _ in digits_samples("train", size=8, limit=5)) == 5
    with pytest.raises(ValueError, match="only the split 'train'"):
        next(digits_samples("test"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipelines.shards", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_write_and_verify(tmp_path):
    out = tmp_path / "shards"
    done = _cli("write", "--source", "digits", "--out", str(out), "--limit", "120", "--maxcount", "50",
                "--size", "16")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["count"] == 120 and summary["pattern"] == "digits-train-{000000..000002}.tar"
    ok = _cli("verify", str(out))
    assert ok.returncode == 0 and "ok digits-train: 120 samples in 3 shards (deep)" in ok.stdout, ok.stderr


def test_cli_exit_statuses_name_the_reason(shard_dir, tmp_path, capsys):
    # the same entry point in-process (a subprocess per case would mostly measure torch's import);
    # the project's scheme: 2 bad command line or input, 3 could not run
    assert main(["write", "--source", "digits", "--out", str(shard_dir), "--prefix", "toy-train"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["write", "--source", "mnist", "--channels", "3", "--out", str(shard_dir)]) == 2
    assert "grey" in capsys.readouterr().err
    assert main(["write", "--source", "folder", "--root", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 2
    assert "image folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as unknown:
        main(["write", "--source", "nowhere", "--out", str(tmp_path)])
    assert unknown.value.code == 2
    assert main(["verify", str(tmp_path / "absent")]) == 2
    assert "manifest" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["write", "--source", "digits", "--limit", "10", "--out", str(blocker / "shards")]) == 3
    assert "could not run" in capsys.readouterr().err
    (shard_dir / "toy-train-000001.tar").write_bytes(b"")
    assert main(["verify", str(shard_dir), "--shallow"]) == 2
    assert "toy-train-000001.tar: checksum mismatch" in capsys.readouterr().err
