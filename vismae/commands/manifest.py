"""`vismae manifest`: turn a dataset folder into a manifest CSV (metadata only, no pixels)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DESCRIPTION = """\
Read a dataset's own metadata (CSV / XLSX / DICOM headers, never pixels) and write one
manifest row per image: ids, patient, view, laterality, label, BI-RADS, ROI geometry, split.

datasets:
  vindr      VinDr-Mammo folder (finding_annotations.csv, images/)
  cdd-cesm   CDD-CESM folder (annotation sheet, VIA segmentations, JPEG folders)
  cbis-ddsm  CBIS-DDSM folder (case description CSVs, DICOM download)
  table      a CSV of your own: only a path column is required
"""


def register(subparsers) -> None:
    from vismae.data.sources import READERS  # a name table, no reader imported

    parser = subparsers.add_parser(
        "manifest",
        help="turn a dataset folder into a manifest CSV",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=list(READERS))
    parser.add_argument(
        "--root", type=Path, help="the dataset folder (table: the CSV, or the folder its paths start from)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--allow-missing", action="store_true",
        help="drop images (and ROI masks) that are listed but not on disk instead of stopping",
    )
    # Dataset options default to None so that naming one the dataset does not take is an error.
    parser.add_argument(
        "--seed", type=int,
        help="seed of the patient-grouped 10:1 split (cdd-cesm; table without a split column); default 0",
    )
    parser.add_argument(
        "--include-cesm", action="store_true", default=None,
        help="cdd-cesm: add the subtracted (CM) images to the low-energy ones",
    )
    parser.add_argument(
        "--csv", type=Path, help="table: the CSV, when --root is the folder its relative paths start from"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from vismae.data.manifest import write_manifest
    from vismae.data.sources import read_dataset

    if args.root is None and not (args.dataset == "table" and args.csv is not None):
        raise ValueError("--root is required (for --dataset table, --root or --csv)")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    # Readers report what they dropped, moved or filled in through logging.
    logging.basicConfig(level=logging.INFO, format="vismae manifest: %(message)s")

    chosen = {"seed": args.seed, "include_cesm": args.include_cesm, "csv": args.csv}
    options = {name: value for name, value in chosen.items() if value is not None}
    frame = read_dataset(args.dataset, args.root, allow_missing=args.allow_missing, **options)
    write_manifest(frame, args.out)
    print(
        f"wrote {args.out}: {len(frame)} images of {frame['patient_id'].nunique()} patients "
        f"({', '.join(f'{n} {split}' for split, n in frame['split'].value_counts().items())})"
    )
    return 0
