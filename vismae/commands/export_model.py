"""`vismae export-model`: a finished finetuning run as a model folder with a model card."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-model",
        help="write a finished finetuning run as a self-contained model folder with a model card",
        description=(
            "Copy the run's weights (safetensors) and write deployment.json (the training preprocessing, the "
            "thresholds of images, breasts and exams, the temperature fitted on validation) and model_card.md "
            "(training data and licences, intended use, metrics with intervals, known limits). "
            "`vismae predict --model OUT` reads the result."
        ),
    )
    parser.add_argument("run", help="a finished finetuning run folder (a classifier)")
    parser.add_argument("out", help="the model folder to write (absent or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.engine.export_model import CARD_FILE, export_model

    out = export_model(args.run, args.out, overwrite=args.overwrite)
    print(f"exported {args.run} -> {out} (model card: {out / CARD_FILE})")
    return 0
