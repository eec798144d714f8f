"""Building the one-step operator B: the low-rank way against the dense ways.

T steps of the latent sampler collapse into one matrix `B = M_{T-1} ... M_0` (method.md §2).
The reference materialises every step matrix as a dense `d x d` matrix and multiplies them:
T products of O(d^3) each, and a dense B of d^2 numbers. Every step is `a I + (rank r or 3r)`,
so `linearizer.onestep.collapse` keeps B as `b I + P Q^T` instead (rank <= 3 r T for RK4).

For each d and method this bench times three builds on a random (untrained) `TimeLowRank` A(t),
records their peak memory and the size of the B they produce, and checks each against the
float64 vector sampler `integrate` on a few random codes (relative error of `B z`):

1. low-rank: `collapse(..., dense=False)`, the `b I + P Q^T` form;
2. dense by low-rank step updates: `collapse(..., dense=True)`, the library's own dense build
   (each step applied to a dense B in place, `B <- a B + P (Q^T B)`, O(d^2 r) per step). It is
   the best dense way, and what the library chooses by itself where the exact rank would reach
   d/2 and d <= `MAX_DENSE_DIM` (e.g. both methods at d = 1024). Measured for every d up to
   `--library-dense-max`, always timed in full;
3. the reference's dense chain of T `d x d` products, O(T d^3) (last).

The reference's chain at large d (above `--dense-full-max`) is timed on `--dense-steps` of the T
products only and extrapolated linearly: every product is the same `d x d x d` matrix product,
so the time is (factor and step set-up) + T / n * (n timed products). Its peak memory is that of
the timed steps, which is already the steady state (B, one step matrix and their product).
Such rows are marked "extrapolated", and their exactness is checked on the steps they ran.

Run:
    python -m bench.bench_collapse                            # d = 1024 and 12288, Euler and RK4
    python -m bench.bench_collapse --json docs/results/collapse_cpu.json
    python -m bench.bench_collapse --dims 1024 --dtype float64
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from linearizer.onestep.collapse import MAX_DENSE_DIM, collapse, step_operators
from linearizer.onestep.samplers import TimeGrid, integrate, make_grid
from linearizer.operators import IdentityPlusLowRank, TimeLowRank

from .common import (add_json_flag, base_parser, check_device, fmt_bytes, fmt_ratio, fmt_seconds, machine_line,
                     measure, rel_err, table, warm_up, write_results)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: arguments of the short run of `python -m bench.run_all --quick`.
QUICK_ARGS = ["--dims", "1024", "--steps", "20"]
#: row labels, also the keys of the ratio tables.
LOW_RANK, DENSE_UPDATES, REFERENCE = ("low-rank b I + P Q^T", "dense, by low-rank step updates (library)",
                                      "dense d x d products (reference)")


@dataclass
class Build:
    """One way of building B, measured.

    Attributes:
        form: which build (`LOW_RANK`, `DENSE_UPDATES` or `REFERENCE`).
        seconds, cpu_seconds: wall and CPU time of the build (extrapolated where `note` says so).
        peak_bytes: peak tensor memory of the build.
        size_bytes: size of the B it produces.
        rank: rank of the low-rank part, or d for a dense B.
        err_vs_ode: relative error of `B z` against the float64 vector sampler.
        note: runs measured, whether the library picks this form itself, or how it was extrapolated.
    """

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
    """Measure the builds of B for one d and method: low-rank, the library's dense build by
    low-rank step updates (up to `args.library_dense_max`), and the reference's dense chain (last)."""
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
    builds = [Build(LOW_RANK, low.seconds, low.cpu_seconds, low.peak_bytes,
                    (2 * d * B.rank + 1) * itemsize, B.rank, err_low, f"runs={low.runs}")]
    del low, B
    if d <= args.library_dense_max:
        chosen = 2 * builds[0].rank >= d and d <= MAX_DENSE_DIM  # what collapse(dense=None) picks
        upd = measure(lambda: collapse(A, method, args.steps, dtype=dtype, dense=True),
                      args.repeats, args.budget, device)
        with torch.no_grad():
            err_upd = rel_err(upd.result.apply(z.to(dtype)), z_ode)
        builds.append(Build(DENSE_UPDATES, upd.seconds, upd.cpu_seconds, upd.peak_bytes, d * d * itemsize, d,
                            err_upd, f"runs={upd.runs}; " + ("the library's choice at this d" if chosen
                                                             else "collapse(dense=True)")))
        del upd

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
    builds.append(Build(REFERENCE, seconds, cpu_seconds, dense.peak_bytes, d * d * itemsize, d, err_dense, note))
    return builds


def ratios(base: Build, other: Build) -> dict[str, float]:
    """How many times faster and smaller `other` is than `base`: wall, CPU, peak memory, size of B."""
    return {"wall": base.seconds / other.seconds, "cpu": base.cpu_seconds / other.cpu_seconds,
            "peak_mem": base.peak_bytes / max(other.peak_bytes, 1), "size": base.size_bytes / other.size_bytes}


def ratio_row(d: int, method: str, label: str, r: dict[str, float]) -> list:
    return [d, method, label, *(fmt_ratio(r[k]) for k in ("wall", "cpu", "peak_mem", "size"))]


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
    parser.add_argument("--library-dense-max", type=int, default=12288,
                        help="largest d whose library dense build (by low-rank step updates) is measured; "
                             "it needs about 3 d^2 floats (default: 12288)")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.dense_steps < 1 or args.rank < 1 or min(args.dims) < 1:
        parser.error(f"need --steps >= 2, --dense-steps >= 1, --rank >= 1 and positive --dims, got "
                     f"steps={args.steps}, dense-steps={args.dense_steps}, rank={args.rank}, dims={args.dims}")
    device = check_device(args.device)
    print(machine_line(device))
    print(f"# collapse of T={args.steps} steps, r={args.rank}, {args.dtype}, random TimeLowRank A(t); "
          f"error: relative error of B z against the float64 vector sampler on 4 random codes", flush=True)
    warm_up(device)

    rows, vs_ref, vs_dense, records = [], [], [], []
    for d in args.dims:
        for method in args.methods:
            builds = bench_one(d, method, args, device)
            by_form = {b.form: b for b in builds}
            ref = by_form[REFERENCE]
            for b in builds:
                rows.append([d, method, b.form, b.rank, fmt_seconds(b.seconds), fmt_seconds(b.cpu_seconds),
                             fmt_bytes(b.peak_bytes), fmt_bytes(b.size_bytes), f"{b.err_vs_ode:.1e}", b.note])
            record = {"d": d, "method": method, "builds": [asdict(b) for b in builds], "reference_over": {}}
            for b in builds[:-1]:
                record["reference_over"][b.form] = ratios(ref, b)
                vs_ref.append(ratio_row(d, method, b.form, record["reference_over"][b.form]))
            if DENSE_UPDATES in by_form:
                record["dense_updates_over_low_rank"] = ratios(by_form[DENSE_UPDATES], by_form[LOW_RANK])
                vs_dense.append(ratio_row(d, method, LOW_RANK, record["dense_updates_over_low_rank"]))
            records.append(record)
            print(f"# done d={d} {method}", flush=True)
    print()
    print(table(["d", "method", "B built as", "rank", "build time", "CPU time", "build peak mem", "size of B",
                 "rel. error", "note"], rows))
    header = ["d", "method", "B built as", "time", "CPU time", "peak mem", "size of B"]
    print()
    print("# reference / each build: how many times faster and smaller (goal at d = 12288: >= 100x, >= 10x)")
    print(table(header, vs_ref))
    if vs_dense:
        print()
        print("# library's dense build (by low-rank step updates) / low-rank build: the gain over the best dense way")
        print(table(header, vs_dense))
    write_results(args.json, "bench.bench_collapse", argv,
                  {"settings": {k: getattr(args, k) for k in ("steps", "rank", "dtype", "dense_full_max",
                                                               "dense_steps", "repeats", "budget", "seed")},
                   "rows": records}, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
