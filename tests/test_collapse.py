"""The collapsed propagator B: exact against stepping, RK4 nested, structured inverse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from linearizer.config import FlowConfig, ModelConfig, OperatorConfig
from linearizer.onestep import (OneStepLinearizer, collapse, integrate, inverse_B, invert, reconstruct,
                               reference_collapse, rk4_step)
from linearizer.onestep.samplers import make_grid
from linearizer.operators.dense import Dense
from linearizer.operators.identity_lowrank import IdentityPlusLowRank

from tests.tiny_onestep import make_nonlinear

RANK = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(shape=(1, 8, 8), dtype=torch.float64, seed=0) -> OneStepLinearizer:
    torch.manual_seed(seed)
    cfg = ModelConfig(image_shape=shape, flow=FlowConfig(depth=1, hidden=8),
                      operator=OperatorConfig(rank=RANK, time_embed_dim=8, hidden=16))
    model = OneStepLinearizer(cfg).to(dtype)
    model.initialize(torch.rand(32, *shape, dtype=dtype), torch.Generator().manual_seed(seed))
    make_nonlinear(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> OneStepLinearizer:
    return tiny_model()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def noise(model: OneStepLinearizer, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *model.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ----- B equals stepping --------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True], ids=["lowrank", "dense"])
@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_collapse_equals_stepping(model, method, steps, dense):
    t_end = 0.5 if steps == 1 else None  # the default 1 - 1/T is 0 for T = 1
    x0 = noise(model)
    z0 = model.flat(model.encode_noise(x0))
    z_steps = integrate(model.A, z0, method, steps, t_end)
    B = collapse(model, method, steps, t_end, dense=dense)
    assert isinstance(B, Dense if dense else IdentityPlusLowRank)
    assert B.P.dtype == torch.float64 if not dense else B.W.dtype == torch.float64
    z_B = B.apply(z0)
    assert rel(z_B, z_steps) <= 1e-10
    # decoded: one-step generation through the cached B == T-step generation
    model.build_B(method, steps, t_end, dense=dense)
    x_one = model.sample(x0)
    x_multi = model.sample_multistep(x0, method, steps, t_end)
    assert rel(x_one, x_multi) <= 1e-10


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_steps_one_is_exactly_one_hand_computed_step(model, method):
    h = t_end = 0.4
    z0 = model.flat(model.encode_noise(noise(model)))
    A = model.A

    def G(t: float, z: torch.Tensor) -> torch.Tensor:  # (A(t) - I) z / (1 - t), from A.at(t)
        return (A.at(torch.tensor(t, dtype=torch.float64)).apply(z) - z) / (1 - t)

    if method == "euler":
        expected = z0 + h * G(0.0, z0)
    else:
        k1 = G(0.0, z0)
        k2 = G(h / 2, z0 + h / 2 * k1)
        k3 = G(h / 2, z0 + h / 2 * k2)
        k4 = G(h, z0 + h * k3)
        expected = z0 + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert rel(expected, z0) > 1e-3  # the step does move z
    assert rel(integrate(A, z0, method, 1, t_end), expected) <= 1e-12
    assert rel(collapse(model, method, 1, t_end).apply(z0), expected) <= 1e-12


def test_default_t_end_with_one_step_is_rejected(model):
    z0 = torch.zeros(1, model.d, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_end"):
        integrate(model.A, z0, "rk4", 1)
    with pytest.raises(ValueError, match="t_end"):
        collapse(model, "euler", 1)
    with pytest.raises(ValueError, match="method"):
        collapse(model, "midpoint", 4)


# ----- RK4: the nested stages, against the reference's un-nested sum -----------------------


def reference_rk4_matrix(G0, G_half, G1, I, h):
    """The reference's collapsed "RK4" step: the stage matrices summed as if not nested."""
    return I + (h / 6) * (G0 + 2 * G_half + 2 * G_half + G1)


def test_exact_rk4_matrix_is_the_rk4_map_and_the_reference_is_not():
    torch.manual_seed(0)
    d, h = 6, 0.3
    I = torch.eye(d, dtype=torch.float64)
    G = torch.randn(d, d, dtype=torch.float64)
    # constant G: RK4 is the degree-4 Taylor polynomial of exp(hG)
    taylor = I + h * G + (h * G) @ (h * G) / 2 + torch.matrix_power(h * G, 3) / 6 + torch.matrix_power(h * G, 4) / 24
    assert rel(rk4_step(G, G, G, I, h), taylor) <= 1e-14
    # ... while the un-nested sum collapses to the Euler step I + hG, off by O(h^2)
    wrong = reference_rk4_matrix(G, G, G, I, h)
    assert rel(wrong, I + h * G) <= 1e-14
    assert rel(wrong, taylor) > 1e-2


def test_reference_rk4_collapse_disagrees_with_stepping(model):
    steps, method = 10, "rk4"
    grid = make_grid(method, steps)
    U, V = model.A.factors(grid.times)
    gamma, h, I = grid.gammas(), grid.h, torch.eye(model.d, dtype=torch.float64)
    Gs = [gamma[i] * (U[i] @ V[i].T - I) for i in range(len(gamma))]
    B_exact, B_ref = I, I
    for k in range(steps):
        i0, i1, i2 = grid.stages(k)
        B_exact = rk4_step(Gs[i0], Gs[i1], Gs[i2], I, h) @ B_exact
        B_ref = reference_rk4_matrix(Gs[i0], Gs[i1], Gs[i2], I, h) @ B_ref
    z0 = model.flat(model.encode_noise(noise(model)))
    z_steps = integrate(model.A, z0, method, steps)
    assert rel(z0 @ B_exact.T, z_steps) <= 1e-10
    assert rel(z0 @ B_ref.T, z_steps) > 1e-4  # not the RK4 map: a first-order scheme
    assert rel(collapse(model, method, steps).materialize(), B_exact) <= 1e-10
    assert rel(reference_collapse(model, steps).materialize(), B_ref) <= 1e-10


# ----- structure: rank, dense fallback, compression -----------------------------------------


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("rk4", 3)])
def test_rank_is_per_step_rank_times_steps(model, method, per_step):
    B = collapse(model, method, 5, dense=False)
    assert B.rank == per_step * RANK * 5 <= 4 * RANK * 5


def test_automatic_form_goes_dense_when_rank_reaches_half_of_d(model):
    assert isinstance(collapse(model, "euler", 3), IdentityPlusLowRank)  # rank 6 < 32
    assert isinstance(collapse(model, "rk4", 10), Dense)  # rank 60 >= d / 2 = 32


def test_compression_keeps_the_operator(model):
    B = collapse(model, "rk4", 10, dense=False)
    assert B.rank == 60
    C = collapse(model, "rk4", 10, dense=False, compress_tol=1e-13)
    # the low-rank part of B lives in the span of A's factors at the 2T + 1 grid times
    assert C.rank <= min(model.d, (2 * 10 + 1) * RANK)
    assert rel(C.materialize(), B.materialize()) <= 1e-11


# ----- A(t) evaluated once per distinct time -------------------------------------------------


class CallCounter:
    """Counts forward calls of the first layer of A's MLP, and the rows each call saw."""

    def __init__(self, A: nn.Module):
        self.rows: list[int] = []
        first = next(m for m in A.modules() if isinstance(m, nn.Linear))
        self.handle = first.register_forward_pre_hook(lambda _m, args: self.rows.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("method,times", [("euler", 7), ("rk4", 2 * 7 + 1)])
def test_A_is_evaluated_once_for_all_distinct_times(model, method, times):
    x0 = noise(model, n=5)
    with CallCounter(model.A) as count:
        model.sample_multistep(x0, method, 7)
    assert count.rows == [times]  # one MLP call, one row per distinct time, none per sample
    with CallCounter(model.A) as count:
        collapse(model, method, 7)
    assert count.rows == [times]


# ----- inverse -------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True], ids=["woodbury", "dense"])
@pytest.mark.parametrize("solve", ["inverse", "pinv"])
def test_inverse_of_B_matches_dense_inverse(solve, dense):
    model = tiny_model(seed=3)
    model.build_B("rk4", 4, dense=dense)
    B = model.B_operator().materialize()
    B_inv = inverse_B(model, solve)
    if not dense:
        assert isinstance(B_inv, IdentityPlusLowRank)  # Woodbury keeps the structure
    assert rel(B_inv.materialize(), torch.linalg.inv(B)) <= 1e-10


def test_invert_reconstruct_round_trip_float64():
    model = tiny_model(seed=4)
    model.build_B("rk4", 6)
    x = torch.rand(3, *model.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x0 = invert(model, x)
    assert rel(model.sample(x0), x) <= 1e-10
    assert rel(reconstruct(model, x), x) <= 1e-10


def test_inverse_cache_follows_rebuilds():
    model = tiny_model(seed=6)
    model.build_B("euler", 3)
    first = inverse_B(model)
    assert inverse_B(model) is first
    model.build_B("euler", 5)
    second = inverse_B(model)
    assert second is not first
    eye = torch.eye(model.d, dtype=torch.float64)
    assert rel(second.materialize() @ model.B_operator().materialize(), eye) <= 1e-10
