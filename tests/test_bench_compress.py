"""bench/bench_compress.py on a saved one-step model: the trained rows of docs/benchmarks.md."""

from __future__ import annotations

import json

import pytest
import torch

from bench.bench_compress import main
from linearizer.config import FlowConfig, ModelConfig, OperatorConfig
from linearizer.io import save_model
from linearizer.onestep import OneStepLinearizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compress_rows_of_a_saved_model_report_rank_and_agreement(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(image_shape=(1, 8, 8), flow=FlowConfig(depth=1, hidden=8),
                      operator=OperatorConfig(rank=2, time_embed_dim=8, hidden=16))
    model = OneStepLinearizer(cfg)
    model.initialize(torch.rand(16, 1, 8, 8), torch.Generator().manual_seed(0))
    save_model(model, cfg, tmp_path / "model")
    out = tmp_path / "compress.json"
    assert main(["--dims", "--tols", "1e-3", "--steps", "10", "--images", "4", "--model", str(tmp_path / "model"),
                 "--json", str(out)]) == 0
    exact, cut = json.loads(out.read_text())["results"]["rows"]
    assert exact["compress_tol"] == "exact (0)" and cut["compress_tol"] == "0.001"
    assert cut["rank k"] <= exact["rank k"] == 3 * 2 * 10  # RK4: 3 r T columns before compression
    # the exact B equals the 10-step sampler to float64 round-off
    assert float(exact["1-step vs 100-step RK4"].split()[0]) > 200
