"""Fixtures of the reliability suite: its figures, a constant shard set, the reference run.

Figures: tests count what they inject and what survives (`figures.count("worker_faults_injected")`);
with `RELIABILITY_FIGURES=path.json` set, the totals of the session are written there, which is
how docs/reliability.md gets its numbers:

    RELIABILITY_FIGURES=/tmp/figures.json .venv/bin/pytest -q tests/reliability

The reference run (`reference.py`): the fault tests compare their final weights with it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.reliability.reference import CONSTANT_PREFIX, reference_job


class Figures:
    """Session-wide counters, written to $RELIABILITY_FIGURES at the end of the session."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.notes: dict[str, Any] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value


@pytest.fixture(scope="session")
def figures():
    recorder = Figures()
    yield recorder
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        Path(path).write_text(json.dumps({"counts": dict(sorted(recorder.counts.items())), "notes": recorder.notes},
                                         indent=2, sort_keys=True, default=str) + "\n")


@pytest.fixture(scope="session")
def constant_shards(tmp_path_factory) -> Path:
    """128 copies of one random 8x8 image, in 4 shards."""
    from pipelines.shards import write_shards

    directory = tmp_path_factory.mktemp("constant-shards")
    image = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    write_shards(({"image": image, "label": 0} for _ in range(128)), directory, CONSTANT_PREFIX, maxcount=32)
    return directory


@pytest.fixture(scope="session")
def uninterrupted(ray_local, mlflow_store, constant_shards, tmp_path_factory):
    """The reference job run once, start to end, with no fault (shared by every comparison)."""
    from pipelines.train import train

    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = reference_job(tmp, "reference", constant_shards, mlflow_store)
    return cfg, train(cfg)
