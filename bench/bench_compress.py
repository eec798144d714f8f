"""How small the collapsed B gets under `compress_tol`, and what the compression costs in agreement.

The exact `B = b I + P Q^T` of RK4 x T has rank 3 r T (2400 at T = 100, r = 8), and every
column lies in the span of the r (2T + 1) factor vectors of the distinct times, so its exact
minimal rank is at most 1608. Stored as two `d x k` factors that is 2.6x (3.8x minimal) smaller
than a dense `d x d` matrix at d = 12288. Smaller needs a tolerance: `collapse(...,
compress_tol=tol)` keeps the singular values of the low-rank part above `tol` times the largest
(re-compressing as the product grows), which drops directions that A(t) hardly uses.

For each A(t) source and tolerance this bench builds B the library's way (float64, factored),
then reports its rank, its float32 size against dense, the CPU time of the build and the error
the cut makes: the relative error of `B_tol z` against the exact `B z` on random codes and,
for a trained model, the image-space agreement of one-step samples with 100-step RK4 stepping
(`linearizer.metrics.agreement_db`, the figure the issue sets at >= 60 dB in float32).

Sources:
- `random d`: an untrained `TimeLowRank(d, r)` (as `bench_collapse`), any d;
- `--model PATH`: the A(t) of a saved one-step model (d = its image size).

Run:
    python -m bench.bench_compress --dims 1024 12288 --tols 0 1e-8 1e-6 1e-4 1e-3
    python -m bench.bench_compress --dims --model runs/onestep_figures/onestep/model --tols 0 1e-6 1e-4 1e-3
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from linearizer.io import load_model
from linearizer.metrics import agreement_db
from linearizer.onestep.collapse import collapse
from linearizer.operators import TimeLowRank

from .common import (add_json_flag, base_parser, fmt_bytes, fmt_ratio, fmt_seconds, machine_line, rel_err, table,
                     table_records, timed_both, write_results)

#: arguments of the short run of `python -m bench.run_all --quick`.
QUICK_ARGS = ["--dims", "256", "--steps", "10", "--tols", "1e-6", "1e-3"]


def rows_for(A, d: int, source: str, tols: Sequence[float], args, model=None) -> list[list]:
    """One row per tolerance; the exact build (tol 0) first, as the reference of the errors."""
    g = torch.Generator().manual_seed(args.seed + 1)
    z = torch.randn(args.codes, d, generator=g, dtype=torch.float64)
    x0 = (torch.randn(args.images, *model.image_shape, generator=g, dtype=torch.float64)
          if model is not None else None)  # the model runs in float64 (main)
    multi = None
    if model is not None:
        with torch.no_grad():
            multi = model.sample_multistep(x0, method="rk4", steps=args.steps)
    exact = None
    rows = []
    dense_bytes = d * d * 4
    for tol in [0.0, *[t for t in tols if t > 0]]:
        wall, cpu, B = timed_both(lambda: collapse(A, "rk4", args.steps, dtype=torch.float64, compress_tol=tol,
                                                   dense=False))
        Bz = B.apply(z)
        exact = Bz if exact is None else exact
        size = (2 * d * B.rank + 1) * 4
        agreement = ""
        if model is not None:
            with torch.no_grad():
                model.build_B(method="rk4", steps=args.steps, compress_tol=tol, dense=False)
                agreement = f"{agreement_db(model.sample(x0), multi):.1f} dB"
        rows.append([source, d, "exact (0)" if tol == 0 else f"{tol:g}", B.rank, fmt_bytes(size),
                     fmt_ratio(dense_bytes / size), fmt_seconds(wall), fmt_seconds(cpu),
                     f"{rel_err(Bz, exact):.1e}", agreement])
        print(f"# {source} d={d} tol={tol:g}: rank {B.rank}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="*", default=[1024, 12288],
                        help="d of the random A(t) sources (none: only --model)")
    parser.add_argument("--model", help="a saved one-step model whose A(t) to compress too")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-8, 1e-6, 1e-4, 1e-3],
                        help="relative tolerances (the exact build is always measured first)")
    parser.add_argument("--steps", type=int, default=100, help="RK4 steps T (default: 100)")
    parser.add_argument("--rank", type=int, default=8, help="rank r of the random A(t) (default: 8)")
    parser.add_argument("--codes", type=int, default=8, help="random codes for the latent error")
    parser.add_argument("--images", type=int, default=64, help="noise images for the agreement (--model)")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rank < 1 or any(d < 1 for d in args.dims) or any(t < 0 for t in args.tols):
        parser.error("need --steps >= 1, --rank >= 1, positive --dims and non-negative --tols")
    if not args.dims and not args.model:
        parser.error("nothing to measure: give --dims or --model")
    print(machine_line("cpu"))
    print(f"# RK4 x {args.steps}, B built in float64 (factored); size = two float32 d x k factors; "
          f"error: relative error of B_tol z vs the exact B z on {args.codes} random codes", flush=True)
    rows = []
    for d in args.dims:
        torch.manual_seed(args.seed)
        A = TimeLowRank(d, args.rank).double()
        rows += rows_for(A, d, f"random r={args.rank}", args.tols, args)
    if args.model:
        model, cfg = load_model(args.model)
        model = model.double().eval()  # B is built in float64 either way; sampling in float64 isolates the cut
        rows += rows_for(model.A, model.d, f"trained ({args.model})", args.tols, args, model)
    header = ["A(t)", "d", "compress_tol", "rank k", "size of B (float32)", "smaller than dense",
              "build time", "CPU time", "rel. error vs exact", "1-step vs 100-step RK4"]
    print()
    print(table(header, rows))
    write_results(args.json, "bench.bench_compress", argv, {"rows": table_records(header, rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
