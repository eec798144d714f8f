"""The `linearizer` console script: `linearizer <kind> <verb>`, and top-level utilities.

One shape for every command: a model kind, then what to do with it (`linearizer onestep
sample`, `linearizer projective project`, `linearizer style apply`); utilities that belong to no
kind sit at the top (`linearizer train-classifier`). Each feature module contributes its commands
through `register(subparsers)` (a kind adds its parser with `add_kind_parser` and its verbs with
`add_verb`); this file only assembles them, so `linearizer --help` lists everything the installed
library can do. Options that are request parameters of a predict mode are built from the
kind's `KindSpec` (`linearizer.kinds.add_param_options`).

Exit statuses, the same as every `python -m pipelines.*` entry point (`pipelines.runtime.run_cli`):
0 done; 2 bad command line, config or input (argparse's own errors, `ConfigError`, `ValueError`,
a file named on the command line that does not exist); 3 could not run (any other `OSError`:
an unwritable output, unreadable storage). The error is one line on stderr, without a traceback.

The spellings before this shape (`linearizer sample`, `linearizer project train`, ...) still
run for one release, after a one-line deprecation note on stderr (`DEPRECATED`).

Example:
    $ linearizer --help
    $ linearizer onestep --help
    $ linearizer onestep sample --model runs/demo/model --n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from .config import ConfigError

#: exit statuses shared by every entry point of the project (see the module docstring).
EXIT_OK, EXIT_BAD_INPUT, EXIT_CANNOT_RUN = 0, 2, 3
#: modules that add subcommands, in the order they appear in --help.
PLUGINS = (
    "linearizer.onestep.cli",
    "linearizer.projective.cli",
    "linearizer.style.cli",
    "linearizer.metrics.cli",
)
#: old first words -> the new command that replaces them; `linearizer project` also had a `train`
#: verb (`project train` -> `projective train`). Kept for one release.
DEPRECATED = {
    "train": ("onestep", "train"), "sample": ("onestep", "sample"), "invert": ("onestep", "invert"),
    "interpolate": ("onestep", "interpolate"), "evaluate": ("onestep", "evaluate"),
    "project": ("projective", "project"),
}


def positive_int(text: str) -> int:
    """argparse type of counts (`--n`, `--steps`, `--batch-size`, ...): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_kind_parser(subparsers: argparse._SubParsersAction, kind: str, help: str, description: str
                    ) -> argparse._SubParsersAction:
    """Add `linearizer <kind>` and return the subparsers its verbs go into.

    Args:
        subparsers: the console script's top-level subparsers.
        kind: the model kind's name (`KindSpec.name`).
        help: one line for `linearizer --help`.
        description: the paragraph of `linearizer <kind> --help`.

    Returns:
        The kind's verb subparsers (`add_verb` adds one); `linearizer <kind>` alone prints its help.
    """
    parser = subparsers.add_parser(kind, help=help, description=description)
    parser.set_defaults(func=lambda args: parser.print_help() or EXIT_OK, command_name=parser.prog)
    return parser.add_subparsers(dest=f"{kind}_command", metavar="VERB")


def add_verb(verbs: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int | None],
             help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add one verb of a kind (or a top-level utility) that runs `func(args)`.

    Args:
        verbs: what `add_kind_parser` returned, or the top-level subparsers.
        name: the verb ("train", "sample", ...).
        func: the command; its errors map to exit statuses in `run_command`.
        help: one line for the parent's --help.
        kwargs: more `add_parser` arguments (e.g. `description`).

    Returns:
        The verb's parser, to add its options to.
    """
    parser = verbs.add_parser(name, help=help, **kwargs)
    parser.set_defaults(func=func, command_name=parser.prog)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The console script's parser: every kind's verbs and the top-level utilities."""
    parser = argparse.ArgumentParser(
        prog="linearizer",
        description="Linearizers f(x) = g_y^-1(A g_x(x)): train, sample, invert, project, transfer styles. "
                    "Commands are `linearizer <kind> <verb>`; see `linearizer <kind> --help`.",
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
        name: how to name it in the one-line error, e.g. "linearizer onestep sample".

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


def upgrade_argv(argv: list[str]) -> list[str]:
    """`argv` in the current shape; an old spelling is rewritten, with a one-line note on stderr."""
    if not argv or argv[0] not in DEPRECATED:
        return argv
    kind, verb = DEPRECATED[argv[0]]
    rest = argv[1:]
    if argv[0] == "project" and rest[:1] == ["train"]:
        verb, rest = "train", rest[1:]
    old = " ".join(argv[: len(argv) - len(rest)])
    print(f"linearizer: `linearizer {old}` is deprecated and goes in the next release; "
          f"use `linearizer {kind} {verb}`", file=sys.stderr)
    return [kind, verb, *rest]


def main(argv: list[str] | None = None) -> int:
    """The `linearizer` console script; argparse errors exit with status 2 (`EXIT_BAD_INPUT`)."""
    parser = build_parser()
    args = parser.parse_args(upgrade_argv(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    return run_command(lambda: args.func(args), args.command_name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
