"""`vismae roi-aware`: the ROI paper's experiment beside its annotation-free, deployable form."""

from __future__ import annotations

import argparse

from vismae.commands import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "roi-aware",
        help="ROI-aware classification: the paper's procedures, the annotation-only floor and deployable routing",
        description=(
            "Train the comparative per-view classifiers, the eight (view, ROI presence) group "
            "classifiers and an ROI-presence router on a prepared cache, then report on the test "
            "split: the paper's annotated routing, the annotation-only rule, the routing a clinic "
            "could deploy, and the paper's published numbers beside them. Rerunning reuses every "
            "finished model."
        ),
    )
    add_config_arguments(
        parser, "experiment YAML (configs/roi_aware/*.yaml)", "dotted overrides, e.g. seeds=[0,1,2] finetune.train.epochs=2"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the finished run folder, without training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.experiments.roi_aware.experiment import check_run_folder, run_roi_aware
    from vismae.experiments.roi_aware.config import load_roi_aware_config
    from vismae.experiments.roi_aware.report import build_report

    config = load_roi_aware_config(args.config, args.overrides)
    if args.report_only:
        config = config.with_absolute_paths()
        check_run_folder(config, save=False)  # the report must describe the run that is there
        folder = build_report(config)
    else:
        folder = run_roi_aware(config)
    # The headline tables; the per-view ones, the router's and the groups' are in the file.
    print((folder / "results.md").read_text().split("\n## Per view")[0])
    print(f"report: {folder}")
    return 0
