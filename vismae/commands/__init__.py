"""The subcommands of `vismae`, one module each (listed in ``vismae.cli.COMMANDS``), and the
arguments that several of them share."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str) -> None:
    """``--config FILE`` and the ``key=value`` overrides of its dotted keys, as every command
    driven by a YAML config takes them."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
