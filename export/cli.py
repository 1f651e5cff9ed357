"""``palm-export``: the workstation command line (data, training, evaluation, export).

Each subcommand lives in the module that owns its stage and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Modules keep heavy imports inside their functions so that
``palm-export --help`` stays fast even where torch is slow to import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

# subcommand modules, in the order --help lists them
COMMAND_MODULES: tuple[str, ...] = (
    "export.synth.cli",
    "export.train",
    "export.evaluate",
    "export.export_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palm-export",
        description="The workstation: data sets, training, evaluation, export of bundles.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand; a problem with the user's data set, checkpoint, bundle or output
    folder, and a Ctrl-C, end in one line that says what was wrong instead of a traceback (exit
    status 2, and 130)."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as e:
        from agent.manifest import BundleError
        from export.checkpoint import CheckpointError
        from export.data.layouts import LayoutError
        from export.outdir import OutputError

        if not isinstance(e, (LayoutError, CheckpointError, BundleError, OutputError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
