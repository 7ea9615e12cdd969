"""`vismae finetune`: a classifier or segmenter from any encoder on a prepared cache."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments shared by `vismae finetune` and the repository's finetune.py."""
    parser.add_argument("--config", required=True, help="finetuning YAML (configs/finetune/*.yaml)")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="k-fold cross-validation by patient over the non-test rows instead of one run",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. init=random:tiny train.epochs=2")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="finetune an encoder into a benign/malignant classifier or an ROI segmenter",
        description=(
            "Train on the cache's train rows, select the epoch and the decision threshold on its "
            "val rows (carved from train by patient when there are none), then predict val and "
            "test. A finished run folder is reported as it is; an interrupted one resumes."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from vismae.engine.finetune import run as run_finetune
    from vismae.engine.finetune import summary_lines
    from vismae.engine.finetune_config import load_finetune_config
    from vismae.engine.pretrain_loop import NonFiniteLossError

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
