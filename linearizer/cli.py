"""The `linearizer` console script.

Each feature module contributes its subcommands through `register(subparsers)`; this file only
assembles them, so `linearizer --help` lists everything the installed library can do.

Example:
    $ linearizer --help
    $ linearizer sample --model runs/demo/model --n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .config import ConfigError

#: modules that add subcommands, in the order they appear in --help.
PLUGINS = (
    "linearizer.onestep.cli",
    "linearizer.projective_cli",
    "linearizer.style.cli",
    "linearizer.metrics.cli",
)


def positive_int(text: str) -> int:
    """argparse type of counts (`--n`, `--steps`, `--batch-size`, ...): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linearizer",
        description="Linearizers f(x) = g_y^-1(A g_x(x)): train, sample, invert, project, transfer styles.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in PLUGINS:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("linearizer")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # A user error: say what is wrong without a traceback from deep inside torch.
        print(f"linearizer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
