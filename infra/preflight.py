"""Pre-flight of `make demo` / `make test`: name every missing system tool, with its fix, before
anything is installed or run.

Runs on the interpreter that creates the virtual environment, with the standard library only
(it runs before anything is installed). Each check says what needs the tool and which
Debian/Ubuntu package provides it; all missing tools are reported at once, then the exit
status is 1.

| check | needed by | Debian/Ubuntu fix |
|---|---|---|
| Python >= 3.11 (`--install`) | the project (`requires-python`) | `apt-get install python3.11`, then `make PY=python3.11 ...` |
| `venv` and `ensurepip` (`--install`) | creating `.venv` | `apt-get install python3.X-venv` |
| 3 GiB free (`--install`) | the environment: ~2 GB with the CPU build of torch, ~7 GB with the CUDA build | free space, or `make VENV=<elsewhere>` |
| `Python.h` | DeepSpeed's CPU ops, compiled on first use as torch C++ extensions | `apt-get install python3.X-dev` |
| a C++ compiler (`$CXX`, else `c++`) | the same ops (ninja comes from pip, as a DeepSpeed dependency) | `apt-get install g++` |
| `bash` | the MLflow server script | `apt-get install bash` |
| `ss` (`--tests`) | tests that check every listener is loopback-only | `apt-get install iproute2` |

Run:
    python3 infra/preflight.py                      # what `make demo` needs to run
    python3 infra/preflight.py --tests              # and what `make test` needs
    python3 infra/preflight.py --install --tests    # and what installing needs (the Makefile's first step)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_PYTHON = (3, 11)
#: free space the environment needs with the CPU build of torch (the CUDA build needs ~7 GB).
MIN_FREE_BYTES = 3 * 2**30


@dataclass(frozen=True)
class Check:
    """One requirement: a predicate, what needs it, and how to install it."""

    name: str
    needed_by: str
    fix: str
    ok: Callable[[], bool]


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _cxx() -> str:
    """The C++ compiler torch's extension builder calls: `$CXX`, else `c++`."""
    return os.environ.get("CXX") or "c++"


def checks(tests: bool, install: bool, venv_dir: Path) -> list[Check]:
    """The requirements of `make demo`, and of `make test` and of installing when asked.

    Args:
        tests: also check the tools only the test suite uses.
        install: also check what creating and filling the virtual environment needs.
        venv_dir: where the virtual environment goes (its file system needs the free space).

    Returns:
        The checks, in the order they are reported.
    """
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    space_at = next((p for p in (venv_dir, *venv_dir.parents) if p.exists()), Path.cwd())
    found = [] if not install else [
        Check(f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (this is {sys.version.split()[0]})",
              "the project (requires-python)",
              f"apt-get install python{MIN_PYTHON[0]}.{MIN_PYTHON[1]}, then run make with "
              f"PY=python{MIN_PYTHON[0]}.{MIN_PYTHON[1]}",
              lambda: sys.version_info >= MIN_PYTHON),
        Check("the venv and ensurepip modules", "creating the virtual environment",
              f"apt-get install {py}-venv", lambda: _has_module("venv") and _has_module("ensurepip")),
        Check(f"{MIN_FREE_BYTES / 2**30:.0f} GiB free at {space_at}", "the virtual environment (CPU torch: ~2 GB)",
              "free some space, or make VENV=<a path with space>",
              lambda: shutil.disk_usage(space_at).free >= MIN_FREE_BYTES),
    ]
    found += [
        Check(f"Python headers ({Path(sysconfig.get_paths()['include']) / 'Python.h'})",
              "DeepSpeed's CPU ops, compiled on first use", f"apt-get install {py}-dev",
              lambda: (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()),
        Check(f"a C++ compiler ({_cxx()})", "DeepSpeed's CPU ops, compiled on first use",
              "apt-get install g++ (or set CXX to a C++ compiler)", lambda: shutil.which(_cxx()) is not None),
        Check("bash", "the MLflow server script", "apt-get install bash", lambda: shutil.which("bash") is not None),
    ]
    if tests:
        found.append(Check("ss", "tests that check every listener is loopback-only", "apt-get install iproute2",
                           lambda: shutil.which("ss") is not None))
    return found


def missing(found: Sequence[Check]) -> list[Check]:
    """The checks that fail."""
    return [c for c in found if not c.ok()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", action="store_true", help="also check the tools the test suite uses")
    parser.add_argument("--install", action="store_true",
                        help="also check what installing needs (Python version, venv, free space)")
    parser.add_argument("--venv", default=".venv", help="where the virtual environment goes (default: .venv)")
    args = parser.parse_args(argv)
    failed = missing(checks(args.tests, args.install, Path(args.venv).resolve()))
    if not failed:
        print(f"preflight: ok ({'install, ' if args.install else ''}{'demo and tests' if args.tests else 'demo'})")
        return 0
    print("preflight: missing " + ", ".join(c.name for c in failed), file=sys.stderr)
    for c in failed:
        print(f"  - {c.name}: needed by {c.needed_by}. Fix: {c.fix}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
