"""`vismae study`: does pretraining save labels? Pretraining seeds x label fractions x seeds, one command."""

from __future__ import annotations

import argparse

from vismae.commands import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="pretraining study: pretrain on a pool with several seeds, probe and finetune each encoder and random init on label fractions",
        description=(
            "Pretrain one encoder per pretraining seed on an unlabelled pool, then run a "
            "label-efficiency sweep per method (frozen-feature linear probe, finetuning) with "
            "every pretrained encoder and random init, and report at each fraction the "
            "difference pretrained minus random pooled over the pretraining runs, with its "
            "paired patient-bootstrap interval. Without data it makes synthetic datasets in the "
            "real layouts. Every stage resumes: rerun the command after an interruption."
        ),
    )
    add_config_arguments(parser, "study YAML (configs/study/*.yaml)", "dotted overrides, e.g. pretrain_seeds=[0,1] \"sweep_overrides=['seeds=[0]']\"")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.experiments.label_efficiency.study import run_study
    from vismae.experiments.label_efficiency.study_config import load_study_config

    report = run_study(load_study_config(args.config, args.overrides))
    print((report / "study.md").read_text())
    print(f"report: {report}")
    return 0
