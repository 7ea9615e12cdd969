"""`vismae demo`: the whole pipeline on built-in synthetic mammograms, no data or GPU needed."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on synthetic mammograms",
        description=(
            "Write synthetic VinDr-Mammo and CDD-CESM datasets in their real on-disk formats, read "
            "them into manifests, prepare and summarize a training cache of each, pretrain a tiny "
            "Swin MAE on both, finetune a classifier and a segmenter from that encoder and from "
            "random init, then run the ROI-aware experiment and the label-efficiency sweeps (frozen-feature "
            "probes and finetuning, pretrained against random init, three seeds, paired differences). "
            "Rerunning continues where it stopped."
        ),
    )
    parser.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients per dataset")
    parser.add_argument("--size", type=int, default=64, help="cache image size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes for prepare")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out=args.out, patients=args.patients, size=args.size, seed=args.seed, workers=args.workers
    )
    run_demo(settings)
    return 0
