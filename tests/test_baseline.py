"""The flow-matching baseline: its loss, training through the shared loop, samplers, kind and size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from linearizer.baselines import FlowMatchingBaseline, VelocityUNet, flow_matching_loss, integrate_velocity
from linearizer.baselines.flow_matching import KIND, WIDTH_MULTS
from linearizer.config import ConfigError, FlowConfig, ModelConfig, OperatorConfig, SamplerConfig, TrainConfig
from linearizer.io import load_model, save_model
from linearizer.kinds import get_kind
from linearizer.onestep import OneStepLinearizer
from linearizer.training import TensorBatches, fit


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(shape=(1, 8, 8), **sampler) -> ModelConfig:
    return ModelConfig(kind="fm_baseline", image_shape=shape, flow=FlowConfig(depth=2, hidden=8),
                       operator=OperatorConfig(time_embed_dim=8), sampler=SamplerConfig(**sampler))


def jitter(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Perturb every weight: the fresh U-Net outputs exactly zero (zero-initialised last layer)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- the velocity network -----


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 9), (2, 16, 16)])
def test_unet_keeps_the_image_shape(shape):
    net = jitter(VelocityUNet(shape, hidden=8, levels=3, time_embed_dim=8))
    x = torch.randn(3, *shape)
    v = net(x, torch.rand(3))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_unet_depends_on_time_per_sample():
    net = jitter(VelocityUNet((1, 8, 8), hidden=8, levels=2, time_embed_dim=8))
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    v = net(x, torch.tensor([0.1, 0.9]))
    assert (v[0] - v[1]).abs().max() > 1e-4  # same x, different t: different velocity


def test_unet_rejects_mismatched_inputs():
    net = VelocityUNet((1, 8, 8), hidden=8, levels=2, time_embed_dim=8)
    with pytest.raises(ValueError, match=r"t must be a \[B\] = \[2\]"):
        net(torch.randn(2, 1, 8, 8), torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 8, 8\]"):
        net(torch.randn(2, 2, 8, 8), torch.rand(2))


def test_config_mapping_hidden_and_depth():
    net = FlowMatchingBaseline(ModelConfig(image_shape=(1, 16, 16), flow=FlowConfig(depth=3, hidden=4))).v
    assert net.widths == [4 * m for m in WIDTH_MULTS[:3]]
    assert len(net.downsample) == 2 and len(net.upsample) == 2  # depth levels, depth - 1 resolution changes
    with pytest.raises(ConfigError, match="flow.depth"):
        FlowMatchingBaseline(ModelConfig(flow=FlowConfig(depth=len(WIDTH_MULTS) + 1)))


def test_param_count_within_20_percent_of_the_one_step_default():
    baseline = params(FlowMatchingBaseline(ModelConfig(kind="fm_baseline")))
    onestep = params(OneStepLinearizer(ModelConfig()))  # g_x and g_y share weights: counted once
    assert 0.8 <= baseline / onestep <= 1.2, (baseline, onestep)


# ----- the loss and training -----


class Echo(nn.Module):
    """A stand-in velocity `v(x, t) = t x`, to pin down the path, the target and the data scale."""

    def forward(self, x, t):
        return t[:, None, None, None] * x


def test_loss_is_the_straight_path_regression():
    model = FlowMatchingBaseline(tiny_cfg()).double()
    model.v = Echo()
    x1 = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    loss, terms = flow_matching_loss(model, x1, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the loss draws x0 first, then t
    x0 = torch.randn(x1.shape, generator=gen, dtype=torch.float64)
    t = torch.rand(5, generator=gen, dtype=torch.float64)[:, None, None, None]
    data = 2 * x1 - 1
    xt = (1 - t) * x0 + t * data
    expected = ((t * xt - (data - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert terms["loss"] == pytest.approx(float(expected), rel=1e-12) and terms["fm"] == terms["loss"]


def test_loss_rejects_wrong_shapes():
    model = FlowMatchingBaseline(tiny_cfg())
    with pytest.raises(ValueError, match=r"images \[B, 1, 8, 8\]"):
        flow_matching_loss(model, torch.rand(2, 1, 8, 9))


def test_tiny_training_lowers_the_loss_on_mnist():
    from linearizer.data import load_mnist

    images, _ = load_mnist("train", size=32, limit=200)
    cfg = ModelConfig(kind="fm_baseline", flow=FlowConfig(depth=2, hidden=8), operator=OperatorConfig(time_embed_dim=16))
    kind = get_kind("fm_baseline")
    torch.manual_seed(0)
    model = kind.build(cfg)
    fixed = images[:64]

    def held_loss() -> float:  # the same x0 and t before and after: a noise-free comparison
        with torch.no_grad():
            return float(flow_matching_loss(model, fixed, torch.Generator().manual_seed(7))[0])

    before = held_loss()
    history = fit(kind, model, TensorBatches({"image": images}, batch_size=32),
                  TrainConfig(steps=30, lr=3e-3, log_every=0), progress=False)
    after = held_loss()
    assert len(history) == 30 and all(math.isfinite(r["loss"]) for r in history)
    assert after < 0.8 * before, (before, after)


# ----- sampling -----


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 6)])
def test_sample_shape_and_finite(method, shape):
    model = jitter(FlowMatchingBaseline(tiny_cfg(shape)))
    x = model.sample(torch.randn(3, *shape), method, steps=4)
    assert x.shape == (3, *shape) and torch.isfinite(x).all()


def test_untrained_sampler_maps_noise_to_its_data_scale():
    model = FlowMatchingBaseline(tiny_cfg())  # v = 0 exactly: the sampler returns x0, read on [0, 1]
    x0 = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model.sample(x0, "rk4", steps=3), (x0 + 1) / 2)


def linear_field(M0: torch.Tensor, M1: torch.Tensor):
    """`v(x, t) = (M0 + t M1) x` on flat rows `[B, n]` (row convention: `x @ M(t)^T`)."""
    def v(x, t):
        return x @ M0.T + t[:, None] * (x @ M1.T)
    return v


def test_euler_matches_the_closed_form_on_a_linear_field():
    gen = torch.Generator().manual_seed(0)
    n, T = 5, 7
    M0, M1 = (torch.randn(n, n, generator=gen, dtype=torch.float64) for _ in range(2))
    x0 = torch.randn(3, n, generator=gen, dtype=torch.float64)
    h = 1.0 / T
    prop = torch.eye(n, dtype=torch.float64)
    for k in range(T):  # x_{k+1} = (I + h M(t_k)) x_k with t_k = k / T
        prop = (torch.eye(n, dtype=torch.float64) + h * (M0 + (k / T) * M1)) @ prop
    torch.testing.assert_close(integrate_velocity(linear_field(M0, M1), x0, "euler", T), x0 @ prop.T,
                               rtol=1e-12, atol=1e-12)


def test_rk4_matches_the_closed_form_on_a_linear_field():
    gen = torch.Generator().manual_seed(1)
    n, T = 4, 6
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2, n, generator=gen, dtype=torch.float64)
    hM = M / T
    step = sum(torch.linalg.matrix_power(hM, j) / math.factorial(j) for j in range(5))  # degree-4 Taylor
    expected = x0 @ torch.linalg.matrix_power(step, T).T
    zero = torch.zeros_like(M)
    torch.testing.assert_close(integrate_velocity(linear_field(M, zero), x0, "rk4", T), expected,
                               rtol=1e-12, atol=1e-12)


def test_rk4_is_fourth_order_with_time_dependence():
    # dx/dt = cos(3t) x has x(1) = x0 exp(sin(3) / 3). A stage at a wrong time would drop the
    # order to 1 or 2 (error ratio ~2 or ~4 per halving of h); RK4 divides it by >= 16.
    x0 = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    exact = x0 * math.exp(math.sin(3.0) / 3)

    def v(x, t):
        return torch.cos(3 * t)[:, None] * x

    err = {T: float((integrate_velocity(v, x0, "rk4", T) - exact).abs().max()) for T in (10, 20)}
    assert err[20] < 1e-7 and err[10] / err[20] > 14, err
    err = {T: float((integrate_velocity(v, x0, "euler", T) - exact).abs().max()) for T in (10, 20)}
    assert 1.8 < err[10] / err[20] < 2.2, err  # Euler: first order


@pytest.mark.parametrize("bad, match", [
    (dict(method="midpoint"), "method"),
    (dict(steps=0), "steps"),
    (dict(steps=2.0), "steps"),
    (dict(t_end=0.0), "t_end"),
    (dict(t_end=1.5), "t_end"),
])
def test_integrate_rejects_bad_settings(bad, match):
    kwargs = dict(method="euler", steps=2, t_end=1.0) | bad
    with pytest.raises(ValueError, match=match):
        integrate_velocity(lambda x, t: x, torch.ones(1, 2), **kwargs)


def test_sampler_uses_config_defaults_and_t_end():
    model = jitter(FlowMatchingBaseline(tiny_cfg(method="euler", steps=3, t_end=0.5)))
    x0 = torch.randn(2, 1, 8, 8)
    expected = (integrate_velocity(model.v, x0, "euler", 3, 0.5) + 1) / 2
    torch.testing.assert_close(model.sample(x0), expected, rtol=0, atol=0)


# ----- the model kind -----


def test_kind_is_registered_with_its_contract():
    kind = get_kind("fm_baseline")
    assert kind is KIND and kind.modes == ("sample",) and kind.batch_keys == ("image",)
    model = kind.build(tiny_cfg(steps=2))
    assert isinstance(model, FlowMatchingBaseline)
    kind.finalize(model)  # nothing to build, must not fail
    x = kind.samples(jitter(model), 3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and x.min() >= 0 and x.max() <= 1


def test_predict_samples_and_validates():
    model = jitter(KIND.build(tiny_cfg()))
    x0 = torch.randn(2, 1, 8, 8)
    out = KIND.predict(model, x0, {"mode": "sample", "steps": 2, "method": "rk4"})
    torch.testing.assert_close(out, model.sample(x0, "rk4", 2).clamp(0, 1))
    with pytest.raises(ValueError, match="mode"):
        KIND.predict(model, x0, {"mode": "invert"})
    with pytest.raises(ValueError, match="unknown"):
        KIND.predict(model, x0, {"mode": "sample", "n": 3})
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        KIND.predict(model, torch.randn(2, 8, 8), {"mode": "sample"})
    with pytest.raises(ValueError, match="NaN"):
        KIND.predict(model, torch.full((1, 1, 8, 8), float("nan")), {"mode": "sample"})


def test_save_and_load_through_the_kind(tmp_path):
    cfg = tiny_cfg()
    model = jitter(KIND.build(cfg))
    save_model(model, cfg, tmp_path / "fm")
    loaded, cfg2 = load_model(tmp_path / "fm")
    assert cfg2 == cfg and isinstance(loaded, FlowMatchingBaseline)
    x0 = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sample(x0, "euler", 2), model.sample(x0, "euler", 2), rtol=0, atol=0)
