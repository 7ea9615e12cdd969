"""`vismae sweep`: VIS-MAE's label-efficiency study, label fractions x encoder inits x seeds (x folds)."""

from __future__ import annotations

import argparse

from vismae.commands import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="label-efficiency sweep: finetune every init on nested label fractions, over seeds and folds",
        description=(
            "Finetune each encoder init on nested, stratified, patient-grouped fractions of the "
            "training patients, for every seed (and fold), one run folder per run, then report "
            "the score vs fraction curves and how many labels each init saves against random init "
            "with all of them. Rerunning skips finished runs and redoes unfinished ones; --shard "
            "splits the runs between machines that share the sweep folder."
        ),
    )
    add_config_arguments(
        parser, "sweep YAML (configs/sweep/*.yaml)", "dotted overrides, e.g. seeds=[0,1] inits.ours=runs/x/encoder.safetensors"
    )
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="run shard I of N: the runs whose index mod N is I (I from 0); default: all")
    parser.add_argument("--dry-run", action="store_true", help="list this shard's runs and their state, and train nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.experiments.label_efficiency.sweep import RUNS_DIR, parse_shard, plan_sweep, run_state, run_sweep, shard_runs
    from vismae.experiments.label_efficiency.config import load_sweep_config

    config = load_sweep_config(args.config, args.overrides)
    shard = parse_shard(args.shard)
    if args.dry_run:
        plan = plan_sweep(config)
        mine = shard_runs(plan.runs, *shard)
        print(f"{plan.folder}: {len(plan.runs)} runs, scored on {plan.score_split}; shard {shard[0]}/{shard[1]} takes {len(mine)}:")
        for spec in mine:
            print(f"  {spec.name:40s} {run_state(plan.folder / RUNS_DIR / spec.name)}")
        return 0
    outcome = run_sweep(config, shard)
    print(
        f"ran {len(outcome.ran)}, already finished {len(outcome.skipped)}, failed {len(outcome.failed)}, "
        f"left to the processes training them {len(outcome.in_use)}"
    )
    print(f"report: {outcome.folder / 'report'}")
    return 1 if outcome.failed else 0
