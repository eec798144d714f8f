"""The edges of the public API: every entry point refuses what it cannot mean with a ValueError
that names the problem, instead of dropping results, building a trivial network, passing NaN
through, or leaving a bare RuntimeError from deep inside a matmul.

One parametrised test per kind of edge: negative counts, invalid network configs, non-finite
inputs and times, images outside [0, 1], negative tolerances, and shape / dtype mismatches. Each
also checks the accepted side of the edge (k = 0, values exactly 0 and 1, autocast's mixed
dtypes), so that a check that refuses everything would fail here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from linearizer.checks import check_finite, check_input, check_k, check_tol
from linearizer.config import ConfigError, FlowConfig, ModelConfig, OperatorConfig, from_dict
from linearizer.flows import build_maps
from linearizer.linearizer import Linearizer
from linearizer.onestep import OneStepLinearizer, collapse, integrate, interpolate, invert, reconstruct
from linearizer.operators import (
    Dense,
    DepthwiseConv,
    IdentityPlusLowRank,
    LowRank,
    Projector,
    TimeLowRank,
)
from linearizer.projective import ProjectiveModel, projective_config
from tiny_onestep import make_nonlinear

pytestmark = pytest.mark.usefixtures("one_thread")

D = 12
SHAPE = (1, 4, 4)
NAN, INF = float("nan"), float("inf")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linearizer(A=None, dtype=torch.float64, endomorphism: bool = False) -> Linearizer:
    torch.manual_seed(0)
    g_x, g_y = build_maps((D,), FlowConfig(depth=1, hidden=8, conditioner="mlp"))
    g_x.to(dtype)
    with torch.no_grad():
        g_x(torch.randn(16, D, dtype=dtype, generator=_gen(1)))
        g_y(torch.randn(16, D, dtype=dtype, generator=_gen(2)))
    A = LowRank.random(D, D, 4, dtype=dtype, generator=_gen(3)) if A is None else A
    # with g_y = g_x, f is an endomorphism of one space: what eig needs
    return Linearizer(g_x.eval(), A, (g_x if endomorphism else g_y).eval(), (D,))


def _onestep(dtype=torch.float64) -> OneStepLinearizer:
    torch.manual_seed(0)
    cfg = ModelConfig(image_shape=SHAPE, flow=FlowConfig(depth=1, hidden=4),
                      operator=OperatorConfig(rank=2, time_embed_dim=8, hidden=8))
    model = OneStepLinearizer(cfg).to(dtype)
    model.initialize(torch.rand(8, *SHAPE, dtype=dtype, generator=_gen(4)), _gen(5))
    make_nonlinear(model, 0)
    model.build_B("euler", 3)
    return model.eval()


def _projective(dtype=torch.float64) -> ProjectiveModel:
    torch.manual_seed(0)
    model = ProjectiveModel(projective_config(rank=2, depth=1, hidden=4, image_shape=SHAPE))
    model.initialize(torch.rand(8, *SHAPE, generator=_gen(6)))
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def f() -> Linearizer:
    return _linearizer()


@pytest.fixture(scope="module")
def onestep() -> OneStepLinearizer:
    return _onestep()


@pytest.fixture(scope="module")
def projective() -> ProjectiveModel:
    return _projective()


def _raises(call: Callable[[], object], *fragments: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


# ----- the shared checks -----


def test_check_k_caps_and_refuses():
    assert check_k(None, 5) == 5 and check_k(0, 5) == 0 and check_k(3, 5) == 3 and check_k(9, 5) == 5
    for bad in (-1, -5, 1.5, True, "2"):
        _raises(lambda: check_k(bad, 5), "k must be None or an integer >= 0", repr(bad))


def test_check_tol_and_finite_and_input():
    assert check_tol(0) == 0.0 and check_tol(1e-3, "compress_tol") == 1e-3
    for bad in (-1e-12, NAN, INF, True):
        _raises(lambda: check_tol(bad, "compress_tol"), "compress_tol must be a finite number >= 0")
    x = torch.zeros(2, 3)
    assert check_finite(x, "x") is x and check_input(x, (3,), "x", like=x) is x
    x[1, 2] = NAN
    _raises(lambda: check_finite(x, "x"), "x contains 1 non-finite value(s) (NaN or infinite) of 6")
    _raises(lambda: check_input(torch.zeros(2, 4), (3,), "x"), "x must have shape [B, 3], got [2, 4]")
    _raises(lambda: check_input(torch.zeros(2, 3), (3,), "x", like=torch.zeros(1, dtype=torch.float64)),
            "x has dtype torch.float32, but the model is torch.float64")


# ----- a negative k drops nothing silently -----


def _negative_k_cases():
    def linearizer(method: str, **kw):
        return lambda k: getattr(_linearizer(**kw), method)(k)

    square = LowRank.random(D, D, 4, dtype=torch.float64, generator=_gen(7))
    dense = Dense(torch.randn(D, D, dtype=torch.float64, generator=_gen(8)))
    return {
        "Linearizer.svd": linearizer("svd"),
        "Linearizer.eig": lambda k: _linearizer(A=dense, endomorphism=True).eig(k),
        "Linearizer.range_basis": linearizer("range_basis"),
        "LowRank.svd": lambda k: square.svd(k),
        "Dense.svd (dense fallback)": lambda k: dense.svd(k),
        "Transposed.svd": lambda k: square.T.svd(k),
        "Scaled.svd": lambda k: (-2.0 * dense).svd(k),
        "Product.svd": lambda k: (dense @ square).svd(k),
        "Projector.svd symmetric": lambda k: Projector(D, 3).double().svd(k),
        "Projector.svd oblique": lambda k: Projector(D, 3, symmetric=False).double().svd(k),
    }


NEGATIVE_K = _negative_k_cases()


@pytest.mark.parametrize("name", NEGATIVE_K)
@pytest.mark.parametrize("k", [-1, -3, 2.0])
def test_negative_or_fractional_k_is_refused(name, k):
    _raises(lambda: NEGATIVE_K[name](k), "k must be None or an integer >= 0", repr(k))


@pytest.mark.parametrize("name", NEGATIVE_K)
def test_k_zero_is_empty_and_large_k_is_all(name):
    """The documented choice on the accepted side: k = 0 returns nothing, k beyond the rank all there are."""
    empty, everything, default = NEGATIVE_K[name](0), NEGATIVE_K[name](10**6), NEGATIVE_K[name](None)
    count = (lambda r: r.s.numel()) if hasattr(empty, "s") else (
        (lambda r: r.shape[0]) if isinstance(empty, Tensor) else (lambda r: r[0].shape[-1] if r[0].dim() == 2
                                                                  else r[0].shape[0]))
    assert count(empty) == 0
    assert count(everything) == count(default) > 0


def test_kernel_basis_rtol_is_not_a_count(f):
    """kernel_basis has no k: a negative first argument is a negative rtol, which would count no
    singular value as zero and return an empty kernel for a rank-4 operator."""
    assert f.kernel_basis().shape[0] == D - 4
    _raises(lambda: f.kernel_basis(-1), "rtol must be a finite number >= 0, got -1")


# ----- FlowConfig cannot describe an empty network -----


@pytest.mark.parametrize("field, value", [("depth", 0), ("depth", -1), ("hidden", 0), ("clamp", 0.0),
                                          ("clamp", -2.0)])
def test_flow_config_refuses_an_empty_or_unbounded_network(field, value):
    with pytest.raises(ConfigError, match=rf"FlowConfig\.{field} must be"):
        FlowConfig(**{field: value})
    # the loaders still name the dotted key
    with pytest.raises(ConfigError, match=rf"^flow\.{field} must be"):
        from_dict(ModelConfig, {"flow": {field: value}})
    with pytest.raises(ConfigError, match=rf"^net\.{field} must be"):
        from_dict(FlowConfig, {field: value}, "net")
    assert FlowConfig(depth=1).depth == 1  # the edge itself is accepted


# ----- NaN and inf are refused at the entry points -----


def _bad(x: Tensor, value: float) -> Tensor:
    x = x.clone()
    x.view(-1)[-1] = value
    return x


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("entry", ["forward", "project", "X.add", "X.inner"])
def test_linearizer_refuses_non_finite(f, entry, value):
    x = torch.randn(3, D, dtype=torch.float64, generator=_gen(9))
    calls = {"forward": lambda v: f(v), "project": lambda v: f.project(v), "X.add": lambda v: f.X.add(x, v),
             "X.inner": lambda v: f.X.inner(v, x)}
    assert torch.isfinite(torch.as_tensor(calls[entry](x))).all()
    _raises(lambda: calls[entry](_bad(x, value)), "non-finite value(s) (NaN or infinite)")


@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("entry", ["sample", "sample_multistep", "invert", "reconstruct", "interpolate"])
def test_onestep_refuses_non_finite(onestep, entry, value):
    noise = torch.randn(2, *SHAPE, dtype=torch.float64, generator=_gen(10))
    images = torch.rand(2, *SHAPE, dtype=torch.float64, generator=_gen(11))
    calls = {
        "sample": lambda v: onestep.sample(v), "sample_multistep": lambda v: onestep.sample_multistep(v, "euler", 2),
        "invert": lambda v: invert(onestep, v), "reconstruct": lambda v: reconstruct(onestep, v),
        "interpolate": lambda v: interpolate(onestep, v[:1], v[1:], n=3),
    }
    good = noise if entry.startswith("sample") else images
    assert torch.isfinite(calls[entry](good)).all()
    _raises(lambda: calls[entry](_bad(good, value)), "non-finite value(s) (NaN or infinite)")


def test_integrate_refuses_non_finite_codes(onestep):
    z0 = torch.randn(2, onestep.d, dtype=torch.float64, generator=_gen(12))
    assert torch.isfinite(integrate(onestep.A, z0, "euler", 2)).all()
    _raises(lambda: integrate(onestep.A, _bad(z0, NAN), "euler", 2), "z0 contains 1 non-finite value(s)")


@pytest.mark.parametrize("value", [NAN, INF])
def test_projective_model_refuses_non_finite(projective, value):
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=_gen(13))
    assert torch.isfinite(projective(x)).all()
    _raises(lambda: projective(_bad(x, value)), "x contains 1 non-finite value(s)")
    _raises(lambda: projective.as_linearizer()(_bad(x, value)), "non-finite")


@pytest.mark.parametrize("t", [NAN, INF, -INF, torch.tensor(NAN), torch.tensor([NAN])])
def test_time_lowrank_at_refuses_a_non_finite_time(t):
    A = TimeLowRank(D, 2, embed_dim=8, hidden=8)
    assert torch.isfinite(A.at(0.5).materialize()).all()
    _raises(lambda: A.at(t), "at: t must be finite")
    _raises(lambda: A.materialize(t), "must be finite")


# ----- invert takes images, in [0, 1] -----


@pytest.mark.parametrize("lo, hi", [(-0.1, 1.0), (0.0, 1.1), (-3.0, 4.0)])
@pytest.mark.parametrize("entry", ["invert", "reconstruct", "interpolate"])
def test_inversion_refuses_images_outside_the_unit_interval(onestep, entry, lo, hi):
    x = torch.rand(2, *SHAPE, dtype=torch.float64, generator=_gen(14))
    x.view(2, -1)[:, 0] = torch.tensor([0.0, 1.0], dtype=x.dtype)  # both ends are inside
    calls = {"invert": lambda v: invert(onestep, v), "reconstruct": lambda v: reconstruct(onestep, v),
             "interpolate": lambda v: interpolate(onestep, v[:1], v[1:], n=3)}
    assert torch.isfinite(calls[entry](x)).all()
    x.view(2, -1)[0, 1], x.view(2, -1)[1, 1] = lo, hi
    # interpolate checks its two ends one by one, so its message gives one image's range
    given = f"[{lo:.4g}, {hi:.4g}]" if entry != "interpolate" else "got values in"
    _raises(lambda: calls[entry](x), "must be images in [0, 1]", given)


# ----- negative tolerances -----


def _negative_tol_cases(f: Linearizer, onestep: OneStepLinearizer):
    g = _gen(15)
    B = IdentityPlusLowRank(0.5, torch.randn(D, 3, dtype=torch.float64, generator=g),
                            torch.randn(D, 3, dtype=torch.float64, generator=g))
    singular = IdentityPlusLowRank(0.0, B.P, B.Q)
    L = LowRank.random(D, D, 3, dtype=torch.float64, generator=g)
    y = torch.randn(2, D, dtype=torch.float64, generator=g)
    return {
        "IdentityPlusLowRank.compress": ("rtol", lambda tol: B.compress(tol)),
        "IdentityPlusLowRank.pinv": ("rtol", lambda tol: singular.pinv(tol)),
        "LowRank.pinv": ("rtol", lambda tol: L.pinv(tol)),
        "collapse": ("compress_tol", lambda tol: collapse(onestep, "euler", 3, compress_tol=tol)),
        "build_B": ("compress_tol", lambda tol: _onestep().build_B("euler", 3, compress_tol=tol)),
        "Linearizer.range_basis": ("rtol", lambda tol: f.range_basis(rtol=tol)),
        "Linearizer.kernel_basis": ("rtol", lambda tol: f.kernel_basis(tol)),
        "Linearizer.project": ("rtol", lambda tol: f.project(y, rtol=tol)),
        "Linearizer.eig": ("tol", lambda tol: _linearizer(A=Dense(torch.eye(D, dtype=torch.float64)),
                                                          endomorphism=True).eig(2, tol)),
    }


@pytest.mark.parametrize("name", ["IdentityPlusLowRank.compress", "IdentityPlusLowRank.pinv", "LowRank.pinv",
                                  "collapse", "build_B", "Linearizer.range_basis", "Linearizer.kernel_basis",
                                  "Linearizer.project", "Linearizer.eig"])
@pytest.mark.parametrize("tol", [-1e-3, -1.0, NAN])
def test_negative_tolerances_are_refused(f, onestep, name, tol):
    what, call = _negative_tol_cases(f, onestep)[name]
    assert call(1e-6) is not None  # a valid tolerance works
    _raises(lambda: call(tol), f"{what} must be a finite number >= 0, got {tol!r}")


# ----- shape and dtype mismatches are named -----


def _operator_cases():
    g = _gen(16)
    P = torch.randn(D, 2, dtype=torch.float64, generator=g)
    return {
        "Dense": Dense(torch.randn(D, D, dtype=torch.float64, generator=g)),
        "LowRank": LowRank.random(D, D, 2, dtype=torch.float64, generator=g),
        "IdentityPlusLowRank": IdentityPlusLowRank(1.0, P, P.clone()),
        "DepthwiseConv": DepthwiseConv((3, 2, 2), kernel_size=2).double(),
        "TimeLowRank": TimeLowRank(D, 2, embed_dim=8, hidden=8).double(),
    }


OPERATORS = _operator_cases()


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("transpose", [False, True])
def test_operators_name_a_dtype_mismatch(name, transpose):
    A = OPERATORS[name]
    apply = A.apply_transpose if transpose else A.apply
    call = (lambda z: apply(z, 0.3)) if name == "TimeLowRank" else apply
    z = torch.randn(3, D, dtype=torch.float64, generator=_gen(17))
    assert call(z).shape == (3, D)
    _raises(lambda: call(z.float()), f"{name} is torch.float64", "got torch.float32")
    _raises(lambda: call(z[:, 1:]), f"[B, {D}]", f"(3, {D - 1})")


@pytest.mark.parametrize("name", ["Dense", "LowRank", "IdentityPlusLowRank"])
def test_operators_accept_mixed_dtypes_under_autocast(name):
    """bf16 training runs the operators under autocast, which casts the matmul's operands: the
    dtype check must not refuse what autocast makes right."""
    A = OPERATORS[name].float()
    z = torch.randn(3, D, generator=_gen(18))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = A.apply(z.bfloat16())
    assert out.shape == (3, D) and torch.isfinite(out).all()


def _image_entry_cases(onestep: OneStepLinearizer, projective: ProjectiveModel, f: Linearizer):
    return {
        "Linearizer": (lambda x: f(x), (D,)),
        "onestep.sample": (lambda x: onestep.sample(x), SHAPE),
        "onestep.sample_multistep": (lambda x: onestep.sample_multistep(x, "euler", 2), SHAPE),
        "invert": (lambda x: invert(onestep, x), SHAPE),
        "projective": (lambda x: projective(x), SHAPE),
    }


@pytest.mark.parametrize("entry", ["Linearizer", "onestep.sample", "onestep.sample_multistep", "invert",
                                   "projective"])
def test_model_entry_points_name_shape_and_dtype(onestep, projective, f, entry):
    call, shape = _image_entry_cases(onestep, projective, f)[entry]
    x = torch.rand(2, *shape, dtype=torch.float64, generator=_gen(19))
    assert call(x).shape == x.shape
    want = f"[B, {', '.join(map(str, shape))}]"
    _raises(lambda: call(x.float()), "has dtype torch.float32, but the model is torch.float64")
    _raises(lambda: call(x[..., 1:]), want, f"got {list(x[..., 1:].shape)}")
    _raises(lambda: call(x[0]), want)
    _raises(lambda: call(x.numpy()), "must be a torch.Tensor", "ndarray")


def test_float32_models_accept_float32(onestep):
    """The dtype rule follows the model: after .float() the float32 inputs are the right ones."""
    model = _onestep().float()
    model.build_B("euler", 3)
    x = torch.rand(2, *SHAPE, generator=_gen(20))
    assert invert(model, x).dtype == torch.float32 and model.sample(x).dtype == torch.float32
    with torch.no_grad():
        assert math.isfinite(float(_projective(torch.float32)(x).sum()))
