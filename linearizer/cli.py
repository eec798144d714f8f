"""The `linearizer` console script.

Each feature module contributes its subcommands through `register(subparsers)`; this file only
assembles them, so `linearizer --help` lists everything the installed library can do.

Exit statuses, the same as every `python -m pipelines.*` entry point (`pipelines.runtime.run_cli`):
0 done; 2 bad command line, config or input (argparse's own errors, `ConfigError`, `ValueError`,
a file named on the command line that does not exist); 3 could not run (any other `OSError`:
an unwritable output, unreadable storage). The error is one line on stderr, without a traceback.

Example:
    $ linearizer --help
    $ linearizer sample --model runs/demo/model --n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from .config import ConfigError

#: exit statuses shared by every entry point of the project (see the module docstring).
EXIT_OK, EXIT_BAD_INPUT, EXIT_CANNOT_RUN = 0, 2, 3
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


def run_command(command: Callable[[], int | None], name: str) -> int:
    """Run one subcommand with the project's exit statuses (module docstring).

    Args:
        command: the subcommand, bound to its arguments; returns its status (None: 0).
        name: how to name it in the one-line error, e.g. "linearizer sample".

    Returns:
        The exit status.
    """
    try:
        return int(command() or EXIT_OK)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # A user error: say what is wrong without a traceback from deep inside torch.
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"{name}: could not run: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN


def main(argv: list[str] | None = None) -> int:
    """The `linearizer` console script; argparse errors exit with status 2 (`EXIT_BAD_INPUT`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    return run_command(lambda: args.func(args), f"linearizer {args.command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
