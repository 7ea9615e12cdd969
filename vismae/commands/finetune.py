"""`vismae finetune`: a classifier or segmenter from any encoder on a prepared cache. The
repository's finetune.py runs the same command, so that `accelerate launch finetune.py ...`
starts it on every process."""

from __future__ import annotations

import argparse

from vismae.commands import add_config_arguments

HELP = "finetune an encoder into a benign/malignant classifier or an ROI segmenter"
DESCRIPTION = (
    "Train on the cache's train rows, select the epoch and the decision threshold on its "
    "val rows (carved from train by patient when there are none), then predict val and "
    "test. A finished run folder is reported as it is; an interrupted one resumes. Run it "
    "directly or through Accelerate, on one device or many: `accelerate launch finetune.py "
    "--config configs/finetune/vindr-classify.yaml init=runs/pretrain/mammo`."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `vismae finetune` and of the repository's finetune.py, and what runs them."""
    add_config_arguments(
        parser, "finetuning YAML (configs/finetune/*.yaml)", "dotted overrides, e.g. init=random:tiny train.epochs=2"
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="k-fold cross-validation by patient over the non-test rows instead of one run",
    )
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    configure(subparsers.add_parser("finetune", help=HELP, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    import sys

    from vismae.engine.finetune import run as run_finetune
    from vismae.engine.finetune import summary_lines
    from vismae.engine.finetune_config import load_finetune_config
    from vismae.engine.train_step import NonFiniteLossError

    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds must be 0 (one run) or at least 2, got {args.folds}")
    config = load_finetune_config(args.config, args.overrides)
    try:
        result = run_finetune(config, folds=args.folds)
    except NonFiniteLossError as error:
        print(f"finetune: stopped: {error}; lower train.lr or set train.clip_grad", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(result)))
    return 0
