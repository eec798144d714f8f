"""The typed config tree: strict loading, clear errors, overrides, dump/load round trip."""

from __future__ import annotations

import json

import pytest

from linearizer.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    to_dict,
)


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = ModelConfig()
    path = dump_config(cfg, tmp_path / "model.json")
    assert load_config(ModelConfig, path) == cfg
    assert isinstance(from_dict(ModelConfig, to_dict(cfg)).image_shape, tuple)


def test_nested_values_are_typed():
    cfg = from_dict(ModelConfig, {"kind": "projective", "image_shape": [3, 16, 16], "flow": {"depth": 2},
                                  "operator": {"rank": 16, "styles": ["a", "b"]}, "sampler": {"t_end": 0.9}})
    assert cfg.image_shape == (3, 16, 16) and cfg.flow.depth == 2 and cfg.operator.styles == ["a", "b"]
    assert cfg.sampler.resolved_t_end() == 0.9
    assert ModelConfig().sampler.resolved_t_end() == pytest.approx(1 - 1 / 100)


@pytest.mark.parametrize("data, message", [
    ({"flow": {"detph": 2}}, r"unknown config key 'flow.detph' \(did you mean 'depth'\?\)"),
    ({"flow": {"depth": "4"}}, r"flow.depth must be an integer, got str"),
    ({"flow": {"depth": 2.5}}, r"flow.depth must be an integer"),
    ({"flow": {"shared": 1}}, r"flow.shared must be true or false"),
    ({"flow": {"depth": 0}}, r"flow.depth must be >= 1"),
    ({"flow": {"conditioner": "resnet"}}, r"flow.conditioner must be one of \['unet', 'mlp'\]"),
    ({"image_shape": [1, 32]}, r"image_shape must have 3 entries"),
    ({"operator": {"rank": 0}}, r"operator.rank must be >= 1"),
    ({"operator": {"styles": ["a", "a"]}}, r"duplicates"),
    ({"sampler": {"t_end": 1.0}}, r"t_end must lie in \(0, 1\)"),
    ({"loss": {"s": float("nan")}}, r"loss.s must be finite"),
    ({"flow": 3}, r"flow must be a mapping"),
    ({"loss": {"weights": {"data": "x"}}}, r"loss.weights.data must be a number, got str"),
    ({"loss": {"weights": {"data": float("inf")}}}, r"loss.weights.data must be finite"),
    ({"loss": {"weights": {"pixel": 1.0}}}, r"'pixel' is not a loss weight of kind 'onestep'; .* latent, noise"),
    ({"loss": {"weights": ["data"]}}, r"loss.weights must be a mapping"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data)


def test_overrides():
    cfg = apply_overrides(TrainConfig(), ["steps=5", "lr=0.01"])
    assert cfg.steps == 5 and cfg.lr == 0.01
    with pytest.raises(ConfigError, match="unknown config key 'step'.*did you mean 'steps'"):
        apply_overrides(TrainConfig(), ["step=5"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(TrainConfig(), ["steps"])
    with pytest.raises(ConfigError, match="steps must be an integer"):
        apply_overrides(TrainConfig(), ["steps=many"])
    nested = apply_overrides(ModelConfig(), ["flow.depth=3", 'operator.styles=["x"]'])
    assert nested.flow.depth == 3 and nested.operator.styles == ["x"]
    weighted = apply_overrides(ModelConfig(kind="projective"), ["loss.weights.prior_noise=0"])
    assert weighted.loss.weights == {"pixel": 10.0, "latent": 1.0, "prior_data": 1.0, "prior_noise": 0.0}
    with pytest.raises(ConfigError, match="unknown config key 'loss.w_data'.*did you mean 'loss.weights.<term>'"):
        apply_overrides(ModelConfig(), ["loss.w_data=2"])


def test_files(tmp_path):
    (tmp_path / "c.yaml").write_text("flow:\n  depth: 3\nsampler:\n  method: euler\n")
    assert load_config(ModelConfig, tmp_path / "c.yaml").sampler.method == "euler"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config(ModelConfig, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ModelConfig, tmp_path / "missing.json")
    dump_config(ModelConfig(), tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["flow"]["depth"] == 4


@pytest.mark.parametrize("kind", ["onestep", "projective", "style", "fm_baseline"])
@pytest.mark.parametrize("shape", [(1, 32), (1, 32, 32, 1), (0, 32, 32), (1, 32.0, 32)])
def test_every_model_refuses_a_shape_that_is_not_chw(kind, shape):
    """Models can be built from configs that never went through validation (a dict, a test):
    every kind checks the shape through the same `ModelConfig.chw`."""
    import linearizer.baselines  # noqa: F401 - registers fm_baseline
    from linearizer.kinds import get_kind

    with pytest.raises(ConfigError, match=r"image_shape must be \(C, H, W\)"):
        get_kind(kind).build(ModelConfig(kind=kind, image_shape=shape))
