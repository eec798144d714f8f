"""The operator contract, checked numerically for every operator and dtype.

One suite runs over every operator (plain, composite, snapshot and pseudo-inverse results):
apply against the dense matrix, the adjoint identity, the Penrose identities, the SVD,
gradients, save/load and input checks. Structure-specific claims (IdentityPlusLowRank closure
and Woodbury, exact idempotency, per-distinct-t evaluation, convolution layout) follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from linearizer.io import load_weights, save_weights
from linearizer.operators import (
    Dense,
    DepthwiseConv,
    IdentityPlusLowRank,
    LinearOperator,
    LowRank,
    Product,
    Projector,
    Scaled,
    Sum,
    TimeLowRank,
    Transposed,
    sinusoidal_embedding,
)

F64, F32 = torch.float64, torch.float32
DTYPES = [F64, F32]
TOL = {F64: 1e-12, F32: 1e-5}
BATCH = 6
TIMES = [0.1, 0.5, 0.1, 0.9, 0.5, 0.1]  # three distinct values in a batch of six


def rand(*shape: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def perturb(module: nn.Module, scale: float, seed: int) -> nn.Module:
    """Move every parameter away from its initialisation so that no check passes trivially."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype))
    return module


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def assert_close_rel(a: Tensor, b: Tensor, tol: float) -> None:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    err = rel_err(a, b)
    assert err <= tol, f"relative error {err:.3g} > {tol:.1g}"


# ----------------------------------------------------------------------------------------------
# The cases: each factory builds an operator (in `dtype`, from `seed`) and names the module whose
# parameters it depends on.
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    op: LinearOperator
    owner: nn.Module  # the module whose trainable parameters `op` depends on
    t: Tensor | None = None  # per-sample times (TimeLowRank only)

    def apply(self, z: Tensor) -> Tensor:
        return self.op.apply(z) if self.t is None else self.op.apply(z, self.t)

    def apply_T(self, y: Tensor) -> Tensor:
        return self.op.apply_transpose(y) if self.t is None else self.op.apply_transpose(y, self.t)

    def dense(self) -> Tensor:
        """`[m, n]`, or `[B, m, n]` (one matrix per sample) for a time-dependent case."""
        if self.t is None:
            return self.op.materialize()
        return torch.stack([self.op.materialize(t) for t in self.t])


def _time_op(dtype: torch.dtype, seed: int) -> TimeLowRank:
    torch.manual_seed(seed)
    return TimeLowRank(12, 3, embed_dim=8, hidden=16).to(dtype)


def _iplr(dtype: torch.dtype, seed: int, b: float = 0.8, d: int = 10, k: int = 3,
          trainable: bool = False) -> IdentityPlusLowRank:
    return IdentityPlusLowRank(b, rand(d, k, seed=seed, dtype=dtype) / d**0.5,
                               rand(d, k, seed=seed + 1, dtype=dtype) / d**0.5, trainable=trainable)


def _lowrank(dtype: torch.dtype, seed: int, m: int = 9, n: int = 7, r: int = 3) -> LowRank:
    return LowRank(rand(m, r, seed=seed, dtype=dtype), rand(n, r, seed=seed + 1, dtype=dtype))


def _deficient_lowrank(dtype: torch.dtype, seed: int) -> LowRank:
    U = rand(9, 4, seed=seed, dtype=dtype)
    U[:, 3] = U[:, 0] - 2 * U[:, 1]  # rank 3 from 4 columns
    return LowRank(U, rand(7, 4, seed=seed + 1, dtype=dtype))


def _projector(dtype: torch.dtype, seed: int, symmetric: bool, d: int = 10, k: int = 4) -> Projector:
    torch.manual_seed(seed)
    return perturb(Projector(d, k, symmetric=symmetric).to(dtype), 0.3, seed)


def _conv(dtype: torch.dtype, seed: int, shape: tuple[int, int, int] = (2, 3, 4), k: int = 4) -> DepthwiseConv:
    torch.manual_seed(seed)
    return perturb(DepthwiseConv(shape, kernel_size=k).to(dtype), 0.3, seed)


def _singular_iplr(dtype: torch.dtype, seed: int) -> IdentityPlusLowRank:
    """`I - e e^T + p q^T` with `q . e = 0`: singular (e is in the kernel) although b = 1."""
    e = rand(10, 1, seed=seed, dtype=dtype)
    e = e / e.norm()
    q = rand(10, 1, seed=seed + 1, dtype=dtype)
    q = q - e * (e.T @ q)
    return IdentityPlusLowRank(1.0, torch.cat([-e, rand(10, 1, seed=seed + 2, dtype=dtype)], 1), torch.cat([e, q], 1))


def _case(op: LinearOperator, owner: nn.Module | None = None, t: Tensor | None = None) -> Case:
    return Case(op, op if owner is None else owner, t)


def _pinv_case(source: LinearOperator) -> Case:
    return Case(source.pinv(), source)


def _time_case(dtype: torch.dtype, seed: int) -> Case:
    A = _time_op(dtype, seed)
    return Case(A, A, torch.tensor(TIMES, dtype=dtype))


def _time_at_case(dtype: torch.dtype, seed: int) -> Case:
    A = _time_op(dtype, seed)
    return Case(A.at(0.3), A)


FACTORIES: dict[str, Callable[[torch.dtype, int], Case]] = {
    "dense": lambda dt, s: _case(Dense(rand(7, 5, seed=s, dtype=dt))),
    "lowrank": lambda dt, s: _case(_lowrank(dt, s)),
    "lowrank_deficient": lambda dt, s: _case(_deficient_lowrank(dt, s)),
    "iplr": lambda dt, s: _case(_iplr(dt, s, trainable=True)),
    "iplr_b0": lambda dt, s: _case(_iplr(dt, s, b=0.0)),
    "iplr_singular": lambda dt, s: _case(_singular_iplr(dt, s)),
    "time_at": _time_at_case,
    "time_t": _time_case,
    "projector_sym": lambda dt, s: _case(_projector(dt, s, True)),
    "projector_oblique": lambda dt, s: _case(_projector(dt, s, False)),
    "depthwise_k4": lambda dt, s: _case(_conv(dt, s)),
    "depthwise_k3": lambda dt, s: _case(_conv(dt, s, shape=(2, 4, 3), k=3)),
    "product": lambda dt, s: _case(Dense(rand(7, 6, seed=s, dtype=dt)) @ _lowrank(dt, s, 6, 5, 2)),
    "sum": lambda dt, s: _case(Dense(rand(6, 6, seed=s, dtype=dt)) + _projector(dt, s, True, d=6, k=2)),
    "scaled": lambda dt, s: _case(-1.7 * Dense(rand(5, 7, seed=s, dtype=dt))),
    "transposed": lambda dt, s: _case(_lowrank(dt, s).T),
    "transposed_conv": lambda dt, s: _case(_conv(dt, s).T),
    "pinv_dense": lambda dt, s: _pinv_case(Dense(rand(7, 5, seed=s, dtype=dt))),
    "pinv_lowrank": lambda dt, s: _pinv_case(_lowrank(dt, s)),
    "pinv_iplr": lambda dt, s: _pinv_case(_iplr(dt, s, trainable=True)),
    "pinv_projector_oblique": lambda dt, s: _pinv_case(_projector(dt, s, False)),
    "pinv_scaled": lambda dt, s: _pinv_case(2.5 * Dense(rand(5, 7, seed=s, dtype=dt))),
}
ALL = sorted(FACTORIES)
MATRIX = [name for name in ALL if name != "time_t"]  # cases with one matrix (pinv, svd, materialize)
# cases whose operator depends on trainable parameters; the rest are made of fixed buffers
TRAINABLE = [name for name in ALL if name not in ("lowrank_deficient", "iplr_b0", "iplr_singular")]
PENROSE = MATRIX + ["zero"]  # MATRIX holds singular operators too (lowrank_deficient, iplr_b0, iplr_singular)


def make(name: str, dtype: torch.dtype = F64, seed: int = 0) -> Case:
    return FACTORIES[name](dtype, seed)


def apply_dense(dense: Tensor, z: Tensor) -> Tensor:
    return z @ dense.T if dense.dim() == 2 else torch.einsum("bmn,bn->bm", dense, z)


# ----------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ALL)
def test_apply_matches_dense_matrix(name: str, dtype: torch.dtype):
    case = make(name, dtype)
    m, n = case.op.shape
    z, y = rand(BATCH, n, seed=10, dtype=dtype), rand(BATCH, m, seed=11, dtype=dtype)
    with torch.no_grad():
        dense = case.dense()
        Az, ATy = case.apply(z), case.apply_T(y)
    assert Az.shape == (BATCH, m) and ATy.shape == (BATCH, n)
    assert Az.dtype == dtype and ATy.dtype == dtype
    assert_close_rel(Az, apply_dense(dense, z), TOL[dtype])
    assert_close_rel(ATy, apply_dense(dense.transpose(-1, -2), y), TOL[dtype])


@pytest.mark.parametrize("name", MATRIX)
def test_materialize_agrees_with_generic_fallback(name: str):
    """A structured `materialize` equals the matrix the operator applies to the basis vectors."""
    op = make(name).op
    with torch.no_grad():
        assert_close_rel(op.materialize(), LinearOperator.materialize(op), 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ALL)
def test_adjoint_identity(name: str, dtype: torch.dtype):
    """<A z, y> = <z, A^T y> sample by sample."""
    case = make(name, dtype)
    m, n = case.op.shape
    z, y = rand(BATCH, n, seed=12, dtype=dtype), rand(BATCH, m, seed=13, dtype=dtype)
    with torch.no_grad():
        lhs = (case.apply(z) * y).sum(1)
        rhs = (z * case.apply_T(y)).sum(1)
        scale = case.apply(z).norm(dim=1) * y.norm(dim=1) + z.norm(dim=1) * case.apply_T(y).norm(dim=1)
    assert ((lhs - rhs).abs() <= TOL[dtype] * scale).all()


def _penrose_operator(name: str) -> tuple[LinearOperator, LinearOperator]:
    """(A, A^+) for a contract case, or for the zero map."""
    A = Scaled(Dense(rand(4, 6, seed=0)), 0.0) if name == "zero" else make(name).op
    return A, A.pinv()


@pytest.mark.parametrize("name", PENROSE)
def test_pinv_penrose_identities(name: str):
    A_op, X_op = _penrose_operator(name)
    with torch.no_grad():
        A, X = A_op.materialize().detach(), X_op.materialize().detach()
    assert X.shape == A.T.shape and X_op.shape == (A_op.shape[1], A_op.shape[0])
    tol = 1e-10
    for lhs, rhs in ((A @ X @ A, A), (X @ A @ X, X)):
        assert rel_err(lhs, rhs) <= tol
    for S in (A @ X, X @ A):
        assert torch.linalg.norm(S - S.T) <= tol * max(float(torch.linalg.norm(S)), 1.0)


def test_pinv_of_singular_operators_matches_dense_pinv():
    for name in ("lowrank_deficient", "iplr_b0", "iplr_singular"):
        A, X = _penrose_operator(name)
        with torch.no_grad():
            assert_close_rel(X.materialize(), torch.linalg.pinv(A.materialize()), 1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", MATRIX)
def test_svd_reconstructs_with_orthonormal_vectors(name: str, dtype: torch.dtype):
    op = make(name, dtype).op
    tol = 1e-10 if dtype == F64 else 1e-5
    with torch.no_grad():
        M = op.materialize()
        U, S, V = op.svd()
        assert U.shape[0] == M.shape[0] and V.shape[0] == M.shape[1] and U.shape[1] == S.numel() == V.shape[1]
        assert (S >= 0).all() and (S[:-1] >= S[1:]).all()
        assert_close_rel((U * S) @ V.T, M, tol)
        eye = torch.eye(S.numel(), dtype=dtype)
        assert (U.T @ U - eye).abs().max() <= tol and (V.T @ V - eye).abs().max() <= tol
        k = 2
        Uk, Sk, Vk = op.svd(k)
        assert Sk.shape == (k,) and Uk.shape == (M.shape[0], k) and Vk.shape == (M.shape[1], k)
        assert_close_rel(Sk, torch.linalg.svdvals(M)[:k], tol)


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradients_reach_every_trainable_parameter(name: str):
    case = make(name)
    params = [p for p in case.owner.parameters() if p.requires_grad]
    assert params, f"{name}: the case should depend on trainable parameters"
    m, n = case.op.shape
    z, w = rand(BATCH, n, seed=14), rand(BATCH, m, seed=15)
    loss = (case.apply(z) * w).sum() + (case.apply_T(w) * z).sum()
    loss.backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0


@pytest.mark.parametrize("name", ALL)
def test_save_load_is_bit_exact(name: str, tmp_path):
    case = make(name, seed=0)
    path = save_weights(case.op, tmp_path / "op.safetensors")
    other = make(name, seed=1)
    load_weights(other.op, path)
    for (k1, t1), (k2, t2) in zip(case.op.state_dict().items(), other.op.state_dict().items()):
        assert k1 == k2 and t1.dtype == t2.dtype and torch.equal(t1, t2), k1
    z = rand(BATCH, case.op.shape[1], seed=16)
    with torch.no_grad():
        assert torch.equal(case.apply(z), other.apply(z))


@pytest.mark.parametrize("name", ALL)
def test_bad_input_shape_is_a_clear_error(name: str):
    case = make(name)
    m, n = case.op.shape
    with pytest.raises(ValueError, match=rf"\[B, {n}\].*\({BATCH}, {n + 1}\)"):
        case.apply(rand(BATCH, n + 1, seed=0))
    with pytest.raises(ValueError, match=rf"\[B, {m}\]"):
        case.apply_T(rand(BATCH, m + 1, seed=0))
    with pytest.raises(ValueError, match=rf"\[B, {n}\]"):
        case.apply(rand(n, seed=0))


@pytest.mark.parametrize("name", ALL)
def test_repr_shows_shape(name: str):
    op = make(name).op
    m, n = op.shape
    assert f"shape=({m}, {n})" in repr(op)
    if hasattr(op, "rank"):
        assert f"rank={op.rank}" in repr(op)


# ----------------------------------------------------------------------------------------------
# Algebra
# ----------------------------------------------------------------------------------------------


def test_mismatched_shapes_name_both_shapes():
    A, B = Dense(rand(3, 4, seed=0)), Dense(rand(5, 6, seed=1))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        A @ B
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        A + B
    fixed = Dense(rand(3, 4, seed=0), trainable=False), Dense(rand(5, 6, seed=1), trainable=False)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        fixed[0] @ fixed[1]
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(8, 8\)"):
        _iplr(F64, 0) @ _iplr(F64, 0, d=8)
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(8, 8\)"):
        _iplr(F64, 0) + _iplr(F64, 0, d=8)


def test_operands_with_parameters_compose_lazily_and_fixed_ones_structurally():
    A, B = Dense(rand(4, 4, seed=0)), Dense(rand(4, 4, seed=1))
    assert isinstance(A @ B, Product) and isinstance(A + B, Sum) and isinstance(2.0 * A, Scaled)
    assert isinstance(A.T, Transposed) and A.T.T is A
    fA, fB = Dense(A.W.detach(), trainable=False), Dense(B.W.detach(), trainable=False)
    for lazy, structured in ((A @ B, fA @ fB), (A + B, fA + fB), (A * 2.0, fA * 2.0), (A - B, fA - fB)):
        assert isinstance(structured, Dense)
        with torch.no_grad():
            assert_close_rel(structured.materialize(), lazy.materialize(), 1e-15)
    with torch.no_grad():
        assert_close_rel((A @ B).T.materialize(), (A.W @ B.W).T, 1e-15)
        assert_close_rel((-A).materialize(), -A.W, 0.0)


def test_lazy_composite_follows_parameter_updates():
    A, B = Dense(rand(4, 4, seed=0)), Dense(rand(4, 4, seed=1))
    C = A @ B
    with torch.no_grad():
        A.W.mul_(2.0)
        assert_close_rel(C.materialize(), A.W @ B.W, 1e-15)


def test_only_scalars_scale_and_only_operators_compose():
    A = Dense(rand(4, 4, seed=0))
    with pytest.raises(TypeError):
        A * A
    with pytest.raises(TypeError):
        A @ torch.eye(4, dtype=F64)
    with pytest.raises(TypeError):
        A + 1.0
    s = torch.tensor(0.5, dtype=F64, requires_grad=True)
    (s * A).apply(rand(2, 4, seed=1)).sum().backward()
    assert s.grad is not None and s.grad != 0


def test_scaled_by_zero_has_zero_pseudo_inverse():
    A = Scaled(Dense(rand(3, 5, seed=0)), 0.0)
    with torch.no_grad():
        X = A.pinv().materialize()
    assert X.shape == (5, 3) and torch.equal(X, torch.zeros(5, 3, dtype=F64))


# ----------------------------------------------------------------------------------------------
# Dense and LowRank
# ----------------------------------------------------------------------------------------------


def test_dense_initialisations():
    assert torch.equal(Dense((3, 5)).W.detach(), torch.eye(3, 5))
    W = Dense((200, 100), init="randn", dtype=F64, generator=torch.Generator().manual_seed(0)).W
    assert W.dtype == F64 and 0.8 < float(W.detach().std() * 100**0.5) < 1.2
    for bad in ((3,), (0, 4), "3x4"):
        with pytest.raises(ValueError, match="shape"):
            Dense(bad)
    with pytest.raises(ValueError, match="init"):
        Dense((3, 3), init="zeros")
    with pytest.raises(ValueError, match=r"\[m, n\].*\(4,\)"):
        Dense(torch.zeros(4))


def test_lowrank_random_and_factor_checks():
    A1, A2 = (LowRank.random(20, 30, 4, dtype=F64, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert A1.shape == (20, 30) and A1.rank == 4 and A1.U.dtype == F64 and torch.equal(A1.U, A2.U)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)"):
        LowRank(torch.zeros(5, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="dtype"):
        LowRank(torch.zeros(5, 3), torch.zeros(4, 3, dtype=F64))


def test_lowrank_pinv_drops_dependent_columns():
    A = _deficient_lowrank(F64, 0)
    assert A.pinv().rank == 3 and A.svd()[1].numel() == 4


def test_lowrank_structured_algebra():
    L1 = LowRank(rand(8, 2, seed=0), rand(6, 2, seed=1), trainable=False)
    L2 = LowRank(rand(6, 3, seed=2), rand(5, 3, seed=3), trainable=False)
    L3 = LowRank(rand(8, 3, seed=4), rand(6, 3, seed=5), trainable=False)
    for result, expected, rank in ((L1 @ L2, L1.U @ L1.V.T @ L2.U @ L2.V.T, 2),
                                   (L3 @ L2, L3.U @ L3.V.T @ L2.U @ L2.V.T, 3),
                                   (L1 + L3, L1.materialize() + L3.materialize(), 5),
                                   (-0.5 * L1, -0.5 * L1.materialize(), 2)):
        assert isinstance(result, LowRank) and result.rank == rank
        assert_close_rel(result.materialize(), expected, 1e-14)


# ----------------------------------------------------------------------------------------------
# IdentityPlusLowRank: the collapsed sampler matrix
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_iplr_products_sums_and_multiples_stay_in_form(dtype: torch.dtype):
    X, Y = _iplr(dtype, 0, b=0.8, d=16, k=2), _iplr(dtype, 5, b=-1.3, d=16, k=3)
    L = LowRank(rand(16, 2, seed=9, dtype=dtype), rand(16, 2, seed=10, dtype=dtype), trainable=False)
    Xd, Yd, Ld = X.materialize(), Y.materialize(), L.materialize()
    tol = TOL[dtype]
    for result, expected, kind in (
        (X @ Y, Xd @ Yd, IdentityPlusLowRank), (Y @ X, Yd @ Xd, IdentityPlusLowRank),
        (X + Y, Xd + Yd, IdentityPlusLowRank), (2.5 * X, 2.5 * Xd, IdentityPlusLowRank),
        (X * -0.5, -0.5 * Xd, IdentityPlusLowRank), (torch.tensor(3.0, dtype=dtype) * X, 3 * Xd, IdentityPlusLowRank),
        (X - Y, Xd - Yd, IdentityPlusLowRank), (X + L, Xd + Ld, IdentityPlusLowRank),
        (L + X, Xd + Ld, IdentityPlusLowRank), (X @ L, Xd @ Ld, LowRank), (L @ X, Ld @ Xd, LowRank),
    ):
        assert type(result) is kind
        assert result.P.dtype == dtype if kind is IdentityPlusLowRank else result.U.dtype == dtype
        assert_close_rel(result.materialize(), expected, tol)
    assert (X @ Y).rank == 5 and (X + Y).rank == 5


def test_iplr_chain_of_50_products_matches_dense():
    d, k = 24, 2
    B = IdentityPlusLowRank.identity(d)
    dense = torch.eye(d, dtype=F64)
    for step in range(50):
        M = _iplr(F64, 100 + 2 * step, b=1.0 + 0.1 * float(rand(1, seed=step)), d=d, k=k)
        B, dense = M @ B, M.materialize() @ dense
    assert isinstance(B, IdentityPlusLowRank) and B.rank == 50 * k
    assert_close_rel(B.materialize(), dense, 1e-12)
    C = B.compress()
    assert C.rank <= d
    assert_close_rel(C.materialize(), dense, 1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_iplr_woodbury_inverse(dtype: torch.dtype):
    A = _iplr(dtype, 0, b=0.7, d=16, k=4)
    inv = A.inverse()
    assert isinstance(inv, IdentityPlusLowRank) and inv.rank == 4
    assert_close_rel(inv.materialize(), torch.linalg.inv(A.materialize()), 10 * TOL[dtype])
    assert_close_rel((inv @ A).materialize(), torch.eye(16, dtype=dtype), 10 * TOL[dtype])
    assert isinstance(A.pinv(), IdentityPlusLowRank)


def test_iplr_inverse_of_singular_operators_is_a_clear_error():
    with pytest.raises(ValueError, match="b = 0"):
        _iplr(F64, 0, b=0.0).inverse()
    with pytest.raises(ValueError, match="singular"):
        _singular_iplr(F64, 0).inverse()
    assert isinstance(_singular_iplr(F64, 0).pinv(), IdentityPlusLowRank)


def test_iplr_compress_keeps_the_operator_and_drops_redundant_rank():
    X = _iplr(F64, 0, b=0.9, d=20, k=3)
    doubled = X + X
    assert doubled.rank == 6
    compressed = doubled.compress()
    assert compressed.rank == 3
    assert_close_rel(compressed.materialize(), doubled.materialize(), 1e-10)
    P = rand(20, 2, seed=3) @ rand(2, 5, seed=4)  # five columns spanning a plane
    Y = IdentityPlusLowRank(1.5, P, rand(20, 5, seed=5))
    assert Y.compress().rank == 2
    assert_close_rel(Y.compress().materialize(), Y.materialize(), 1e-10)
    assert (X - X).compress().rank == 0


def test_iplr_identity_dtype_and_checks():
    I = IdentityPlusLowRank.identity(5, b=2.0)
    assert I.P.dtype == F64 and I.rank == 0 and torch.equal(I.materialize(), 2 * torch.eye(5, dtype=F64))
    I32 = _iplr(F64, 0).to(F32)
    assert I32.b.dtype == F32 and I32.P.dtype == F32 and I32.apply(rand(2, 10, seed=0, dtype=F32)).dtype == F32
    assert torch.equal(I.inverse().materialize(), 0.5 * torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(6, 2\)"):
        IdentityPlusLowRank(1.0, torch.zeros(5, 2), torch.zeros(6, 2))
    with pytest.raises(ValueError, match="real number"):
        IdentityPlusLowRank(torch.ones(2), torch.zeros(5, 2), torch.zeros(5, 2))


def test_iplr_load_resizes_a_cached_operator(tmp_path):
    """A model's collapsed sampler starts as the identity (rank 0) and loads a saved rank-k one."""
    saved = _iplr(F64, 0, b=0.3, d=10, k=7)
    path = save_weights(saved, tmp_path / "B.safetensors")
    fresh = load_weights(IdentityPlusLowRank.identity(10), path)
    assert fresh.rank == 7 and torch.equal(fresh.materialize(), saved.materialize())


# ----------------------------------------------------------------------------------------------
# TimeLowRank
# ----------------------------------------------------------------------------------------------


def test_time_lowrank_runs_the_mlp_once_per_distinct_t():
    A = _time_op(F64, 0)
    rows = []
    A.mlp.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    t = torch.tensor(TIMES, dtype=F64)
    z = rand(BATCH, 12, seed=1)
    Az = A.apply(z, t)
    assert rows == [3]
    ATz = A.apply_transpose(z, t)
    assert rows == [3, 3]
    for b in range(BATCH):
        snapshot = A.at(float(t[b]))
        assert_close_rel(Az[b:b + 1], snapshot.apply(z[b:b + 1]), 1e-12)
        assert_close_rel(ATz[b:b + 1], snapshot.apply_transpose(z[b:b + 1]), 1e-12)


def test_time_lowrank_shared_t_and_factors():
    A = _time_op(F64, 0)
    z = rand(4, 12, seed=1)
    expected = A.at(0.25).apply(z)
    for t in (0.25, torch.tensor(0.25, dtype=F64), torch.full((4,), 0.25, dtype=F64)):
        assert_close_rel(A.apply(z, t), expected, 1e-14)
    U, V = A.factors(torch.tensor([0.25, 0.75], dtype=F64))
    assert U.shape == V.shape == (2, 12, 3)
    assert_close_rel(U[1] @ V[1].T, A.materialize(0.75), 1e-14)
    assert A.shape == (12, 12) and A.rank == 3


def test_time_lowrank_needs_t():
    A = _time_op(F64, 0)
    z = rand(4, 12, seed=1)
    for call in (lambda: A.apply(z), lambda: A.apply_transpose(z), lambda: A(z), A.materialize, A.pinv):
        with pytest.raises(TypeError, match="needs the time t"):
            call()
    with pytest.raises(ValueError, match=r"\[B\]=4.*\(3,\)"):
        A.apply(z, torch.rand(3, dtype=F64))
    with pytest.raises(ValueError, match="positive int rank"):
        TimeLowRank(12, 0)


def test_time_lowrank_output_has_unit_scale_at_initialisation():
    torch.manual_seed(0)
    A = TimeLowRank(64, 4, embed_dim=16, hidden=32)
    z = torch.randn(256, 64)
    with torch.no_grad():
        rms = [float(A.apply(z, t).pow(2).mean().sqrt()) for t in (0.0, 0.5, 0.9)]
    assert all(0.3 < r < 3.0 for r in rms), rms


def test_sinusoidal_embedding():
    t = torch.tensor([0.0, 0.3, 0.7], dtype=F64)
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == F64
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=F64))
    assert (emb[1] - emb[2]).abs().max() > 0.1
    odd = sinusoidal_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, :6], sinusoidal_embedding(t, 6)) and (odd[:, 6] == 0).all()


# ----------------------------------------------------------------------------------------------
# Projector
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "oblique"])
@pytest.mark.parametrize("seed", range(4))
def test_projector_is_idempotent_for_any_parameters(symmetric: bool, seed: int):
    torch.manual_seed(seed)
    P = perturb(Projector(16, 5, symmetric=symmetric).double(), 1.0, seed)
    with torch.no_grad():
        M = P.materialize()
        z = rand(3, 16, seed=seed)
        assert_close_rel(M @ M, M, 1e-12)
        assert_close_rel(P.apply(P.apply(z)), P.apply(z), 1e-12)
        assert abs(float(torch.linalg.matrix_rank(M)) - 5) == 0
        Q = P.basis()
        assert_close_rel(Q.T @ Q, torch.eye(5, dtype=F64), 1e-12)
        assert_close_rel(M @ Q, Q, 1e-12)  # P fixes its range: P q = q
        if symmetric:
            assert_close_rel(M, M.T, 1e-15)
            assert P.pinv() is P
            U, S, V = P.svd()
            assert torch.equal(S, torch.ones(5, dtype=F64))
        else:
            assert rel_err(M, M.T) > 1e-3  # genuinely oblique once U and V differ


def test_projector_checks_rank():
    for d, k in ((4, 0), (4, 5)):
        with pytest.raises(ValueError, match="1 <= k <= d"):
            Projector(d, k)


# ----------------------------------------------------------------------------------------------
# DepthwiseConv
# ----------------------------------------------------------------------------------------------


def naive_depthwise(z: Tensor, kernel: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """out[c, i, j] = sum_{u, v} kernel[c, u, v] * x[c, i + u - p, j + v - p] with zeros outside."""
    C, H, W = shape
    k = kernel.shape[-1]
    p = (k - 1) // 2
    x = z.reshape(-1, C, H, W)
    out = torch.zeros_like(x)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                for u in range(k):
                    for v in range(k):
                        if 0 <= i + u - p < H and 0 <= j + v - p < W:
                            out[:, c, i, j] += kernel[c, 0, u, v] * x[:, c, i + u - p, j + v - p]
    return out.reshape(z.shape[0], -1)


@pytest.mark.parametrize("k", [3, 4])
def test_depthwise_matches_naive_convolution(k: int):
    shape = (2, 4, 5)
    A = _conv(F64, 0, shape=shape, k=k)
    z = rand(2, 40, seed=1)
    with torch.no_grad():
        assert_close_rel(A.apply(z), naive_depthwise(z, A.kernel, shape), 1e-13)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_depthwise_starts_as_identity(k: int):
    A = DepthwiseConv((3, 6, 5), kernel_size=k)
    z = torch.randn(2, 90)
    assert torch.equal(A.apply(z), z) and torch.equal(A.apply_transpose(z), z)
    assert A.kernel.numel() == 3 * k * k


def test_depthwise_fixed_kernels_add_and_scale_as_kernels():
    A1 = DepthwiseConv.from_kernel((2, 3, 4), _conv(F64, 0).kernel.detach())
    A2 = DepthwiseConv.from_kernel((2, 3, 4), _conv(F64, 1).kernel.detach())
    mix = 0.3 * A1 + 0.7 * A2
    assert isinstance(mix, DepthwiseConv) and not list(mix.parameters())
    assert_close_rel(mix.materialize(), 0.3 * A1.materialize() + 0.7 * A2.materialize(), 1e-14)
    assert isinstance(A1 @ A2, Product)
    assert_close_rel((A1 @ A2).materialize(), A1.materialize() @ A2.materialize(), 1e-14)


def test_depthwise_checks():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        DepthwiseConv((3, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        DepthwiseConv((3, 4, 4), kernel_size=0)
    with pytest.raises(ValueError, match=r"\[C=2, 1, k, k\]"):
        DepthwiseConv.from_kernel((2, 4, 4), torch.zeros(3, 1, 3, 3))
