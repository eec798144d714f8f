"""Building the one-step operator B: the low-rank way against the dense way of the reference.

T steps of the latent sampler collapse into one matrix `B = M_{T-1} ... M_0` (method.md §2).
The reference materialises every step matrix as a dense `d x d` matrix and multiplies them:
T products of O(d^3) each, and a dense B of d^2 numbers. Every step is `a I + (rank r or 3r)`,
so `linearizer.onestep.collapse` keeps B as `b I + P Q^T` instead (rank <= 3 r T for RK4).

For each d and method this bench times both builds on a random (untrained) `TimeLowRank` A(t),
records their peak memory and the size of the B they produce, and checks both against the
float64 vector sampler `integrate` on a few random codes (relative error of `B z`). Where the
library itself keeps B dense (rank >= d/2 and d <= `MAX_DENSE_DIM`, e.g. RK4 at d = 1024), its
dense build is measured too: the same steps applied to a dense B as low-rank updates,
O(T d^2 r) instead of the reference's O(T d^3).

The dense build at large d (above `--dense-full-max`) is timed on `--dense-steps` of the T
products only and extrapolated linearly: every product is the same `d x d x d` matrix product,
so the time is (factor and step set-up) + T / n * (n timed products). Its peak memory is that of
the timed steps, which is already the steady state (B, one step matrix and their product).
Such rows are marked "extrapolated", and their exactness is checked on the steps they ran.

Run:
    python -m bench.bench_collapse                            # d = 1024 and 12288, Euler and RK4
    python -m bench.bench_collapse --dims 1024 --dtype float64
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from linearizer.onestep.collapse import MAX_DENSE_DIM, collapse, step_operators
from linearizer.onestep.samplers import TimeGrid, integrate, make_grid
from linearizer.operators import IdentityPlusLowRank, TimeLowRank

from .common import (base_parser, check_device, fmt_bytes, fmt_ratio, fmt_seconds, machine_line, measure,
                     rel_err, table, warm_up)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: arguments of the short run of `python -m bench.run_all --quick`.
QUICK_ARGS = ["--dims", "1024", "--steps", "20"]


@dataclass
class Build:
    """One way of building B, measured."""

    form: str
    seconds: float
    cpu_seconds: float
    peak_bytes: int
    size_bytes: int
    rank: int | str
    err_vs_ode: float
    note: str


def _clocks() -> Tensor:
    return torch.tensor([time.perf_counter(), time.process_time()], dtype=torch.float64)


def dense_chain(A: TimeLowRank, grid: TimeGrid, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's build: materialise each step matrix and multiply, for the first n steps.

    Returns:
        (B_n [d, d] = M_{n-1} ... M_0, the (wall, CPU) seconds of the factor and step set-up,
        the (wall, CPU) seconds of the n dense products).
    """
    start = _clocks()
    with torch.no_grad():
        steps = step_operators(A, grid, dtype)
        ref = steps[0].P
        if ref.is_cuda:
            torch.cuda.synchronize(ref.device)
        mid = _clocks()
        B = torch.eye(ref.shape[0], dtype=dtype, device=ref.device)
        for M in steps[:n]:
            B = M.materialize() @ B
        if ref.is_cuda:
            torch.cuda.synchronize(ref.device)
    return B, mid - start, _clocks() - mid


def lowrank_chain(A: TimeLowRank, grid: TimeGrid, n: int, dtype: torch.dtype) -> IdentityPlusLowRank:
    """`M_{n-1} ... M_0` in the `b I + P Q^T` form (the first n steps of `collapse`)."""
    with torch.no_grad():
        steps = step_operators(A, grid, dtype)
        B = steps[0]
        for M in steps[1:n]:
            B = M @ B
    return B


def stepped(A64: TimeLowRank, grid: TimeGrid, n: int, z: Tensor) -> Tensor:
    """The float64 codes after the first n steps, applied one step matrix at a time."""
    for M in step_operators(A64, grid, torch.float64)[:n]:
        z = M.apply(z)
    return z


def bench_one(d: int, method: str, args, device: torch.device) -> list[Build]:
    """Measure the builds of B for one d and method: low-rank, the library's dense form when it
    would choose it at this d, and the reference's dense chain (last)."""
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    A = TimeLowRank(d, args.rank).to(device=device, dtype=dtype)
    A64 = copy.deepcopy(A).double()
    grid = make_grid(method, args.steps)
    itemsize = torch.finfo(dtype).bits // 8
    z = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    with torch.no_grad():
        z_ode = integrate(A64, z, method, args.steps)

    low = measure(lambda: collapse(A, method, args.steps, dtype=dtype, dense=False),
                  args.repeats, args.budget, device)
    B = low.result
    with torch.no_grad():
        err_low = rel_err(B.apply(z.to(dtype)), z_ode)
    builds = [Build("low-rank b I + P Q^T", low.seconds, low.cpu_seconds, low.peak_bytes,
                    (2 * d * B.rank + 1) * itemsize, B.rank, err_low, f"runs={low.runs}")]
    if 2 * B.rank >= d and d <= MAX_DENSE_DIM:
        # the library's own choice here: a dense B, accumulated by O(d^2 r) low-rank step updates
        auto = measure(lambda: collapse(A, method, args.steps, dtype=dtype), args.repeats, args.budget, device)
        with torch.no_grad():
            err_auto = rel_err(auto.result.apply(z.to(dtype)), z_ode)
        builds.append(Build("dense, by low-rank step updates (library's choice)", auto.seconds, auto.cpu_seconds,
                            auto.peak_bytes, d * d * itemsize, d, err_auto, f"runs={auto.runs}"))

    T = args.steps
    n = T if d <= args.dense_full_max else min(args.dense_steps, T)
    dense = measure(lambda: dense_chain(A, grid, n, dtype), 1 if n < T else args.repeats, args.budget, device)
    B_n, set_up, products = dense.result
    # linear extrapolation: the set-up once, then T products that all cost the same
    seconds, cpu_seconds = (set_up + products * T / n).tolist() if n < T else (dense.seconds, dense.cpu_seconds)
    with torch.no_grad():
        if n == T:
            err_dense, note = rel_err(z.to(dtype) @ B_n.T, z_ode), f"runs={dense.runs}"
        else:
            z_n = stepped(A64, grid, n, z)
            err_lr_n = rel_err(lowrank_chain(A, grid, n, dtype).apply(z.to(dtype)), z_n)
            err_dense = rel_err(z.to(dtype) @ B_n.T, z_n)
            note = (f"extrapolated x{T / n:.0f} from {n} of {T} products; error after those {n} steps "
                    f"(low-rank, same {n} steps: {err_lr_n:.1e})")
    builds.append(Build("dense d x d products (reference)", seconds, cpu_seconds, dense.peak_bytes,
                        d * d * itemsize, d, err_dense, note))
    return builds


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 12288], help="dimensions d (default: 1024 12288)")
    parser.add_argument("--methods", nargs="+", default=["euler", "rk4"], choices=["euler", "rk4"])
    parser.add_argument("--steps", type=int, default=100, help="sampler steps T (default: 100)")
    parser.add_argument("--rank", type=int, default=8, help="rank r of A(t) (default: 8)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of both builds (default: float32, the reference's)")
    parser.add_argument("--dense-full-max", type=int, default=4096,
                        help="largest d whose dense build runs all T products (default: 4096)")
    parser.add_argument("--dense-steps", type=int, default=1,
                        help="products timed for the dense build above --dense-full-max (default: 1)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.dense_steps < 1 or args.rank < 1 or min(args.dims) < 1:
        parser.error(f"need --steps >= 2, --dense-steps >= 1, --rank >= 1 and positive --dims, got "
                     f"steps={args.steps}, dense-steps={args.dense_steps}, rank={args.rank}, dims={args.dims}")
    device = check_device(args.device)
    print(machine_line(device))
    print(f"# collapse of T={args.steps} steps, r={args.rank}, {args.dtype}, random TimeLowRank A(t); "
          f"error: relative error of B z against the float64 vector sampler on 4 random codes", flush=True)
    warm_up(device)

    rows, ratios = [], []
    for d in args.dims:
        for method in args.methods:
            builds = bench_one(d, method, args, device)
            ref = builds[-1]
            for b in builds:
                rows.append([d, method, b.form, b.rank, fmt_seconds(b.seconds), fmt_seconds(b.cpu_seconds),
                             fmt_bytes(b.peak_bytes),
                             fmt_bytes(b.size_bytes), f"{b.err_vs_ode:.1e}", b.note])
            for b in builds[:-1]:
                ratios.append([d, method, b.form, fmt_ratio(ref.seconds / b.seconds),
                               fmt_ratio(ref.cpu_seconds / b.cpu_seconds),
                               fmt_ratio(ref.peak_bytes / max(b.peak_bytes, 1)), fmt_ratio(ref.size_bytes / b.size_bytes)])
            print(f"# done d={d} {method}", flush=True)
    print()
    print(table(["d", "method", "B built as", "rank", "build time", "CPU time", "build peak mem", "size of B",
                 "rel. error", "note"], rows))
    print()
    print("# reference / each build: how many times faster and smaller (goal at d = 12288: >= 100x, >= 10x)")
    print(table(["d", "method", "B built as", "time", "CPU time", "peak mem", "size of B"], ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
