"""Style models: the algebra of style operators, the objective, the data, serving and the CLI.

Tiny shapes throughout (3x8x8 images, one flow block, 8 hidden channels). Exactness claims are
checked in float64 with operators that are not the identity (random kernels), so that a wrong
formula cannot pass by accident.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from linearizer.config import FlowConfig, LossConfig, ModelConfig, OperatorConfig, TrainConfig
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.style import (STYLE_FILTERS, StrengthMap, StyleModel, apply_filter, apply_in_sequence, compose,
                              compose_styles, composition_gap, interpolate, interpolate_styles, load_pair_folder,
                              make_filter_pairs, pair_samples, step_smoothness, strength, with_strength)
from linearizer.style.cli import register
from linearizer.style.data import StylePairs
from linearizer.training import TensorBatches, fit

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared machine

SHAPE = (3, 8, 8)
STYLES = ["a", "b", "c"]


def tiny_cfg(styles=STYLES, **loss) -> ModelConfig:
    return ModelConfig(kind="style", image_shape=SHAPE, flow=FlowConfig(depth=1, hidden=8),
                       operator=OperatorConfig(styles=list(styles), kernel_size=4), loss=LossConfig(**loss))


def smooth_images(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Bicubic upsamplings of random 3x3 colour grids: images with structure, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 3, 3, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=SHAPE[1:], mode="bicubic", align_corners=False)
    return x.clamp(0, 1).to(dtype)


@pytest.fixture(scope="module")
def model64() -> StyleModel:
    """A float64 model whose network is off the identity and whose kernels are random."""
    torch.manual_seed(0)
    model = StyleModel(tiny_cfg())
    model.initialize(smooth_images(16, 1), smooth_images(16, 2) ** 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised coupling outputs become non-trivial
        for A in model.operators.values():
            A.kernel.copy_(0.3 * torch.randn_like(A.kernel) + A.kernel)
    return model.double().eval()


@pytest.fixture
def x64() -> torch.Tensor:
    return smooth_images(5, 3, torch.float64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # the exactness checks need no graphs; training tests enable grads themselves
        yield


# ----- the model -----


def test_model_has_two_roles_of_one_network_and_one_operator_per_style(model64):
    assert model64.g_x.net is model64.g_y.net and not model64.same_maps()
    assert list(model64.operators) == STYLES
    assert all(A.shape == (192, 192) and A.kernel.numel() == 3 * 4 * 4 for A in model64.operators.values())


def test_batched_forward_applies_each_rows_style(model64, x64):
    style = torch.tensor([0, 2, 1, 1, 0])
    y = model64(x64, style)
    for i, s in enumerate(style.tolist()):
        assert rel(y[i:i + 1], model64.linearizer(STYLES[s])(x64[i:i + 1])) < 1e-12


def test_fresh_operators_are_the_identity_on_codes():
    model = StyleModel(tiny_cfg()).double()
    z = torch.randn(4, 192, dtype=torch.float64)
    for A in model.operators.values():
        assert torch.equal(A.apply(z), z)


# ----- algebra -----


@pytest.mark.parametrize("alpha, expected", [(0.0, "a"), (1.0, "b")])
def test_interpolation_endpoints_reproduce_the_styles(model64, x64, alpha, expected):
    y = interpolate_styles(model64, "a", "b", alpha)(x64)
    assert rel(y, model64.linearizer(expected)(x64)) < 1e-12


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.7, -0.3])
def test_interpolation_is_the_straight_line_between_the_styled_codes(model64, x64, alpha):
    # g_y(f_alpha(x)) = (1 - alpha) g_y(f_a(x)) + alpha g_y(f_b(x)): a line in the induced space Y.
    code = model64.encode_styled(interpolate_styles(model64, "a", "c", alpha)(x64))
    line = (1 - alpha) * model64.encode_styled(model64(x64, "a")) + alpha * model64.encode_styled(model64(x64, "c"))
    assert rel(code, line) < 1e-9


def test_strength_zero_is_the_identity_and_one_is_the_style(model64, x64):
    assert isinstance(with_strength(model64, "b", 0.0), StrengthMap)  # two roles: the Y-space line
    assert rel(with_strength(model64, "b", 0.0)(x64), x64) < 1e-10
    assert rel(with_strength(model64, "b", 1.0)(x64), model64(x64, "b")) < 1e-10


def test_strength_with_one_map_is_the_operator_blend(x64):
    torch.manual_seed(1)
    model = StyleModel(tiny_cfg())
    model.g_y = model.g_x  # tie the roles: every style is an endomorphism of one induced space
    model.initialize(smooth_images(16, 1), smooth_images(16, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = model.double().eval()
    A = model.operator("a")
    for alpha in (0.0, 0.4, 1.0):
        f = with_strength(model, "a", alpha)
        assert not isinstance(f, StrengthMap)  # a Linearizer with operator (1 - a) I + a A
        assert rel(f(x64), StrengthMap(model, A, alpha)(x64)) < 1e-10
    assert rel(with_strength(model, "a", 0.0)(x64), x64) < 1e-10
    # with one map, the composed operator IS the sequential application
    gap = composition_gap(model, ["a", "b", "c"], x64)
    assert gap.latent_rel < 1e-10 and gap.roundtrip_rel < 1e-10


def test_operator_algebra_matches_the_matrices(model64):
    A, B, C = (model64.operator(s) for s in STYLES)
    Ma, Mb, Mc = (op.materialize() for op in (A, B, C))
    eye = torch.eye(192, dtype=torch.float64)
    assert rel(interpolate(A, B, 0.3).materialize(), 0.7 * Ma + 0.3 * Mb) < 1e-12
    assert rel(strength(A, 0.3).materialize(), 0.7 * eye + 0.3 * Ma) < 1e-12
    assert rel(compose([A, B, C]).materialize(), Mc @ Mb @ Ma) < 1e-12


def test_composition_is_sequential_application_of_the_operators_in_latent_space(model64, x64):
    z = model64.encode_content(x64)
    A, B = model64.operator("a"), model64.operator("b")
    assert rel(compose([A, B]).apply(z), B.apply(A.apply(z))) < 1e-12
    composed = compose_styles(model64, ["a", "b"])(x64)
    assert rel(composed, model64.decode_styled(B.apply(A.apply(z)))) < 1e-12


def test_composition_gap_with_two_roles_is_measured_not_zero(model64, x64):
    gap = composition_gap(model64, ["a", "b"], x64)
    sequential = apply_in_sequence(model64, ["a", "b"], x64)
    composed = compose_styles(model64, ["a", "b"])(x64)
    assert gap.roundtrip_rel > 1e-6 and gap.latent_rel > 1e-6  # g_x g_y^-1 != I
    assert gap.latent_rel == pytest.approx(rel(model64.encode_styled(composed), model64.encode_styled(sequential)),
                                           rel=1e-6)
    from linearizer.metrics.image import psnr

    assert gap.psnr_db == pytest.approx(float(psnr(composed.clamp(0, 1), sequential.clamp(0, 1))), rel=1e-9)


def test_step_smoothness_of_a_uniform_path_is_one_over_k():
    ends = torch.rand(2, 1, 3, 4, 4, dtype=torch.float64)
    path = torch.stack([(1 - t) * ends[0] + t * ends[1] for t in torch.linspace(0, 1, 5, dtype=torch.float64)])
    assert step_smoothness(path) == pytest.approx(0.25, abs=1e-12)
    jump = torch.stack([ends[0], ends[0], ends[1]])
    assert step_smoothness(jump) == pytest.approx(1.0, abs=1e-12)
    mixed = torch.cat([path[::2], torch.stack([ends[0, :1], ends[0, :1], ends[1, :1]])], dim=1)  # 2 even, 1 jump
    assert step_smoothness(mixed) == pytest.approx(1.0, abs=1e-12)
    assert step_smoothness(mixed, "median") == pytest.approx(0.5, abs=1e-12)


# ----- errors -----


def test_unknown_style_names_list_the_known_ones(model64, x64):
    with pytest.raises(ValueError, match=r"unknown style 'nope'.*a, b, c"):
        model64.linearizer("nope")
    with pytest.raises(ValueError, match=r"unknown style 'zzz'"):
        interpolate_styles(model64, "a", "zzz", 0.5)
    with pytest.raises(ValueError, match=r"unknown style 'q'"):
        get_kind("style").predict(model64, x64, {"mode": "compose", "styles": ["a", "q"]})


@pytest.mark.parametrize("inputs, message", [
    (torch.rand(2, 3, 16, 16), r"shape \[B, 3, 8, 8\].*got \[2, 3, 16, 16\]"),
    (torch.rand(3, 8, 8), r"one image"),
    (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), r"floating point.*uint8"),
    (torch.full((1, 3, 8, 8), float("nan")), r"NaN"),
    (torch.rand(1, 3, 8, 8) * 2, r"\[0, 1\]"),
])
def test_predict_rejects_bad_inputs_clearly(model64, inputs, message):
    with pytest.raises(ValueError, match=message):
        get_kind("style").predict(model64, inputs, {"mode": "style", "style": "a"})


@pytest.mark.parametrize("params, message", [
    ({"mode": "warp"}, r"unknown predict mode 'warp'"),
    ({"mode": "style"}, r"needs parameters \['style'\]"),
    ({"mode": "style", "style": "a", "strenght": 1}, r"unknown \['strenght'\]"),
    ({"mode": "interpolate", "style_a": "a", "style_b": "b", "alpha": float("inf")}, r"alpha must be a finite"),
    ({"mode": "compose", "styles": "ab"}, r"non-empty list"),
    ({"mode": "compose", "styles": ["a"], "how": "fast"}, r"'how' must be one of"),
])
def test_predict_rejects_bad_params_clearly(model64, x64, params, message):
    with pytest.raises(ValueError, match=message):
        get_kind("style").predict(model64, x64, params)


def test_config_without_styles_or_with_bad_names_is_refused():
    from linearizer.config import ConfigError

    with pytest.raises(ConfigError, match="at least one style"):
        StyleModel(tiny_cfg(styles=[]))
    with pytest.raises(ConfigError, match=r"\[A-Za-z0-9_-\]"):
        StyleModel(tiny_cfg(styles=["oil.paint"]))


# ----- serving -----


def test_predict_modes_agree_with_the_algebra(model64, x64):
    kind = get_kind("style")
    assert set(kind.modes) == {"style", "interpolate", "compose"}
    assert kind.batch_keys == ("image", "target", "style")
    x32 = x64.float()  # served in the model's dtype whatever comes in
    assert rel(kind.predict(model64, x64, {"mode": "style", "style": "c"}), model64(x64, "c").clamp(0, 1)) < 1e-12
    assert rel(kind.predict(model64, x32, {"mode": "style", "style": "c", "strength": 0.0}), x64) < 1e-6
    y = kind.predict(model64, x64, {"mode": "interpolate", "style_a": "a", "style_b": "b", "alpha": 1.0})
    assert rel(y, model64(x64, "b").clamp(0, 1)) < 1e-12
    seq = kind.predict(model64, x64, {"mode": "compose", "styles": ["a", "b"], "how": "sequential"})
    assert rel(seq, apply_in_sequence(model64, ["a", "b"], x64).clamp(0, 1)) < 1e-12


def test_save_and_load_round_trip(model64, x64, tmp_path):
    save_model(model64, model64.cfg, tmp_path / "m")
    loaded, cfg = load_model(tmp_path / "m", dtype=torch.float64)
    assert cfg.kind == "style" and cfg.operator.styles == STYLES
    assert rel(loaded(x64, "b"), model64(x64, "b")) < 1e-12


# ----- training -----


def test_a_short_training_run_lowers_the_loss():
    content = smooth_images(32, 4)
    styled = torch.stack([apply_filter("grade", content), apply_filter("posterize", content)], 1).flatten(0, 1)
    pairs = StylePairs(content.repeat_interleave(2, 0), styled, torch.arange(2).repeat(32), ("grade", "posterize"),
                       [str(i) for i in range(64)])
    torch.manual_seed(0)
    kind = get_kind("style")
    model = kind.build(tiny_cfg(styles=pairs.styles))
    with torch.enable_grad():
        history = fit(kind, model, TensorBatches(pairs.tensors(), 16), TrainConfig(steps=30, lr=1e-2), progress=False)
    mean = lambda key, rows: np.mean([h[key] for h in rows])  # noqa: E731
    assert mean("loss", history[-5:]) < 0.9 * mean("loss", history[:5])
    assert mean("pred", history[-5:]) < mean("pred", history[:5])
    assert {"pred", "latent", "content_rec", "styled_rec", "identity"} <= set(history[-1])


def test_zero_weight_terms_are_skipped():
    model = StyleModel(tiny_cfg(weights={"latent": 0.0, "content_rec": 0.0, "styled_rec": 0.0, "identity": 0.0}))
    x = smooth_images(4, 5)
    batch = {"image": x, "target": x.flip(1), "style": torch.tensor([0, 1, 2, 0])}
    loss, terms = get_kind("style").loss(model, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"pred"} and loss.item() == pytest.approx(terms["pred"], rel=1e-6)


# ----- data -----


def test_filters_are_deterministic_and_keep_shape():
    x = smooth_images(2, 6)
    for name in STYLE_FILTERS:
        y = apply_filter(name, x)
        assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
        assert torch.equal(y, apply_filter(name, x))
    with pytest.raises(ValueError, match="unknown style filter 'oil'"):
        apply_filter("oil", x)


def test_filter_pairs_are_reproducible_and_split_by_photo():
    a = make_filter_pairs(["grade", "posterize"], "train", size=8, n=4, seed=1)
    b = make_filter_pairs(["grade", "posterize"], "train", size=8, n=4, seed=1)
    test = make_filter_pairs(["grade", "posterize"], "test", size=8, n=4, seed=1)
    assert torch.equal(a.content, b.content) and torch.equal(a.styled, b.styled)
    assert a.content.shape == (8, 3, 8, 8) and a.style.tolist() == [0, 1] * 4
    assert torch.equal(a.content[0], a.content[1])  # patch-major: one content, every style
    assert torch.equal(a.styled[1], apply_filter("posterize", a.content[1:2])[0])
    assert not torch.equal(a.content, test.content)


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_pair_folder_loader_reads_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for style in ("ink", "oil"):
        for name in ("p1", "p2"):
            c, s = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
            _write_png(tmp_path / style / "content" / f"{name}.png", c)
            _write_png(tmp_path / style / "styled" / f"{name}.png", s)
            arrays[style, name] = (c, s)
    pairs = load_pair_folder(tmp_path)
    assert pairs.styles == ("ink", "oil") and pairs.names == ["p1", "p2", "p1", "p2"]
    assert pairs.style.tolist() == [0, 0, 1, 1] and pairs.image_shape == (3, 8, 8)
    c, s = arrays["oil", "p2"]
    assert np.array_equal((pairs.content[3] * 255).round().byte().permute(1, 2, 0).numpy(), c)
    assert np.array_equal((pairs.styled[3] * 255).round().byte().permute(1, 2, 0).numpy(), s)


def test_pair_folder_loader_names_unmatched_and_missized_files(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    _write_png(tmp_path / "ink" / "content" / "p1.png", img)
    _write_png(tmp_path / "ink" / "styled" / "p1.png", img)
    _write_png(tmp_path / "ink" / "content" / "lonely.png", img)
    with pytest.raises(ValueError, match=r"unmatched names: content without styled \['lonely'\]"):
        load_pair_folder(tmp_path)
    (tmp_path / "ink" / "content" / "lonely.png").unlink()
    _write_png(tmp_path / "ink" / "content" / "p2.png", img)
    _write_png(tmp_path / "ink" / "styled" / "p2.png", np.zeros((10, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"styled/p2\.png has size \(3, 10, 8\)"):
        load_pair_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pair_folder(tmp_path / "missing")


def test_pair_samples_write_shards_that_read_back_as_batches(tmp_path):
    shards = pytest.importorskip("pipelines.shards.writer")
    content = smooth_images(3, 7)
    styled = apply_filter("grade", content)
    pairs = StylePairs(content, styled, torch.tensor([0, 1, 0]), ("grade", "pop"), ["x.1", "x 2", "x3"])
    samples = list(pair_samples(pairs))
    assert {"__key__", "image", "target", "style"} == set(samples[0])
    manifest = shards.write_shards(samples, tmp_path, "style-train")
    shards.verify_shards(tmp_path, "style-train")
    assert manifest.count == 3 and sorted(manifest.schema["keys"]) == ["png", "style.cls", "target.png"]
    from pipelines.shards.reader import iter_batches

    batch = next(iter_batches(tmp_path, "style-train", batch_size=3))
    assert set(get_kind("style").batch_keys) <= set(batch)
    order = [next(i for i in range(3) if torch.allclose(batch["image"][j], content[i], atol=1 / 255)) for j in range(3)]
    assert torch.allclose(batch["target"], styled[order], atol=0.51 / 255)
    assert batch["style"].tolist() == pairs.style[order].tolist()


# ----- CLI -----


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="linearizer")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_renders_strips_and_refuses_wrong_sizes(model64, tmp_path):
    save_model(model64.float(), model64.cfg, tmp_path / "m")
    model64.double()
    image = tmp_path / "in.png"
    Image.fromarray((smooth_images(1, 8)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(image)
    for argv, panels in (
        (["apply", "--style", "a", "--strengths", "0,0.5,1"], 4),
        (["interpolate", "--styles", "a", "b", "--steps", "4"], 6),
        (["compose", "--styles", "a", "b", "c"], 5),
    ):
        out = tmp_path / f"{argv[0]}.png"
        assert _cli(["style", argv[0], "--model", str(tmp_path / "m"), "--input", str(image), "--out", str(out)]
                    + argv[1:]) == 0
        assert Image.open(out).size == (8 * panels + 2 * (panels + 1), 8 + 4)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(big)
    with pytest.raises(ValueError, match=r"big\.png is 10x12, but the model maps 8x8"):
        _cli(["style", "apply", "--model", str(tmp_path / "m"), "--input", str(big), "--out", str(tmp_path / "x.png"),
              "--style", "a"])


def test_cli_trains_from_a_pair_folder(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("p1", "p2", "p3", "p4"):
        c = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        _write_png(tmp_path / "pairs" / "inv" / "content" / f"{name}.png", c)
        _write_png(tmp_path / "pairs" / "inv" / "styled" / f"{name}.png", 255 - c)
    with torch.enable_grad():
        code = _cli(["style", "train", "--out", str(tmp_path / "m"), "--pairs", str(tmp_path / "pairs"), "--steps", "2",
                     "--batch-size", "2", "--set", "flow.depth=1", "--set", "flow.hidden=4"])
    assert code == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert cfg["kind"] == "style" and cfg["operator"]["styles"] == ["inv"] and cfg["image_shape"] == [3, 8, 8]
    model, _ = load_model(tmp_path / "m")
    assert model.styles == ("inv",)


# ----- evaluation -----


def test_evaluation_metrics_are_the_direct_computation():
    from linearizer.metrics.image import psnr, ssim
    from linearizer.style.evaluation import evaluate

    shape = (3, 16, 16)  # SSIM's window is 11 pixels
    torch.manual_seed(0)
    model64 = StyleModel(ModelConfig(kind="style", image_shape=shape, flow=FlowConfig(depth=1, hidden=8),
                                     operator=OperatorConfig(styles=STYLES, kernel_size=4))).double().eval()
    coarse = torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    content = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bicubic", align_corners=False).clamp(0, 1)
    model64.initialize(content, content.sqrt())
    with torch.no_grad():
        for p in model64.parameters():
            p.add_(0.05 * torch.randn_like(p))  # off the identity, so that every term is non-trivial
    content = content.repeat(len(STYLES), 1, 1, 1)
    style = torch.arange(len(STYLES)).repeat_interleave(4)
    pairs = StylePairs(content, content.sqrt(), style, tuple(STYLES), [f"p{i}" for i in range(len(style))])
    result = evaluate(model64, pairs, examples=2, strip_steps=4)

    m, same = result.metrics, lambda value: pytest.approx(value, rel=1e-9)
    for s in STYLES:
        x, target = pairs.of_style(s)
        y = model64.linearizer(s)(x).clamp(0, 1)
        assert m[f"psnr.{s}"] == same(float(psnr(y, target)))
        assert m[f"ssim.{s}"] == same(float(ssim(y, target).mean()))
        assert m[f"content_psnr.{s}"] == same(float(psnr(x, target)))
        assert m[f"gain_db.{s}"] == same(m[f"psnr.{s}"] - m[f"content_psnr.{s}"])
    assert m["psnr"] == same(sum(m[f"psnr.{s}"] for s in STYLES) / len(STYLES))
    assert m["gain_db"] == min(m[f"gain_db.{s}"] for s in STYLES)
    shown = pairs.of_style(STYLES[0])[0][:2]
    alphas = torch.linspace(0, 1, 4).tolist()  # the served alphas (float32 values, as a request would send)
    strips = [torch.stack([interpolate_styles(model64, a, b, t)(shown).clamp(0, 1) for t in alphas])
              for a, b in zip(STYLES, STYLES[1:])]
    assert m["interpolation_step"] == same(max(step_smoothness(strip) for strip in strips))
    composed = compose_styles(model64, STYLES[:2])(shown).clamp(0, 1)
    sequential = apply_in_sequence(model64, STYLES[:2], shown).clamp(0, 1)
    assert m["composition_psnr"] == same(float(psnr(composed, sequential, cap_db=200.0)))
    assert sorted(result.images) == ["composition", "interpolation", "styles"]
    with pytest.raises(ValueError, match="strip_steps"):
        evaluate(model64, pairs, strip_steps=1)
