"""Shared helpers of the benchmarks: timing, peak memory, the machine line, tables and ratios.

Every bench measures its baseline in the same run as the thing it compares, on the same
machine and settings, and prints ratios: on a shared, loaded machine absolute times drift from
run to run, ratios much less.

How a measurement is taken (`measure`):

1. One run under `torch.profiler` with memory profiling (CPU), or between
   `torch.cuda.reset_peak_memory_stats` and `max_memory_allocated` (CUDA), gives the peak of
   the tensor memory the call allocated beyond what was live before it. This first run also
   serves as the warm-up.
2. If that run was cheaper than `budget_s`, up to `repeats` more runs are timed without the
   profiler, stopping once `budget_s` is spent, and the median is reported. A call more
   expensive than `budget_s` is reported from its single profiled run (the profiler's cost is
   per op, negligible against such calls; the result says `runs=1`).
3. Both wall time and this process's CPU time are recorded. With one torch thread on a machine
   shared with other work, CPU time is the steadier of the two: it does not count the time the
   process waited for a core.

Example:
    >>> m = measure(lambda: a @ b, repeats=5)
    >>> print(m.seconds, m.cpu_seconds, m.peak_bytes, m.runs)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass
class Measurement:
    """One measured call.

    Attributes:
        seconds: median wall time of the timed runs (or of the single profiled run).
        cpu_seconds: median CPU time of this process over the same runs (all its threads). On a
            loaded machine it varies far less than wall time; on CUDA it only counts the host.
        peak_bytes: peak tensor memory the call allocated beyond what was live before it.
        runs: number of runs the times are the medians of.
        times: wall time of every timed run, in seconds.
        result: what the last run returned.
    """

    seconds: float
    cpu_seconds: float
    peak_bytes: int
    runs: int
    times: list[float] = field(default_factory=list)
    result: Any = None


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so that wall time covers the work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """Run `fn` once; return (wall seconds, its result)."""
    wall, _, out = timed_both(fn, device)
    return wall, out


def timed_both(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, float, Any]:
    """Run `fn` once; return (wall seconds, CPU seconds of this process, its result)."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def _cpu_peak(prof: profile) -> int:
    """Peak of the running sum of allocations and frees, in the order the profiler saw them.

    Each op's own (self) allocations are counted at its start and frees made outside ops are
    separate "[memory]" events, so the running sum is the live tensor memory at op granularity.
    """
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profiled(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, float, int, Any]:
    """Run `fn` once, measuring its wall and CPU time and the peak tensor memory it allocated.

    Returns:
        (seconds, cpu_seconds, peak_bytes, result). On CUDA the peak is of device memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds, cpu_seconds, out = timed_both(fn, device)
        return seconds, cpu_seconds, torch.cuda.max_memory_allocated(device) - base, out
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # only around start and stop: what fn itself prints stays visible
        prof.start()
    try:
        seconds, cpu_seconds, out = timed_both(fn, device)
    finally:
        with _quiet_stderr():
            prof.stop()
    return seconds, cpu_seconds, _cpu_peak(prof), out


def measure(fn: Callable[[], Any], repeats: int = 3, budget_s: float = 5.0,
            device: torch.device | str = "cpu") -> Measurement:
    """Peak memory from one profiled run, then the median time of up to `repeats` plain runs.

    Args:
        fn: the call to measure (no arguments).
        repeats: most timed runs after the profiled one.
        budget_s: seconds the timed runs may take together; a call whose profiled run already
            took longer is reported from that run alone.
        device: where `fn` computes (CUDA is synchronised around each run).

    Returns:
        A `Measurement`.
    """
    first, first_cpu, peak, out = profiled(fn, device)
    if first >= budget_s:
        return Measurement(first, first_cpu, peak, 1, [first], out)
    times: list[float] = []
    cpu_times: list[float] = []
    while len(times) < max(repeats, 1) and sum(times) < budget_s:
        seconds, cpu_seconds, out = timed_both(fn, device)
        times.append(seconds)
        cpu_times.append(cpu_seconds)
    return Measurement(statistics.median(times), statistics.median(cpu_times), peak, len(times), times, out)


def warm_up(device: torch.device | str = "cpu") -> None:
    """Pay the one-off costs (BLAS initialisation, allocator, CUDA context) before any timing."""
    a = torch.randn(256, 256, device=device)
    for _ in range(3):
        a = (a @ a).tanh()
    synchronize(device)


def machine_line(device: torch.device | str = "cpu") -> str:
    """One line saying where and under what load the numbers were taken."""
    device = torch.device(device)
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return (f"# machine: {what}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, load average {load}")


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine line's facts as a dict, for a results JSON."""
    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(path: str | os.PathLike | None, bench: str, argv: Sequence[str] | None,
                  results: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Write a bench's figures as JSON, with the command and the machine that produced them.

    The file is written whole or not at all (a temporary file renamed into place), so an
    interrupted run never leaves a half-written results file under docs/results/.

    Args:
        path: where to write; None writes nothing (the bench was run without `--json`).
        bench: the bench module, e.g. "bench.bench_collapse".
        argv: the bench's own arguments (None: this process's command line).
        results: the figures, JSON-serialisable.
        device: the device the figures were measured on.
    """
    if path is None:
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    payload = {"command": shlex.join(["python", "-m", bench, *argv]), "machine": machine_info(device),
               "results": results}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def fmt_seconds(s: float) -> str:
    """Seconds with a unit that keeps three significant digits readable."""
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_bytes(n: float) -> str:
    """Bytes in binary units (KiB, MiB, GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_ratio(x: float) -> str:
    """A ratio like `123x` or `1.05x`."""
    if x != x or x in (float("inf"), float("-inf")):
        return "n/a"
    return f"{x:.0f}x" if x >= 100 else f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """`||x - ref|| / ||ref||` in float64."""
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm())


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/benchmarks.md)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def table_records(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """A printed table's rows as dicts keyed by its header, for a results JSON."""
    return [dict(zip(header, row, strict=True)) for row in rows]


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every bench shares: --device, --repeats, --budget, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="most timed runs per measurement (default: 3)")
    parser.add_argument("--budget", type=float, default=5.0,
                        help="seconds the timed runs of one measurement may take (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    return parser


def add_json_flag(parser: argparse.ArgumentParser, default: str | None = None) -> argparse.ArgumentParser:
    """Add `--json PATH`: where `write_results` puts the figures (committed ones live under docs/results/)."""
    parser.add_argument("--json", default=default, metavar="PATH",
                        help="also write the figures, the command and the machine to this JSON file"
                             + (f" (default: {default})" if default else ""))
    return parser


def check_device(name: str) -> torch.device:
    """The device named on the command line; a CUDA request without CUDA raises ValueError."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch {torch.__version__} sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return device
