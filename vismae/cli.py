"""The `vismae` command. Each subcommand lives in vismae/commands/<name>.py and exposes
``register(subparsers)``; those modules import only argparse at the top so that
``vismae --help`` stays instant, and pull in torch and friends when they run."""

from __future__ import annotations

import argparse
import importlib
import sys

from vismae import __version__

# Module names under vismae.commands, in the order `vismae --help` lists them.
COMMANDS = [
    "phantom",
    "manifest",
    "summarize",
    "prepare",
    "split",
    "finetune",
    "roi_aware",
    "sweep",
    "report",
    "convert_weights",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vismae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vismae {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vismae.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"vismae {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
