"""The linear algebra of Linearizers, checked numerically on small random models.

Every identity of method.md §1 is tested in float64 with tight tolerances (the maps are exact up
to round-off), plus a float32 image model with a realistic tolerance.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linearizer.config import FlowConfig
from linearizer.flows import build_maps
from linearizer.io import load_weights, save_weights
from linearizer.linearizer import Linearizer
from linearizer.operators import Dense, LowRank, Projector

D = 12
SHAPE = (D,)


def perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Move every parameter away from its (identity-like) initialisation so tests are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def make_maps(shape=SHAPE, shared=True, dtype=torch.float64, seed=0, conditioner="mlp"):
    torch.manual_seed(seed)
    g_x, g_y = build_maps(shape, FlowConfig(depth=2, hidden=16, conditioner=conditioner, shared=shared))
    g_x.to(dtype), g_y.to(dtype)
    # data-dependent ActNorm init for both roles, then move off the identity
    x = torch.randn(64, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    g_x(x), g_y(x * 0.5 + 1.0)
    perturb(g_x, 0.05, seed + 1)
    if not shared:
        perturb(g_y, 0.05, seed + 2)
    return g_x.eval(), g_y.eval()


def rand(*shape, seed=0, dtype=torch.float64, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module")
def maps():
    return make_maps()


@pytest.fixture(scope="module", params=["dense", "lowrank", "rankdef"])
def f(request, maps):
    g_x, g_y = maps
    torch.manual_seed(3)
    if request.param == "dense":
        A = Dense(rand(D, D, seed=4) / D**0.5)
    elif request.param == "lowrank":
        A = LowRank(rand(D, 5, seed=5), rand(D, 5, seed=6))
    else:  # rank-deficient dense matrix: pinv must still satisfy the Penrose identities
        A = Dense(rand(D, 3, seed=7) @ rand(3, D, seed=8))
    return Linearizer(g_x, A.to(torch.float64), g_y, SHAPE)


def test_forward_is_sandwich(f):
    x = rand(5, D, seed=10)
    expected = f.g_y.inverse(f.A.apply(f.g_x(x)))
    torch.testing.assert_close(f(x), expected, rtol=0, atol=0)


def test_induced_linearity(f):
    x1, x2 = rand(4, D, seed=11), rand(4, D, seed=12, scale=3.0)
    a, b = 1.7, -0.6
    lhs = f(f.X.lincomb([a, b], [x1, x2]))
    rhs = f.Y.lincomb([a, b], [f(x1), f(x2)])
    assert rel(lhs, rhs) <= 1e-12


def test_zero_maps_to_zero(f):
    assert rel(f(f.X.zero(2)), f.Y.zero(2)) <= 1e-12


def test_adjoint_identity(f):
    x, y = rand(6, D, seed=13), rand(6, D, seed=14)
    lhs = f.Y.inner(f(x), y)
    rhs = f.X.inner(x, f.T(y))
    assert rel(lhs, rhs) <= 1e-12


def test_penrose_identities(f):
    fp = f.pinv()
    x, y, y2 = rand(5, D, seed=15), rand(5, D, seed=16), rand(5, D, seed=17)
    assert rel(f(fp(f(x))), f(x)) <= 1e-10                      # f f+ f = f
    assert rel(fp(f(fp(y))), fp(y)) <= 1e-10                    # f+ f f+ = f+
    ffp = lambda v: f(fp(v))                                    # noqa: E731
    assert rel(f.Y.inner(ffp(y), y2), f.Y.inner(y, ffp(y2))) <= 1e-10   # (f f+)^T = f f+
    fpf = lambda v: fp(f(v))                                    # noqa: E731
    assert rel(f.X.inner(fpf(x), x), f.X.inner(x, fpf(x))) <= 1e-10     # (f+ f)^T = f+ f


def test_svd_reconstruction(f):
    svd = f.svd()
    x = rand(3, D, seed=18)
    coeffs = svd.s[None, :] * (f.X.encode(x) @ svd.V)           # s_i <x, v_i>_X
    recon = f.Y.decode(coeffs @ svd.U.T)
    assert rel(recon, f(x)) <= 1e-10
    # the decoded singular vectors are unit vectors of the induced spaces
    torch.testing.assert_close(f.Y.norm(svd.u), torch.ones_like(svd.s), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f.X.norm(svd.v), torch.ones_like(svd.s), rtol=1e-10, atol=1e-10)


def test_project_onto_range(f):
    y = rand(4, D, seed=19)
    p = f.project(y)
    assert rel(f.project(p), p) <= 1e-10
    residual = f.Y.sub(y, p)
    basis = f.range_basis()
    assert f.Y.encode(residual).matmul(f.Y.encode(basis).T).abs().max() <= 1e-10 * f.Y.norm(y).max()


def test_kernel_basis_maps_to_zero(maps):
    g_x, g_y = maps
    f = Linearizer(g_x, Dense(rand(D, 4, seed=20) @ rand(4, D, seed=21)), g_y, SHAPE)
    k = f.kernel_basis()
    assert k.shape == (D - 4, D)
    assert rel(f(k), f.Y.zero(D - 4)) <= 1e-10


def test_compose_equals_product(maps):
    g_x, g_y = maps
    f1 = Linearizer(g_x, Dense(rand(D, D, seed=22) / D**0.5), g_y, SHAPE)
    f2 = Linearizer(g_y, LowRank(rand(D, 4, seed=23), rand(D, 4, seed=24)), g_x, SHAPE)
    x = rand(3, D, seed=25)
    assert rel((f2 @ f1)(x), f2(f1(x))) <= 1e-12
    with pytest.raises(ValueError, match="same map"):
        f1.compose(f1)  # f1 ends at g_y but starts at g_x: the middle networks differ


def test_projector_is_idempotent_everywhere(maps):
    g_x, _ = maps
    torch.manual_seed(26)
    f = Linearizer(g_x, Projector(D, 4).to(torch.float64), g_x, SHAPE)
    for scale in (1.0, 10.0):
        x = rand(5, D, seed=27, scale=scale)
        assert rel(f(f(x)), f(x)) <= 1e-12


def test_eig_relation(maps):
    g_x, _ = maps
    M = rand(D, D, seed=28)
    f = Linearizer(g_x, Dense(M + M.T), g_x, SHAPE)
    vals, vecs = f.eig(k=5)
    assert vals.shape == (5,) and vecs.shape == (5, D)
    assert rel(f(vecs), f.X.scale(vals, vecs)) <= 1e-10


def test_eig_nonsymmetric_real_pairs(maps):
    g_x, _ = maps
    f = Linearizer(g_x, Dense(rand(D, D, seed=29)), g_x, SHAPE)
    vals, vecs = f.eig()
    assert vals.numel() >= 1
    assert rel(f(vecs), f.X.scale(vals, vecs)) <= 1e-9


def test_power(maps):
    g_x, _ = maps
    f = Linearizer(g_x, Dense(rand(D, D, seed=30) / D**0.5), g_x, SHAPE)
    x = rand(2, D, seed=31)
    assert rel(f.power(3)(x), f(f(f(x)))) <= 1e-10


def test_errors_name_the_problem(maps, f):
    g_x, g_y = maps
    with pytest.raises(ValueError, match=r"shape \[B, 12\]"):
        f(rand(2, D + 1))
    with pytest.raises(ValueError, match="dtype"):
        f(rand(2, D).float())
    with pytest.raises(ValueError, match="same map"):
        f.eig()
    with pytest.raises(ValueError, match="square"):
        Linearizer(g_x, Dense(rand(6, D, seed=1)), g_x, SHAPE, y_shape=(6,)).power(2)
    with pytest.raises(ValueError, match="expected A of shape"):
        Linearizer(g_x, Dense(rand(D, 5, seed=1)), g_y, SHAPE)


def test_separate_networks_and_save_load(tmp_path):
    g_x, g_y = make_maps(shared=False, seed=5)
    assert not g_x.same_map(g_y)
    f = Linearizer(g_x, Dense(rand(D, D, seed=32)), g_y, SHAPE)
    x1, x2 = rand(3, D, seed=33), rand(3, D, seed=34)
    assert rel(f(f.X.add(x1, x2)), f.Y.add(f(x1), f(x2))) <= 1e-12
    save_weights(f, tmp_path / "w.safetensors")
    g_x2, g_y2 = make_maps(shared=False, seed=99)
    f2 = Linearizer(g_x2, Dense(rand(D, D, seed=35)), g_y2, SHAPE)
    load_weights(f2, tmp_path / "w.safetensors")
    assert torch.equal(f2(x1), f(x1))


def test_shared_network_saved_once(tmp_path, maps):
    g_x, g_y = maps
    f = Linearizer(g_x, Dense(rand(D, D, seed=36)), g_y, SHAPE)
    from safetensors.torch import load_file

    save_weights(f, tmp_path / "w.safetensors")
    keys = load_file(str(tmp_path / "w.safetensors")).keys()
    assert not any(k.startswith("g_y.") for k in keys), "the shared network must be stored once"


def test_image_linearizer_float32():
    shape = (2, 8, 8)
    g_x, g_y = make_maps(shape=shape, dtype=torch.float32, seed=7, conditioner="unet")
    d = 2 * 8 * 8
    f = Linearizer(g_x, LowRank(rand(d, 6, seed=37, dtype=torch.float32) / d**0.25,
                                rand(d, 6, seed=38, dtype=torch.float32) / d**0.25), g_y, shape)
    x1, x2 = rand(3, *shape, seed=39, dtype=torch.float32), rand(3, *shape, seed=40, dtype=torch.float32)
    lhs = f(f.X.lincomb([0.3, 0.7], [x1, x2]))
    rhs = f.Y.lincomb([0.3, 0.7], [f(x1), f(x2)])
    assert rel(lhs, rhs) <= 1e-5


# ----- vector-space axioms of the induced space (property-based) -----

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@settings(max_examples=15, deadline=None)
@given(a=finite, b=finite, s1=st.integers(0, 10_000), s2=st.integers(0, 10_000), s3=st.integers(0, 10_000))
def test_vector_space_axioms(maps, a, b, s1, s2, s3):
    X = Linearizer(maps[0], Dense(torch.eye(D, dtype=torch.float64)), maps[0], SHAPE).X
    x, y, z = rand(2, D, seed=s1), rand(2, D, seed=s2, scale=2.0), rand(2, D, seed=s3)
    tol = 1e-10

    def close(u, v):
        return X.dist(u, v).max().item() <= tol * (1 + X.norm(u).max().item())

    assert close(X.add(x, y), X.add(y, x))                                  # commutativity
    assert close(X.add(X.add(x, y), z), X.add(x, X.add(y, z)))              # associativity
    assert close(X.add(x, X.zero(2)), x)                                    # identity
    assert close(X.add(x, X.neg(x)), X.zero(2))                             # inverse
    assert close(X.scale(a, X.scale(b, x)), X.scale(a * b, x))              # compatibility
    assert close(X.scale(1.0, x), x)                                        # unit
    assert close(X.scale(a, X.add(x, y)), X.add(X.scale(a, x), X.scale(a, y)))   # distributivity
    assert close(X.scale(a + b, x), X.add(X.scale(a, x), X.scale(b, x)))
