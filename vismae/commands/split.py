"""`vismae split`: patient-grouped train/val/test, k folds and nested label fractions."""

from __future__ import annotations

import argparse


def _fraction_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split",
        help="patient-grouped train/val/test split, k folds and label fractions",
        description=(
            "Split a manifest by patient, stratified by each patient's most severe label, and "
            "write DIR/manifest.csv, DIR/fold_{i}/manifest.csv, DIR/fraction_{f}/manifest.csv "
            "and DIR/splits.json. An existing test split is kept unless --resplit."
        ),
    )
    parser.add_argument("manifest", help="input manifest CSV")
    parser.add_argument("--out", required=True, help="folder for the split manifests")
    parser.add_argument(
        "--val",
        type=float,
        default=0.1,
        help="share of patients for validation; of the non-test patients when an existing "
        "test split is kept (default: 0.1)",
    )
    parser.add_argument(
        "--test", type=float, default=0.1, help="share of patients for test when splitting anew (default: 0.1)"
    )
    parser.add_argument("--folds", type=int, default=0, help="also write K cross-validation folds")
    parser.add_argument(
        "--fractions",
        type=_fraction_list,
        default=(),
        help="also write nested label fractions of the training patients, e.g. 0.05,0.1,0.25,0.5,0.8,1",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resplit", action="store_true", help="ignore the input's test split and split anew")
    parser.add_argument("--overwrite", action="store_true", help="replace splits already in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vismae.data import splits
    from vismae.data.manifest import read_manifest

    frame = read_manifest(args.manifest)
    keep_test = (frame["split"] == "test").any() and not args.resplit
    if keep_test:
        # The rest is redrawn: every non-test row back to train, then a share of it to val.
        frame = frame.assign(split=frame["split"].where(frame["split"] == "test", "train"))
        frame = splits.carve_validation(frame, args.val, args.seed)
        settings = {"test": "kept from the input", "val_of_non_test": args.val}
    else:
        if args.val + args.test >= 1:
            raise ValueError(f"--val {args.val:g} and --test {args.test:g} leave no patients for training")
        fractions = {"train": 1 - args.val - args.test, "val": args.val, "test": args.test}
        frame = splits.assign_split(frame, fractions, args.seed)
        settings = {"split_fractions": fractions}
    settings["source"] = Path(args.manifest).name

    folds = splits.kfold(frame, args.folds, args.seed) if args.folds else []
    subsets = splits.label_fractions(frame, args.fractions, args.seed) if args.fractions else None
    record = splits.save_splits(
        args.out,
        frame,
        seed=args.seed,
        folds=folds,
        fractions=subsets,
        settings=settings,
        overwrite=args.overwrite,
    )

    print(splits.split_counts(frame).to_string())
    if keep_test:
        print("test split kept from the input (--resplit to redraw it)")
    for i, fold in enumerate(folds):
        val = fold[fold["split"] == "val"]
        print(f"fold {i}: {val['patient_id'].nunique()} validation patients, {len(val)} images")
    for fraction, subset in (subsets or {}).items():
        train = subset[subset["split"] == "train"]
        print(f"fraction {fraction:g}: {train['patient_id'].nunique()} training patients, {len(train)} images")
    print(f"wrote {record.parent}")
    return 0
