"""`vismae report`: rebuild a label-efficiency sweep's tables and plots from its folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild a sweep's results.csv, tables and plots from its finished runs",
        description=(
            "Read every finished run of a `vismae sweep` folder, finished or partial (a partial "
            "report says which runs are missing), and write results.csv and report/: the curves "
            "(PNG and the CSV behind them), the labels-saved summary and summary.md."
        ),
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep's output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.experiments.label_efficiency.report import SUMMARY_FILE, build_report

    out = build_report(args.sweep_dir)
    print((out / SUMMARY_FILE).read_text())
    print(f"report: {out}")
    return 0
