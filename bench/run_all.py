"""Run every `bench/bench_*.py`, one fresh process each, and say which finished.

Each bench runs with its own defaults (a few minutes each on a 2-core machine), or with its
`QUICK_ARGS` under `--quick` (seconds; a smoke test, not a measurement). A separate process per
bench keeps one bench's memory and threads from colouring the next one's numbers.

Run:
    python -m bench.run_all                       # every bench, default sizes
    python -m bench.run_all --quick               # every bench, smoke-test sizes
    python -m bench.run_all --only collapse -- --dims 1024
    python -m bench.run_all --json-dir /tmp/results   # each bench also writes DIR/<name>.json
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the bench modules (`bench_X.py` -> "X"), sorted."""
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each bench's QUICK_ARGS (smoke-test sizes)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benches (names without bench_)")
    parser.add_argument("--json-dir", default=None, help="each bench writes its figures to DIR/<name>.json (its --json)")
    parser.add_argument("extra", nargs="*", help="arguments after -- go to every bench")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown bench {unknown}; known: {names}")
        names = [n for n in names if n in args.only]

    outcomes = []
    for name in names:
        module = f"bench.bench_{name}"
        bench_args = list(getattr(importlib.import_module(module), "QUICK_ARGS", [])) if args.quick else []
        command = [sys.executable, "-m", module, *bench_args, *args.extra]
        if args.json_dir:
            command += ["--json", str(Path(args.json_dir) / f"{name}.json")]
        print(f"\n## {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        outcomes.append((name, code, time.perf_counter() - start))

    print("\n## summary")
    for name, code, seconds in outcomes:
        print(f"{name:<12} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {seconds:.0f} s")
    return 0 if all(code == 0 for _, code, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
