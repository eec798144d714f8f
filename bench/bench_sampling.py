"""Sampling throughput: the one-step Linearizer against multi-step sampling and a flow-matching baseline.

For one batch of noise `x0` it measures, on the default architectures (MNIST 1x32x32; untrained
weights, which cost exactly what trained ones cost):

- the two `g` passes alone, `g_x^{-1}(g_y(x0))`: the floor of any Linearizer sampler;
- the one-step Linearizer `x = g_x^{-1}(B g_y(x0))` with B cached (built once, timed apart);
- the Linearizer's T-step RK4 latent sampler (what B collapses);
- the flow-matching U-Net baseline (`linearizer.baselines`), T steps of Euler and of RK4.

Goals of the issue: one-step >= 20x faster than the T = 100 baseline, and one-step within 1.2x of
the two `g` passes.

Run:
    python -m bench.bench_sampling                     # batch 16, T = 100
    python -m bench.bench_sampling --device cuda --batch 256
    python -m bench.bench_sampling --json docs/results/sampling_cpu.json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from linearizer.baselines import FlowMatchingBaseline
from linearizer.config import ModelConfig
from linearizer.onestep import OneStepLinearizer

from .common import (add_json_flag, base_parser, check_device, fmt_bytes, fmt_ratio, fmt_seconds, machine_line,
                     measure, table, timed, warm_up, write_results)

#: arguments of the short run of `python -m bench.run_all --quick`.
QUICK_ARGS = ["--batch", "4", "--steps", "10"]


def param_count(model: torch.nn.Module) -> int:
    """Parameters, shared ones counted once (`g_x` and `g_y` are one network)."""
    return sum(p.numel() for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="noise samples per batch (default: 16)")
    parser.add_argument("--steps", type=int, default=100, help="steps T of the multi-step samplers (default: 100)")
    parser.add_argument("--B-form", default="auto", choices=["auto", "dense", "lowrank"],
                        help="form of the cached B (default: auto, the library's choice for this d)")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 2:
        parser.error(f"need --batch >= 1 and --steps >= 2, got batch={args.batch}, steps={args.steps}")
    device = check_device(args.device)
    print(machine_line(device))
    warm_up(device)

    torch.manual_seed(args.seed)
    cfg = ModelConfig()
    cfg.sampler.steps = args.steps
    linearizer = OneStepLinearizer(cfg).to(device)
    x0 = torch.randn(args.batch, *cfg.image_shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    linearizer.initialize(torch.rand_like(x0))
    linearizer.eval()
    dense = {"auto": None, "dense": True, "lowrank": False}[args.B_form]
    build_s, _ = timed(lambda: linearizer.build_B(dense=dense), device)
    d = linearizer.d
    form = f"dense {d}x{d}" if linearizer.B_W.numel() else f"b I + P Q^T, rank {linearizer.B_P.shape[1]}"
    baseline = FlowMatchingBaseline(ModelConfig(kind="fm_baseline")).to(device).eval()
    print(f"# batch {args.batch} of {tuple(cfg.image_shape)} noise, T={args.steps}; untrained weights; "
          f"Linearizer {param_count(linearizer):,} parameters, baseline U-Net {param_count(baseline):,}; "
          f"B ({cfg.sampler.method} x{args.steps}, {form}) built once in {fmt_seconds(build_s)}", flush=True)

    def g_passes():
        return linearizer.decode_data(linearizer.encode_noise(x0))

    samplers = [
        ("g passes alone: g_x^-1(g_y(x0))", 2, g_passes),
        ("one-step Linearizer: g_x^-1(B g_y(x0))", 2, lambda: linearizer.sample(x0)),
        (f"Linearizer, {args.steps}-step RK4 in latent space", 2,
         lambda: linearizer.sample_multistep(x0, "rk4", args.steps)),
        (f"flow-matching U-Net, {args.steps}-step Euler", args.steps,
         lambda: baseline.sample(x0, "euler", args.steps)),
        (f"flow-matching U-Net, {args.steps}-step RK4", 4 * args.steps,
         lambda: baseline.sample(x0, "rk4", args.steps)),
    ]
    results = {}
    with torch.no_grad():
        for name, evals, fn in samplers:
            results[name] = (evals, measure(fn, args.repeats, args.budget, device))
            print(f"# done: {name}", flush=True)

    one = results[samplers[1][0]][1]
    rows = []
    for name, (evals, m) in results.items():
        rows.append([name, evals, fmt_seconds(m.seconds), fmt_seconds(m.cpu_seconds), f"{args.batch / m.seconds:.1f}",
                     fmt_bytes(m.peak_bytes), fmt_ratio(m.seconds / one.seconds),
                     fmt_ratio(m.cpu_seconds / one.cpu_seconds), m.runs])
    print()
    print(table(["sampler", "network passes", "wall / batch", "CPU / batch", "images / s", "peak mem",
                 "wall vs one-step", "CPU vs one-step", "runs"], rows))
    g_only, euler, rk4 = (results[samplers[i][0]][1] for i in (0, 3, 4))

    def ratio(a, b) -> list[str]:
        return [fmt_ratio(a.seconds / b.seconds), fmt_ratio(a.cpu_seconds / b.cpu_seconds)]

    print()
    print(table(["ratio", "wall", "CPU", "goal"], [
        [f"baseline {args.steps}-step Euler / one-step", *ratio(euler, one), ">= 20x"],
        [f"baseline {args.steps}-step RK4 / one-step", *ratio(rk4, one), ">= 20x"],
        ["one-step / g passes alone", *ratio(one, g_only), "<= 1.2x"],
    ]))
    write_results(args.json, "bench.bench_sampling", argv, {
        "settings": {"batch": args.batch, "steps": args.steps, "B_form": form, "B_build_seconds": build_s,
                     "repeats": args.repeats, "budget": args.budget, "seed": args.seed},
        "samplers": [{"sampler": name, "network_passes": evals, "seconds": m.seconds, "cpu_seconds": m.cpu_seconds,
                      "peak_bytes": m.peak_bytes, "runs": m.runs} for name, (evals, m) in results.items()],
        "ratios": {"euler_over_one_step": {"wall": euler.seconds / one.seconds, "cpu": euler.cpu_seconds / one.cpu_seconds},
                   "rk4_over_one_step": {"wall": rk4.seconds / one.seconds, "cpu": rk4.cpu_seconds / one.cpu_seconds},
                   "one_step_over_g_passes": {"wall": one.seconds / g_only.seconds,
                                              "cpu": one.cpu_seconds / g_only.cpu_seconds}},
    }, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
