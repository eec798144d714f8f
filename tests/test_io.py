"""Safe artifacts: safetensors + JSON config, rebuilt through the model kind, bit-exact."""

from __future__ import annotations

import json

import pytest
import torch

from linearizer.config import ModelConfig, from_dict
from linearizer.io import load_model, load_weights, read_model_config, save_model, save_weights
from linearizer.kinds import get_kind


def tiny_cfg() -> ModelConfig:
    return from_dict(ModelConfig, {"kind": "onestep", "image_shape": [1, 8, 8], "flow": {"depth": 1, "hidden": 8},
                                   "operator": {"rank": 2, "hidden": 16, "time_embed_dim": 8}})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_round_trip_keeps_dtype_and_outputs(tmp_path, dtype):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = get_kind("onestep").build(cfg).to(dtype)
    x = torch.rand(4, 1, 8, 8, dtype=dtype)
    model.train()
    get_kind("onestep").loss(model, {"image": x})  # initialises ActNorm from data
    model.eval()
    save_model(model, cfg, tmp_path / "m")
    loaded, cfg2 = load_model(tmp_path / "m")
    assert cfg2 == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    noise = torch.randn(3, 1, 8, 8, dtype=dtype)
    assert torch.equal(loaded.encode_noise(noise), model.encode_noise(noise))


def test_weights_file_is_checked(tmp_path):
    cfg = tiny_cfg()
    model = get_kind("onestep").build(cfg)
    save_weights(model, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    other = get_kind("onestep").build(cfg)
    load_weights(other, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    bigger = get_kind("onestep").build(from_dict(ModelConfig, {"kind": "onestep", "image_shape": [1, 8, 8],
                                                               "flow": {"depth": 2, "hidden": 8},
                                                               "operator": {"rank": 2, "hidden": 16,
                                                                            "time_embed_dim": 8}}))
    with pytest.raises(ValueError, match="does not fit this model: missing keys"):
        load_weights(bigger, tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights(model, tmp_path / "nope.safetensors")


def test_config_file_is_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved linearizer model"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other/9", "model": {}}))
    with pytest.raises(ValueError, match="unsupported format"):
        read_model_config(tmp_path)


def test_no_pickle_in_artifacts(tmp_path):
    cfg = tiny_cfg()
    save_model(get_kind("onestep").build(cfg), cfg, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "m" / "model.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream
