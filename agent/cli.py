"""``palm-agent``: the device command line.

Each subcommand lives in the module that owns its stage and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Modules keep heavy imports inside their functions so that
``palm-agent --help`` stays fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from agent import __version__


def parse_number(text: str, kind: type[int] | type[float]) -> int | float:
    """An argparse type's first step, shared by every range-checked flag of both command lines:
    the text as a whole number or a number, or argparse's error naming it (the range check and
    its message stay with the flag)."""
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


# subcommand modules, in the order --help lists them
COMMAND_MODULES: tuple[str, ...] = ("agent.gallery_cli", "agent.run_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palm-agent",
        description="The palm reader on the device: run the daemon, enroll, manage templates.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # after an upgrade (scripts/install.sh again): which code the venv now runs
    parser.add_argument("--version", action="version", version=f"palm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
