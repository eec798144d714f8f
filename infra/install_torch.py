"""Install the pinned torch build this machine should run, chosen explicitly and said out loud.

The public index's Linux wheel of torch is the CUDA build and pulls several GB of CUDA
libraries, which a CPU-only host never uses. So the build is chosen before anything else is
installed (the rest then installs with `-c constraints.txt` and never re-resolves torch):

1. `--index URL` (`make ... TORCH_INDEX=URL`): torch from that index, no questions asked.
2. `--torch cuda`, or `auto` with a GPU (`nvidia-smi -L` lists one): the default index's build
   (the CUDA build).
3. `--torch cpu`, or `auto` without a GPU:
   a. the CPU wheel index (`--cpu-index`, default https://download.pytorch.org/whl/cpu) when it
      answers within a few seconds;
   b. else the CPU build pip already finds through its own configuration (a local wheel
      directory or mirror), e.g. `2.13.0+cpu`, pinned to that exact version;
   c. else stop, saying how to choose (a reachable index, or the CUDA build on purpose).

After installing, it checks that the build it got is the one it chose (a local wheel directory
in pip's configuration can hold a `+cpu` wheel that also satisfies `torch==X.Y.Z`) and stops
with the fix if not.

Standard library only: it runs before the environment has anything in it.

Run:
    python3 infra/install_torch.py --pip .venv/bin/pip                 # choose and install
    python3 infra/install_torch.py --pip .venv/bin/pip --dry-run       # print the choice and command
    python3 infra/install_torch.py --pip .venv/bin/pip --torch cpu --index https://my.mirror/whl/cpu
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODES = ("auto", "cpu", "cuda")
#: seconds to wait for the CPU index before looking for a local CPU build.
PROBE_TIMEOUT_S = 5.0


class ChoiceError(ValueError):
    """No torch build can be chosen without the user's say."""


@dataclass(frozen=True)
class Choice:
    """The torch build to install.

    Attributes:
        build: "cuda", "cpu" or "index" (an index the user named).
        pip_args: arguments after `pip install`.
        reason: one line saying why, printed before installing.
    """

    build: str
    pip_args: list[str]
    reason: str


def pinned_spec(constraints: Path) -> str:
    """The `torch==X.Y.Z` line of the constraints file.

    Raises:
        ValueError: the file pins no exact torch version.
    """
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.replace(" ", "").startswith("torch=="):
            return line.replace(" ", "")
    raise ValueError(f"{constraints} pins no torch version (expected a line torch==X.Y.Z)")


def gpu_present() -> tuple[bool, str]:
    """Whether `nvidia-smi -L` lists a GPU; returns (present, what was seen)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return False, "no nvidia-smi on PATH"
    except subprocess.TimeoutExpired:
        return False, "nvidia-smi -L timed out"
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    if out.returncode != 0 or not gpus:
        return False, f"nvidia-smi -L listed no GPU (exit {out.returncode})"
    return True, gpus[0]


def index_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the index serves a torch project page; returns (reachable, what was seen)."""
    request = urllib.request.Request(url.rstrip("/") + "/torch/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status < 400, f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, str(getattr(e, "reason", e))


def pip_cpu_build(pip: str, spec: str) -> str | None:
    """The version pip resolves `spec` to through its own configuration, if it is a CPU build.

    A dry run with `--report` resolves without installing; a local version label `+cpu` marks
    the CPU build (the public index's Linux wheel has none: it is the CUDA build).
    """
    try:
        out = subprocess.run([pip, "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
                              "--report", "-", spec], capture_output=True, text=True, timeout=300)
        version = json.loads(out.stdout)["install"][0]["metadata"]["version"]
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, IndexError):
        return None
    return version if version.partition("+")[2] == "cpu" else None


def choose(mode: str, index: str, cpu_index: str, spec: str, *,
           gpu: Callable[[], tuple[bool, str]], reachable: Callable[[str], tuple[bool, str]],
           local_cpu: Callable[[], str | None]) -> Choice:
    """Choose the torch build (see the module docstring for the order).

    Args:
        mode: "auto", "cpu" or "cuda".
        index: an index URL the user named ("" for none); it wins over everything else.
        cpu_index: the CPU wheel index to try without a GPU.
        spec: the pinned requirement, e.g. "torch==2.13.0".
        gpu, reachable, local_cpu: the probes (`gpu_present`, `index_reachable`, `pip_cpu_build`);
            only those the decision needs are called.

    Returns:
        The `Choice`.

    Raises:
        ValueError: an unknown mode, or a spec that is not an exact pin.
        ChoiceError: no GPU, the CPU index does not answer and pip finds no CPU build.
    """
    if mode not in MODES:
        raise ValueError(f"TORCH must be one of {', '.join(MODES)}, got {mode!r}")
    if not spec.startswith("torch==") or len(spec) == len("torch=="):
        raise ValueError(f"expected an exact pin torch==X.Y.Z, got {spec!r}")
    if index:
        return Choice("index", [spec, "--index-url", index], f"{spec} from the index given ({index})")
    if mode == "cuda":
        return Choice("cuda", [spec], f"{spec}, CUDA build from the default index (TORCH=cuda)")
    if mode == "auto":
        present, seen = gpu()
        if present:
            return Choice("cuda", [spec], f"{spec}, CUDA build from the default index (GPU found: {seen})")
        why = f"no GPU ({seen})"
    else:
        why = "TORCH=cpu"
    ok, seen = reachable(cpu_index)
    if ok:
        # the plain pin: that index's x86_64 wheels carry +cpu, its aarch64 ones no label
        return Choice("cpu", [spec, "--index-url", cpu_index], f"{spec}, CPU build from {cpu_index} ({why})")
    version = local_cpu()
    if version is not None:
        return Choice("cpu", [f"torch=={version}"],
                      f"torch=={version}, the CPU build pip already finds ({why}; {cpu_index}: {seen})")
    raise ChoiceError(
        f"{why}, the CPU wheel index {cpu_index} does not answer ({seen}) and pip finds no CPU build of "
        f"{spec}: give a reachable mirror of it with TORCH_INDEX=<url>, or take the CUDA build "
        f"(several GB) with TORCH=cuda")


def installed_build(python: str) -> dict[str, str | None]:
    """The torch that `python` imports: {"version": ..., "cuda": CUDA version or None}."""
    code = "import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_build(choice: Choice, build: dict[str, str | None]) -> str | None:
    """Why the installed build is not the chosen one, or None when it is (an index the user named
    is taken as given)."""
    if choice.build == "cuda" and build["cuda"] is None:
        return (f"a GPU build was chosen but torch {build['version']} has no CUDA: pip's configuration "
                f"serves a CPU build first; install from a CUDA index with TORCH_INDEX=<url> "
                f"(e.g. https://download.pytorch.org/whl/cu128), or TORCH=cpu")
    if choice.build == "cpu" and build["cuda"] is not None:
        return (f"the CPU build was chosen but torch {build['version']} is built for CUDA {build['cuda']}: "
                f"give a CPU index with TORCH_INDEX=<url>")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", required=True, help="the pip of the environment to install into")
    parser.add_argument("--python", default=None, help="its python (default: the python beside --pip)")
    parser.add_argument("--torch", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--index", default="", help="install torch from this index, whatever the machine")
    parser.add_argument("--cpu-index", default=CPU_INDEX, help=f"the CPU wheel index (default: {CPU_INDEX})")
    parser.add_argument("--constraints", default="constraints.txt", type=Path,
                        help="the file that pins torch (default: constraints.txt)")
    parser.add_argument("--dry-run", action="store_true", help="print the choice and the pip command only")
    args = parser.parse_args(argv)
    spec = pinned_spec(args.constraints)
    try:
        choice = choose(args.torch.strip() or "auto", args.index.strip(), args.cpu_index.strip() or CPU_INDEX,
                        spec, gpu=gpu_present, reachable=index_reachable,
                        local_cpu=lambda: pip_cpu_build(args.pip, spec))
    except ValueError as e:
        print(f"torch: {e}", file=sys.stderr)
        return 2
    command = [args.pip, "install", "-q", *choice.pip_args]
    print(f"torch: {choice.build}: {choice.reason}", flush=True)
    print(f"torch: {shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    code = subprocess.call(command)
    if code != 0:
        return code
    build = installed_build(args.python or str(Path(args.pip).with_name("python")))
    problem = check_build(choice, build)
    if problem is not None:
        print(f"torch: {problem}", file=sys.stderr)
        return 3
    print(f"torch: installed {build['version']} ({'CUDA ' + build['cuda'] if build['cuda'] else 'CPU'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
