"""The invertible blocks and flows: one contract suite over every block kind, then per-block facts.

Contract (each block kind x float32/float64 x role where the block conditions on it): exact
inverse, log-determinant equal to log|det J|, gradients reaching every parameter, bit-exact
save/load through safetensors, informative repr. Parameters are moved away from their
identity-like initialisation first, so none of these holds trivially.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from torch import Tensor

from linearizer.config import ConfigError, FlowConfig
from linearizer.flows import (
    ActNorm,
    AffineCoupling,
    InvConv1x1,
    InvertibleModule,
    Flow,
    MLPConditioner,
    Split,
    Squeeze,
    UNetConditioner,
    Unsqueeze,
    build_flow,
    build_maps,
)
from linearizer.io import load_weights, save_weights

CFG = FlowConfig(depth=2, hidden=8)
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]


@dataclass
class Case:
    """A block kind: how to build it, the per-sample shape it maps, the roles it conditions on."""

    name: str
    make: Callable[[], InvertibleModule]
    shape: tuple[int, ...]
    roles: tuple[int | None, ...] = (None,)
    repr_keys: tuple[str, ...] = field(default_factory=tuple)


CASES = [
    Case("actnorm_image", lambda: ActNorm(2, num_roles=2), (2, 4, 4), (0, 1), ("num_features=2", "num_roles=2")),
    Case("actnorm_vector", lambda: ActNorm(5, num_roles=2), (5,), (0, 1), ("num_features=5", "num_roles=2")),
    Case("invconv_image", lambda: InvConv1x1(3), (3, 4, 4), (None,), ("num_channels=3", "LU")),
    Case("invconv_vector", lambda: InvConv1x1(5), (5,), (None,), ("num_channels=5", "LU")),
    Case("squeeze", Squeeze, (2, 4, 4), (None,), ("factor=2",)),
    Case("unsqueeze", Unsqueeze, (8, 2, 2), (None,), ("factor=2",)),
    Case("coupling_unet", lambda: AffineCoupling(3, 8, "unet", num_roles=2), (3, 4, 4), (0, 1),
         ("num_channels=3", "split=1|2", "conditioner=unet", "hidden=8", "clamp=2.0", "num_roles=2")),
    Case("coupling_unet_swap_odd_hw", lambda: AffineCoupling(2, 8, "unet", swap=True, clamp=3.0, num_roles=2),
         (2, 3, 5), (0, 1), ("transforms x_a given x_b", "clamp=3.0")),
    Case("coupling_mlp", lambda: AffineCoupling(5, 8, "mlp", num_roles=2), (5,), (0, 1),
         ("num_channels=5", "conditioner=mlp", "hidden=8")),
    Case("flow_image", lambda: build_flow((2, 4, 4), CFG), (2, 4, 4), (0, 1), ("shape=(2, 4, 4)", "num_blocks=8")),
    Case("flow_vector", lambda: build_flow((6,), CFG), (6,), (0, 1), ("shape=(6,)", "conditioner=mlp")),
    Case("flow_odd_channels", lambda: build_flow((1, 4, 4), CFG), (1, 4, 4), (0, 1),
         ("shape=(1, 4, 4)", "num_blocks=10", "Squeeze", "Unsqueeze", "num_channels=4")),
    Case("split", lambda: Split(Flow([Squeeze(), ActNorm(8, num_roles=2), InvConv1x1(8), Unsqueeze()]), 2),
         (3, 4, 4), (0, 1), ("channels=2 transformed",)),
    Case("flow_multiscale", lambda: build_flow((1, 8, 8), FlowConfig(depth=1, hidden=8, scales=3)), (1, 8, 8), (0, 1),
         ("Split", "channels=2 transformed", "channels=4 transformed", "num_channels=16")),
    Case("flow_single_role", lambda: build_flow((2, 4, 4), CFG, num_roles=1), (2, 4, 4), (None,), ("num_roles=1",)),
]
CASE_IDS = [c.name for c in CASES]
BY_NAME = {c.name: c for c in CASES}
CONTRACT = [pytest.param(c, d, r, id=f"{c.name}-{str(d)[6:]}-role{r}") for c in CASES for d in DTYPES for r in c.roles]


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_roles(case: Case, batch: int) -> Tensor | None:
    """A role per sample cycling through every role the block conditions on (None if it does not)."""
    if case.roles == (None,):
        return None
    return torch.arange(batch) % len(case.roles)


def prepared(case: Case, dtype: torch.dtype, seed: int = 0, scale: float = 0.05) -> InvertibleModule:
    """A block with every ActNorm role initialised and all parameters perturbed by `scale` noise."""
    torch.manual_seed(seed)
    block = case.make().to(dtype).train()
    x = 1.5 * torch.randn(8, *case.shape, dtype=dtype) + 0.5
    block(x, mixed_roles(case, 8))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(scale * torch.randn_like(p))
    return block.eval()


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------
# Contract suite
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, dtype, role", CONTRACT)
@pytest.mark.parametrize("amplitude", [1.0, 10.0])
def test_inverse_round_trip(case: Case, dtype: torch.dtype, role: int | None, amplitude: float):
    block = prepared(case, dtype)
    x = amplitude * torch.randn(4, *case.shape, dtype=dtype)
    with torch.no_grad():
        y, logdet = block(x, role)
        x_back = block.inverse(y, role)
    assert y.shape[0] == 4 and y.numel() == x.numel() and logdet.shape == (4,)
    assert y.dtype == dtype and logdet.dtype == dtype
    assert rel_err(x_back, x) <= RTOL[dtype]
    with torch.no_grad():  # the other direction: forward undoes inverse
        assert rel_err(block(block.inverse(y, role), role)[0], y) <= RTOL[dtype]


@pytest.mark.parametrize("case, role", [pytest.param(c, r, id=f"{c.name}-role{r}") for c in CASES for r in c.roles])
def test_logdet_matches_autograd_jacobian(case: Case, role: int | None):
    block = prepared(case, torch.float64)
    x = torch.randn(2, *case.shape, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = block(x, role)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: block(v[None], role)[0].flatten(), x[i], vectorize=True)
        jac = jac.reshape(x[i].numel(), x[i].numel())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(float(logabsdet) - float(logdet[i])) <= 1e-9 * max(1.0, abs(float(logabsdet)))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_gradients_reach_every_parameter(case: Case, dtype: torch.dtype):
    block = prepared(case, dtype).train()
    x = torch.randn(4, *case.shape, dtype=dtype, requires_grad=True)
    y, logdet = block(x, mixed_roles(case, 4))
    (y.square().sum() + logdet.sum()).backward()
    assert x.grad is not None and bool((x.grad != 0).any())
    for name, p in block.named_parameters():
        assert p.grad is not None and bool((p.grad != 0).any()), f"no gradient reaches {name}"


@pytest.mark.parametrize("case, dtype, role", CONTRACT)
def test_save_load_round_trip_is_bit_exact(case: Case, dtype: torch.dtype, role: int | None, tmp_path):
    block = prepared(case, dtype)
    path = save_weights(block, tmp_path / "g.safetensors")
    fresh = case.make().to(dtype).eval()  # different random init from the global RNG state
    x = torch.randn(3, *case.shape, dtype=dtype)
    has_actnorm = any(isinstance(m, ActNorm) for m in fresh.modules())
    if has_actnorm:  # the init state is part of what must travel
        with pytest.raises(RuntimeError, match="not initialised"):
            fresh(x, role)
    load_weights(fresh, path)
    with torch.no_grad():
        y, logdet = block(x, role)
        y2, logdet2 = fresh(x, role)
        assert torch.equal(y, y2) and torch.equal(logdet, logdet2)
        assert torch.equal(block.inverse(y, role), fresh.inverse(y, role))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_repr_names_hyper_parameters(case: Case):
    text = repr(case.make())
    for key in case.repr_keys:
        assert key in text, f"{key!r} missing from repr:\n{text}"


@pytest.mark.parametrize("case", [c for c in CASES if c.roles != (None,)], ids=lambda c: c.name)
def test_mixed_role_batch_equals_per_role_calls(case: Case):
    block = prepared(case, torch.float64)
    x = torch.randn(4, *case.shape, dtype=torch.float64)
    roles = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        y, logdet = block(x, roles)
        for i in range(4):
            y_i, logdet_i = block(x[i : i + 1], int(roles[i]))
            torch.testing.assert_close(y[i : i + 1], y_i, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(logdet[i : i + 1], logdet_i, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block.inverse(y, roles), x, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------
# ActNorm
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 3, 8, 8), (64, 3)], ids=["image", "vector"])
def test_actnorm_data_dependent_init_standardises(shape):
    torch.manual_seed(0)
    mean = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    std = torch.tensor([2.0, 0.1, 5.0], dtype=torch.float64)
    view = (1, 3) + (1,) * (len(shape) - 2)
    x = mean.view(view) + std.view(view) * torch.randn(shape, dtype=torch.float64)
    norm = ActNorm(3).double()
    assert not bool(norm.initialized.any())
    y, logdet = norm(x)
    dims = [0] + list(range(2, len(shape)))
    torch.testing.assert_close(y.mean(dim=dims), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.std(dim=dims, unbiased=False), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    pixels = shape[2] * shape[3] if len(shape) == 4 else 1
    expected = -pixels * torch.log(x.std(dim=dims, unbiased=False)).sum()
    torch.testing.assert_close(logdet, expected.expand(shape[0]), rtol=1e-12, atol=1e-12)
    assert bool(norm.initialized.all())
    # Initialisation happens once: a second batch with other statistics is not re-standardised.
    y2, _ = norm(x + 10.0)
    assert float(y2.detach().mean()) > 1.0


def test_actnorm_uninitialised_inverse_and_eval_forward_raise():
    norm = ActNorm(2, num_roles=2)
    x = torch.randn(4, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"role\(s\) \[1\] not initialised"):
        norm.inverse(x, role=1)
    with pytest.raises(RuntimeError, match="not initialised"):
        norm.eval()(x, role=0)
    assert not bool(norm.initialized.any())  # an eval forward never initialises silently


def test_actnorm_roles_initialise_independently():
    torch.manual_seed(0)
    norm = ActNorm(2, num_roles=2).double()
    x0 = torch.randn(32, 2, dtype=torch.float64)
    x1 = 4.0 + 3.0 * torch.randn(32, 2, dtype=torch.float64)
    norm(x0, role=0)
    assert norm.initialized.tolist() == [True, False]
    with pytest.raises(RuntimeError, match=r"\[1\]"):
        norm.inverse(x1, role=1)
    loc0, log_scale0 = norm.loc[0].clone(), norm.log_scale[0].clone()
    y1, _ = norm(x1, role=1)
    assert norm.initialized.tolist() == [True, True]
    assert torch.equal(norm.loc[0], loc0) and torch.equal(norm.log_scale[0], log_scale0)
    torch.testing.assert_close(y1.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.loc[1], x1.mean(0), rtol=1e-12, atol=1e-12)
    # A mixed batch initialises each role from its own samples only.
    mixed = ActNorm(2, num_roles=2).double()
    mixed(torch.cat([x0, x1]), torch.cat([torch.zeros(32), torch.ones(32)]).long())
    torch.testing.assert_close(mixed.loc, norm.loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixed.log_scale, norm.log_scale, rtol=1e-12, atol=1e-12)


def test_actnorm_init_state_follows_loaded_state_dict():
    norm = ActNorm(2, num_roles=2)
    blank = ActNorm(2, num_roles=2).state_dict()
    norm(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    norm.eval().inverse(torch.randn(4, 2), role=1)  # initialised: works
    norm.load_state_dict(blank)
    with pytest.raises(RuntimeError, match="not initialised"):
        norm.inverse(torch.randn(4, 2), role=1)


def test_actnorm_constant_channel_keeps_unit_scale():
    norm = ActNorm(2)
    x = torch.stack([torch.randn(16), torch.full((16,), 7.0)], dim=1)
    y, _ = norm(x)
    assert torch.isfinite(y).all() and float(norm.log_scale[0, 1].detach()) == 0.0
    torch.testing.assert_close(norm.inverse(y), x)


def test_actnorm_rejects_bad_input():
    norm = ActNorm(3, num_roles=2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*got shape \(2, 4, 5, 5\)"):
        norm(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"role must lie in \[0, 2\), got 2"):
        norm(torch.randn(2, 3), role=2)
    with pytest.raises(ValueError, match="role must lie"):
        norm(torch.randn(2, 3), role=torch.tensor([0, 5]))


# ------------------------------------------------------------------------------------------
# InvConv1x1
# ------------------------------------------------------------------------------------------


def test_invconv_starts_orthogonal_and_is_seeded():
    torch.manual_seed(3)
    conv = InvConv1x1(6).double()
    w = conv.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(float(conv.log_s.detach().sum())) < 1e-6  # |det W| = 1
    torch.manual_seed(3)
    assert torch.equal(InvConv1x1(6).double().weight(), w)
    assert not torch.equal(InvConv1x1(6).double().weight(), w)


def test_invconv_is_the_matrix_it_claims():
    conv = prepared(BY_NAME["invconv_image"], torch.float64)  # perturbed off orthogonal
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = conv.weight()
    y, logdet = conv(x)
    torch.testing.assert_close(y, torch.einsum("ij,bjhw->bihw", w, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, (16 * torch.linalg.slogdet(w)[1]).expand(2), rtol=1e-12, atol=1e-12)


def test_invconv_inverse_uses_no_dense_inverse(monkeypatch):
    conv = prepared(BY_NAME["invconv_image"], torch.float64)
    y, _ = conv(torch.randn(2, 3, 4, 4, dtype=torch.float64))

    def forbidden(*args, **kwargs):
        raise AssertionError("dense inverse called")

    for name in ("inv", "inv_ex", "solve", "pinv"):
        monkeypatch.setattr(torch.linalg, name, forbidden)
    monkeypatch.setattr(torch, "inverse", forbidden)
    conv.inverse(y)


def test_invconv_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] or \[B, 3\].*got shape \(2, 4\)"):
        InvConv1x1(3)(torch.randn(2, 4))


# ------------------------------------------------------------------------------------------
# Squeeze / Unsqueeze
# ------------------------------------------------------------------------------------------


def test_squeeze_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, logdet = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and torch.equal(logdet, torch.zeros(1))
    # Channel 2*dr + dc holds pixel (2i + dr, 2j + dc).
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, 3].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert torch.equal(Unsqueeze()(y)[0], x) and torch.equal(Unsqueeze().inverse(x), y)


def test_squeeze_rejects_odd_or_flat_input():
    with pytest.raises(ValueError, match=r"H and W even, got shape \(2, 1, 5, 4\)"):
        Squeeze()(torch.randn(2, 1, 5, 4))
    with pytest.raises(ValueError, match=r"H and W even, got shape \(2, 1, 4, 7\)"):
        Squeeze()(torch.randn(2, 1, 4, 7))
    with pytest.raises(ValueError, match=r"got shape \(2, 6\)"):
        Squeeze()(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"divisible by 4\), got shape \(2, 6, 4, 4\)"):
        Unsqueeze()(torch.randn(2, 6, 4, 4))


# ------------------------------------------------------------------------------------------
# AffineCoupling and its conditioners
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioner, shape", [("unet", (2, 3, 5, 6)), ("mlp", (2, 3))])
@pytest.mark.parametrize("swap", [False, True])
def test_coupling_is_identity_at_init_and_keeps_the_conditioning_half(conditioner, shape, swap):
    torch.manual_seed(0)
    block = AffineCoupling(3, 8, conditioner, swap=swap, num_roles=2).double()
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = block(x, 1)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y, _ = block(x, 1)
    kept = slice(1, 3) if swap else slice(0, 1)  # C=3 splits as 1 | 2
    moved = slice(0, 1) if swap else slice(1, 3)
    assert torch.equal(y[:, kept], x[:, kept])
    assert not torch.allclose(y[:, moved], x[:, moved])


def test_coupling_log_scale_is_soft_clamped():
    torch.manual_seed(0)
    block = AffineCoupling(4, 8, "mlp", clamp=2.0).double()
    with torch.no_grad():  # huge raw log-scales (rows 0, 1 of the output layer), modest shifts
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        block.net.out.weight[:2] *= 1000.0
    x = torch.randn(16, 4, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = block(x)
    # Two active channels, |log_s| <= clamp each (tanh saturates to exactly 1 in floating point).
    assert float(logdet.abs().max()) <= 2.0 * 2
    assert float(logdet.abs().max()) > 2.0  # the bound is approached, not merely never tested
    torch.testing.assert_close(block.inverse(y), x, rtol=1e-10, atol=1e-10)


def test_coupling_rejects_bad_construction_and_input():
    with pytest.raises(ValueError, match="num_channels >= 2 to split, got 1"):
        AffineCoupling(1, 8)
    with pytest.raises(ValueError, match="'unet' or 'mlp', got 'resnet'"):
        AffineCoupling(2, 8, "resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clamp must be > 0"):
        AffineCoupling(2, 8, clamp=0.0)
    unet, mlp = AffineCoupling(4, 8, "unet"), AffineCoupling(4, 8, "mlp")
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\] or \[B, 4\].*got shape \(2, 3, 8, 8\)"):
        unet(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"unet conditioner expects \[B, C, H, W\] input, got shape \(2, 4\)"):
        unet(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"mlp conditioner expects \[B, C\] input, got shape \(2, 4, 2, 2\)"):
        mlp.inverse(torch.randn(2, 4, 2, 2))


@pytest.mark.parametrize("hw", [(1, 1), (3, 3), (5, 8), (16, 16)])
def test_unet_conditioner_any_spatial_size(hw):
    net = UNetConditioner(2, 6, hidden=4, num_roles=2)
    out = net(torch.randn(2, 2, *hw), role=torch.tensor([0, 1]))
    assert out.shape == (2, 6, *hw) and bool((out == 0).all())  # zero last layer


@pytest.mark.parametrize("make, x", [
    (lambda: UNetConditioner(2, 4, hidden=4, num_roles=2), torch.randn(1, 2, 4, 4)),
    (lambda: MLPConditioner(2, 4, hidden=4, num_roles=2), torch.randn(1, 2)),
], ids=["unet", "mlp"])
def test_conditioners_read_the_role(make, x):
    torch.manual_seed(0)
    net = make()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert not torch.allclose(net(x, 0), net(x, 1))
    single = type(net)(2, 4, 4, 1)  # one role: no role input at all
    first = next(single.parameters())
    assert first.shape[1] == 2


def test_conditioners_have_no_batchnorm():
    block = build_flow((1, 8, 8), CFG)
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.Dropout, torch.nn.Dropout2d)
    assert not any(isinstance(m, norms) for m in block.modules())


# ------------------------------------------------------------------------------------------
# Flow, build_flow, build_maps
# ------------------------------------------------------------------------------------------


def test_build_flow_structure():
    flow = build_flow((3, 8, 8), FlowConfig(depth=3, hidden=8))
    kinds = [type(b).__name__ for b in flow.blocks]
    assert kinds[0] == "Squeeze" and kinds[-1] == "Unsqueeze"
    assert kinds[1:-1] == ["ActNorm", "AffineCoupling", "AffineCoupling", "InvConv1x1"] * 3
    assert [b.swap for b in flow.blocks if isinstance(b, AffineCoupling)] == [False, True] * 3
    assert all(b.num_channels == 12 for b in flow.blocks if isinstance(b, (AffineCoupling, InvConv1x1)))
    even = build_flow((2, 8, 8), FlowConfig(depth=1, hidden=8))
    assert [type(b).__name__ for b in even.blocks] == ["ActNorm", "AffineCoupling", "AffineCoupling", "InvConv1x1"]
    vector = build_flow((4,), FlowConfig(depth=1, hidden=8, conditioner="unet"))  # vectors always use the MLP
    assert all(b.kind == "mlp" for b in vector.blocks if isinstance(b, AffineCoupling))


def test_flow_latent_keeps_the_input_shape():
    for shape in [(1, 8, 8), (3, 4, 6), (2, 4, 4), (5,)]:
        z, _ = build_flow(shape, CFG)(torch.randn(2, *shape), 1)
        assert z.shape == (2, *shape)


def test_flow_rejects_wrong_shapes():
    flow = build_flow((1, 8, 8), CFG)
    with pytest.raises(ValueError, match=r"expects input of shape \[B, 1, 8, 8\], got \(2, 1, 8, 6\)"):
        flow(torch.randn(2, 1, 8, 6))
    with pytest.raises(ValueError, match=r"Flow.inverse expects input of shape \[B, 1, 8, 8\], got \(2, 4, 4, 4\)"):
        flow.inverse(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"H and W must be even; got shape \(1, 7, 8\)"):
        build_flow((1, 7, 8), CFG)
    with pytest.raises(ValueError, match=r"d >= 2 .* got shape \(1,\)"):
        build_flow((1,), CFG)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(d,\).*got \(2, 3\)"):
        build_flow((2, 3), CFG)
    with pytest.raises(ConfigError, match="'mlp' is for flat"):
        build_flow((2, 8, 8), FlowConfig(conditioner="mlp"))


def test_multiscale_levels_halve_the_resolution_and_pass_half_the_channels_through():
    flow = build_flow((2, 8, 8), FlowConfig(depth=1, hidden=8, scales=2))
    split = flow.blocks[-1]
    assert isinstance(split, Split) and split.channels == 1
    inner = split.inner.blocks[1:-1]  # between its squeeze and unsqueeze: one level at 4x4
    assert [type(b).__name__ for b in inner] == ["ActNorm", "AffineCoupling", "AffineCoupling", "InvConv1x1"]
    assert inner[0].num_features == 4
    flat = sum(p.numel() for p in build_flow((2, 8, 8), FlowConfig(depth=1, hidden=8)).parameters())
    assert sum(p.numel() for p in flow.parameters()) > flat  # the second level adds blocks
    # The passed-through channel is the first level's output, untouched by the second level.
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        z, _ = flow(x, 1)
        first = Flow(list(flow.blocks[:-1]))(x, 1)[0]
    assert torch.equal(z[:, 1:], first[:, 1:]) and not torch.allclose(z[:, :1], first[:, :1])


def test_multiscale_rejects_what_it_cannot_halve():
    with pytest.raises(ValueError, match=r"squeezed 2x2 first and flow.scales=2 halves them 1 more time\(s\), "
                                         r"so H and W must be divisible by 4; got shape \(1, 8, 6\)"):
        build_flow((1, 8, 6), FlowConfig(depth=1, hidden=8, scales=2))
    with pytest.raises(ValueError, match=r"flow.scales=3 .* divisible by 4; got shape \(2, 4, 6\)"):
        build_flow((2, 4, 6), FlowConfig(depth=1, hidden=8, scales=3))
    with pytest.raises(ConfigError, match=r"scales > 1 needs image data"):
        build_flow((6,), FlowConfig(depth=1, hidden=8, scales=2))
    with pytest.raises(ConfigError, match=r"scales must be >= 1, got 0"):
        FlowConfig(scales=0)
    with pytest.raises(ValueError, match=r"Split.forward .* C > 2"):
        Split(Flow([]), 2)(torch.randn(1, 2, 4, 4))


def test_shared_flow_conditions_on_the_role():
    torch.manual_seed(0)
    flow = build_flow((2, 8, 8), CFG).double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    flow(torch.cat([x, x]), torch.tensor([0] * 4 + [1] * 4))  # both ActNorm roles see the same data
    with torch.no_grad():
        y0, y1 = flow(x, 0)[0], flow(x, 1)[0]
    assert torch.equal(y0, y1)  # identity couplings + identical ActNorm stats: roles not yet apart
    with torch.no_grad():
        for block in flow.blocks:
            if isinstance(block, AffineCoupling):
                for p in block.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        y0, y1 = flow(x, 0)[0], flow(x, 1)[0]
    assert rel_err(y0, y1) > 1e-3  # only the couplings' role input tells them apart now


@pytest.mark.parametrize("shared", [True, False])
def test_build_maps(shared):
    torch.manual_seed(0)
    g_x, g_y = build_maps((1, 4, 4), FlowConfig(depth=1, hidden=4, shared=shared))
    assert (g_x.role, g_y.role) == (1, 0)
    assert (g_x.net is g_y.net) == shared and not g_x.same_map(g_y) and g_x.same_map(g_x)
    roles = {m.num_roles for m in g_x.net.modules() if isinstance(m, (ActNorm, AffineCoupling))}
    assert roles == {2 if shared else 1}
    x = torch.rand(4, 1, 4, 4, dtype=torch.float32)
    z = g_x(x)
    g_y(torch.randn(4, 1, 4, 4))
    assert not torch.allclose(g_x(x), g_y(x))  # the two maps differ (role statistics or networks)
    torch.testing.assert_close(g_x.inverse(z), x, rtol=1e-5, atol=1e-6)
