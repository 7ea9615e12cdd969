"""The `vismae` command. Each subcommand lives in vismae/commands/<name>.py and exposes
``register(subparsers)``; those modules import only argparse at the top so that
``vismae --help`` stays instant, and pull in torch and friends when they run. The commands
that the repository's pretrain.py and finetune.py also start (see ``script_main``) expose
``configure(parser)`` and ``DESCRIPTION`` too, so both entry points share one parser."""

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
    "pretrain",
    "finetune",
    "predict",
    "export_model",
    "probe",
    "roi_aware",
    "sweep",
    "study",
    "report",
    "convert_weights",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vismae", description="Swin MAE pretraining and ROI-aware finetuning on mammograms, from raw datasets to reports."
    )
    parser.add_argument("--version", action="version", version=f"vismae {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vismae.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, f"vismae {args.command}")


def script_main(command: str, argv: list[str] | None = None) -> int:
    """What the repository's pretrain.py and finetune.py run: the subcommand ``command`` with
    its own arguments, under the script's name, so `accelerate launch <command>.py ...` can
    start it on every process."""
    module = importlib.import_module(f"vismae.commands.{command}")
    parser = argparse.ArgumentParser(prog=f"{command}.py", description=module.DESCRIPTION)
    module.configure(parser)
    args = parser.parse_args(argv)
    args.command = command
    return run_command(args, command)


def run_command(args: argparse.Namespace, name: str) -> int:
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
