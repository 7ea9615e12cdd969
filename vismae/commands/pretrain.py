"""`vismae pretrain`: Swin MAE pretraining on prepared caches. The repository's pretrain.py
runs the same command, so that `accelerate launch pretrain.py ...` starts it on every process."""

from __future__ import annotations

import argparse

from vismae.commands import add_config_arguments

HELP = "pretrain a Swin MAE encoder on prepared caches"
DESCRIPTION = (
    "Swin MAE pretraining. Run it through Accelerate, on one device or many: "
    "`accelerate launch pretrain.py --config configs/pretrain/vismae.yaml [key=value ...]`. "
    "Overrides use the config's dotted keys (train.max_steps=20, data.manifests=[a.csv,b.csv]). "
    "Running the same command again resumes the run folder from its newest checkpoint."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `vismae pretrain` and of the repository's pretrain.py, and what runs them."""
    add_config_arguments(
        parser, "YAML config, e.g. configs/pretrain/vismae.yaml", "config overrides, e.g. train.max_steps=20"
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run folder even though its saved config differs in more than the run length",
    )
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    configure(subparsers.add_parser("pretrain", help=HELP, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    import sys

    from vismae.config import load_pretrain_config
    from vismae.engine.pretrain import run as run_pretrain
    from vismae.engine.train_step import NonFiniteLossError

    config = load_pretrain_config(args.config, args.overrides)
    try:
        run_pretrain(config, allow_config_change=args.allow_config_change)
    except NonFiniteLossError as error:
        print(f"pretrain: stopped: {error}", file=sys.stderr)
        return 1
    return 0
