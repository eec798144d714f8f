"""Project-level contracts: a pure-PyTorch library, a working console script, a truthful README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_library_imports_no_distributed_stack():
    code = (
        "import importlib, pkgutil, sys, linearizer\n"
        "for m in pkgutil.walk_packages(linearizer.__path__, 'linearizer.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in ('ray', 'mlflow', 'deepspeed', 'webdataset') if n in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"linearizer/ imports {out.stdout.strip()}; keep it pure PyTorch"


def test_console_script_help_lists_subcommands():
    def helptext(*argv: str) -> str:
        out = subprocess.run([sys.executable, "-m", "linearizer.cli", *argv, "--help"], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    top = helptext()
    for command in ("onestep", "projective", "style", "train-classifier"):
        assert re.search(rf"\b{command}\b", top), f"'linearizer --help' does not list {command}"
    onestep = helptext("onestep")
    for verb in ("train", "sample", "invert", "interpolate", "evaluate"):
        assert re.search(rf"\b{verb}\b", onestep), f"'linearizer onestep --help' does not list {verb}"


def test_readme_gives_exactly_two_setup_commands_that_exist():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_torch_pinned_everywhere():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
