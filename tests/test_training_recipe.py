"""The fast training recipe: the two-pass objective, bfloat16 conditioners, the lr schedule, EMA.

Checks that each change keeps what it must: the fused objective computes the same loss as five
separate passes of `g`; bfloat16 conditioners keep the flow exactly invertible and the one-step
collapse exact; the schedule and the average follow their formulas; the new config knobs are
validated.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from linearizer.config import ConfigError, FlowConfig, ModelConfig, OperatorConfig, TrainConfig, from_dict
from linearizer.flows import AffineCoupling, UNetConditioner, build_flow
from linearizer.metrics import agreement_db
from linearizer.onestep import OneStepLinearizer
from linearizer.onestep.model import noise_like
from linearizer.onestep.objective import onestep_loss
from linearizer.training import TensorBatches, WeightEMA, fit, lr_factor

from tests.tiny_onestep import make_nonlinear

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ModelConfig(image_shape=(1, 8, 8), flow=FlowConfig(depth=2, hidden=8), operator=OperatorConfig(rank=3),
                    sampler=replace(ModelConfig().sampler, steps=10))


def five_pass_loss(model: OneStepLinearizer, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The objective with one pass of `g` per encoding and decoding, drawing noise in the same order."""
    s = model.cfg.loss.s
    x0 = noise_like(x1, generator)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype)
    z0, z1 = model.encode_noise(x0), model.encode_data(x1)
    z0f, z1f = model.flat(z0), model.flat(z1)
    z1_hat = model.A.apply((1 - t)[:, None] * z0f + t[:, None] * z1f, t)
    return (F.mse_loss(z1_hat, z1f)
            + F.mse_loss(model.decode_noise(z0 + s * noise_like(z0, generator)), x0)
            + F.mse_loss(model.decode_data(z1 + s * noise_like(z1, generator)), x1)
            + F.mse_loss(model.decode_data(model.unflat(z1_hat)), x1))


def trained_like(cfg: ModelConfig, dtype: torch.dtype, seed: int = 0) -> tuple[OneStepLinearizer, torch.Tensor]:
    torch.manual_seed(seed)
    model = OneStepLinearizer(cfg).to(dtype)
    x1 = torch.rand(6, *cfg.image_shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    model.initialize(x1, torch.Generator().manual_seed(seed + 1))
    make_nonlinear(model, seed + 2)
    return model, x1


# ----- the two-pass objective ------------------------------------------------------------------


def test_fused_objective_equals_five_passes_float64():
    model, x1 = trained_like(SMALL, torch.float64)
    fused, _ = onestep_loss(model, x1, torch.Generator().manual_seed(5))
    separate = five_pass_loss(model, x1, torch.Generator().manual_seed(5))
    assert abs(float(fused.detach()) - float(separate.detach())) <= 1e-12 * abs(float(separate.detach()))
    g_fused = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)
    g_sep = torch.autograd.grad(separate, list(model.parameters()), allow_unused=True)
    for a, b in zip(g_fused, g_sep):
        if a is not None or b is not None:
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_objective_with_separate_networks_still_runs_five_passes():
    cfg = replace(SMALL, flow=replace(SMALL.flow, shared=False))
    model, x1 = trained_like(cfg, torch.float64)
    fused, _ = onestep_loss(model, x1, torch.Generator().manual_seed(5))
    separate = five_pass_loss(model, x1, torch.Generator().manual_seed(5))
    assert abs(float(fused.detach()) - float(separate.detach())) <= 1e-12 * abs(float(separate.detach()))


# ----- bfloat16 conditioners --------------------------------------------------------------------


def _jittered(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_bfloat16_conditioner_output_is_float32_and_close_to_float32():
    net32 = UNetConditioner(2, 4, hidden=8, num_roles=2)
    _jittered(net32, 0)
    net16 = UNetConditioner(2, 4, hidden=8, num_roles=2, precision="bfloat16")
    net16.load_state_dict(net32.state_dict())
    x = torch.randn(3, 2, 7, 9)
    with torch.no_grad():
        out16, out32 = net16(x, role=1), net32(x, role=1)
    assert out16.dtype == torch.float32 and out16.shape == out32.shape
    assert out16.is_contiguous()
    rel = float((out16 - out32).norm() / out32.norm())
    assert 0 < rel < 3e-2  # bfloat16 (8 mantissa bits): a different function, close to the float32 one


def test_bfloat16_conditioner_leaves_float64_inputs_alone():
    net32 = UNetConditioner(2, 4, hidden=8, num_roles=2).double()
    _jittered(net32, 1)
    net16 = UNetConditioner(2, 4, hidden=8, num_roles=2, precision="bfloat16").double()
    net16.load_state_dict(net32.state_dict())
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert torch.equal(net16(x, role=0), net32(x, role=0))


@pytest.mark.parametrize("swap", [False, True])
def test_bfloat16_coupling_inverts_to_float32_round_off(swap):
    block = AffineCoupling(4, 8, "unet", swap=swap, num_roles=2, precision="bfloat16")
    _jittered(block, 2)
    x = torch.randn(5, 4, 8, 8)
    role = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        y, _ = block(x, role)
        back = block.inverse(y, role)
    assert float((y - x).abs().max()) > 1e-2  # the block does something
    assert float((back - x).norm() / x.norm()) < 1e-6


def test_bfloat16_flow_inverts_and_collapse_stays_exact():
    cfg = replace(SMALL, flow=replace(SMALL.flow, conditioner_precision="bfloat16"))
    model, x1 = trained_like(cfg, torch.float32)
    model.eval()
    flow = model.g_x.net
    with torch.no_grad():
        back = model.decode_data(model.encode_data(x1))
    assert float((back - x1).norm() / x1.norm()) < 1e-5
    model.build_B()
    x0 = torch.randn(16, *cfg.image_shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        one, multi = model.sample(x0), model.sample_multistep(x0)
    assert agreement_db(one, multi) >= 60.0
    assert any(getattr(m, "precision", None) == "bfloat16" for m in flow.modules())


def test_build_flow_passes_the_precision_to_every_unet_conditioner():
    flow = build_flow((1, 8, 8), FlowConfig(depth=2, hidden=4, conditioner_precision="bfloat16"))
    nets = [m for m in flow.modules() if isinstance(m, UNetConditioner)]
    assert len(nets) == 4 and all(n.precision == "bfloat16" for n in nets)


def test_bad_precision_raises():
    with pytest.raises(ValueError, match="precision"):
        UNetConditioner(2, 4, hidden=4, precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        AffineCoupling(4, 8, "unet", precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="conditioner_precision"):
        from_dict(ModelConfig, {"flow": {"conditioner_precision": "float16"}})


# ----- learning-rate schedule -------------------------------------------------------------------


def test_lr_factor_constant_and_warmup():
    cfg = TrainConfig(steps=100, warmup_steps=4)
    assert [lr_factor(s, cfg) for s in (1, 2, 3, 4, 5, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(1, TrainConfig(steps=10)) == 1.0


def test_lr_factor_cosine():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(10, cfg) == 1.0
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-12)   # halfway
    assert lr_factor(110, cfg) == pytest.approx(0.1, abs=1e-12)
    assert lr_factor(500, cfg) == pytest.approx(0.1, abs=1e-12)              # past the end: stays at the floor
    values = [lr_factor(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_factor_rejects_step_zero():
    with pytest.raises(ValueError, match="1-based"):
        lr_factor(0, TrainConfig())


@pytest.mark.parametrize("override, key", [({"ema_decay": 1.0}, "ema_decay"), ({"ema_decay": -0.1}, "ema_decay"),
                                           ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
                                           ({"warmup_steps": -1}, "warmup_steps"),
                                           ({"lr_schedule": "linear"}, "lr_schedule")])
def test_train_config_rejects_bad_recipe_values(override, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(TrainConfig, override, "train")


# ----- EMA ------------------------------------------------------------------------------------


def test_weight_ema_follows_its_formula():
    net = torch.nn.Linear(2, 1)
    net.register_buffer("flag", torch.zeros((), dtype=torch.bool))
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightEMA(net, decay=0.5)
    expected = torch.zeros(1, 2)
    for value in (1.0, 2.0, 3.0):
        decay = ema.current_decay()
        assert decay == min(0.5, (1 + ema.updates) / (10 + ema.updates))
        with torch.no_grad():
            net.weight.fill_(value)
        net.flag.fill_(value > 2)
        ema.update(net)
        expected = decay * expected + (1 - decay) * value
    assert torch.allclose(ema.state_dict()["weight"], expected, atol=1e-7)
    assert bool(ema.state_dict()["flag"])  # non-floating buffers are copied
    ema.copy_to(net)
    assert torch.allclose(net.weight, expected, atol=1e-7)


def test_weight_ema_rejects_bad_decay_and_other_models():
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(torch.nn.Linear(2, 1), decay=1.0)
    ema = WeightEMA(torch.nn.Linear(2, 1), decay=0.9)
    with pytest.raises(ValueError, match="other keys"):
        ema.update(torch.nn.Conv2d(1, 1, 1, bias=False))


def test_fit_records_the_scheduled_lr_and_ends_with_the_average():
    cfg = replace(SMALL, flow=replace(SMALL.flow, depth=1, hidden=4))
    torch.manual_seed(0)
    images = torch.rand(32, *cfg.image_shape, generator=torch.Generator().manual_seed(0))
    train = TrainConfig(steps=6, batch_size=8, lr=1e-2, lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.0,
                        ema_decay=0.9, log_every=0)
    model = OneStepLinearizer(cfg)
    key = "A.mlp.0.weight"
    raw: list[torch.Tensor] = []  # the optimiser's weights after each step
    history = fit("onestep", model, TensorBatches({"image": images}, 8), train,
                  on_step=lambda record: raw.append(model.state_dict()[key].clone()), progress=False)
    assert [r["lr"] for r in history] == pytest.approx([1e-2 * lr_factor(s, train) for s in range(1, 7)])
    # the average starts at the weights after step 1, then folds in each step with the warmed-up decay
    expected = raw[0].clone()
    for n, w in enumerate(raw):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * w
    final = model.state_dict()[key]
    assert torch.allclose(final, expected, rtol=1e-5, atol=1e-7)
    assert float((final - raw[-1]).abs().max()) > 1e-6  # and it is not the last step's weights


# ----- the pipeline's export of the average -------------------------------------------------------


def test_export_prefers_the_checkpoints_average(tmp_path):
    from safetensors.torch import save_file

    from linearizer.io import load_model
    from linearizer.kinds import get_kind
    from pipelines.train import export_model
    from pipelines.train.worker import EMA_FILE

    model, _ = trained_like(SMALL, torch.float32)
    average = model.state_dict()
    save_file({k: v.clone().contiguous() for k, v in average.items()}, str(tmp_path / EMA_FILE))
    # no DeepSpeed files at all: the export must not need them when the average is there
    exported, directory = export_model(tmp_path, SMALL, get_kind("onestep"), zero_stage=1, out_dir=tmp_path / "model")
    loaded, _ = load_model(directory)
    for key, value in average.items():
        if key.startswith("B_"):
            continue  # B is rebuilt by finalize
        assert torch.equal(loaded.state_dict()[key], value), key
    assert exported.has_B
