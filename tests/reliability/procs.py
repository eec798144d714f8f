"""Process helpers of the reliability suite: descendants, hard kills, listening sockets.

Everything here acts only on processes this suite started (a pid it spawned and that pid's
descendants, recorded while it was alive), never on processes found by name: other Ray
instances may run on the same machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Proc:
    """A process identified by pid and start time (a pid alone may be reused)."""

    pid: int
    created: float
    name: str

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return p.create_time() == self.created and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def family(pid: int) -> list[Proc]:
    """`pid` and all its descendants, as they are now."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out.append(Proc(p.pid, p.create_time(), p.name()))
        except psutil.NoSuchProcess:
            pass
    return out


def survivors(procs: list[Proc]) -> list[Proc]:
    """The processes of `procs` still running, with whatever they have spawned since."""
    seen: dict[int, Proc] = {}
    for proc in procs:
        if proc.alive():
            for member in family(proc.pid):
                seen[member.pid] = member
    return list(seen.values())


def reap(procs: list[Proc], grace_s: float = 10.0) -> list[Proc]:
    """SIGKILL whichever of `procs` (and their descendants) are still running.

    Returns:
        The processes that had to be killed (empty when all had exited by themselves).
    """
    left = survivors(procs)
    for proc in left:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive() for p in left):
        time.sleep(0.2)
    return left


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    """Poll `condition` until it holds; raise `TimeoutError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not reached after {timeout_s:.0f} s")


def listening(procs: list[Proc], names: dict[int, str] | None = None) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state owned by `procs`;
    `names` may name a pid instead of its current name (e.g. every title it has had)."""
    pids = {p.pid: (names or {}).get(p.pid, p.name) for p in procs if p.alive()}
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            out.append((conn.laddr.ip, conn.laddr.port, pids[conn.pid]))
    return out


def run_cli(args: list[str], timeout_s: float = 120.0, cwd: str | Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` (this interpreter) from the repository root, capturing text output."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=cwd or REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def console_script(name: str) -> str:
    """Path of a console script installed beside this interpreter (e.g. `linearizer`)."""
    return str(Path(sys.executable).with_name(name))
