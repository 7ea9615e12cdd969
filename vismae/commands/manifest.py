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
  folder     any folder of DICOM files (headers read; ids written as salted hashes;
             files left out are listed in OUT_left_out.csv, the salt kept in OUT.salt)
  rsna       RSNA Screening Mammography folder (train.csv, train_images/; test.csv optional)
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
    # The dataset options go to the reader under their own names, and only when given (they
    # default to None), so that naming one the dataset does not take is an error.
    group = parser.add_argument_group("dataset options", "each for the datasets its help names")
    reader_options = []

    def reader_option(*flags, **settings):
        reader_options.append(group.add_argument(*flags, default=None, **settings).dest)

    reader_option(
        "--seed", type=int,
        help="seed of the patient-grouped 10:1 split (cdd-cesm, folder, rsna; table without a split column); default 0",
    )
    reader_option("--include-cesm", action="store_true", help="cdd-cesm: add the subtracted (CM) images to the low-energy ones")
    reader_option(
        "--paper-split", action="store_true",
        help="cdd-cesm: the ROI paper's selection and split (Table 3): benign and malignant low-energy images, "
        "as many of each, 10:1 with as many of each in test, by patient (seeded by --seed)",
    )
    reader_option("--csv", type=Path, help="table: the CSV, when --root is the folder its relative paths start from")
    reader_option("--salt", help="folder: the secret that keys the hashed ids (default: the one kept in --salt-file)")
    reader_option(
        "--salt-file", type=Path,
        help="folder: file holding the salt, drawn and written there on first use (default: OUT.salt); keep it private",
    )
    reader_option(
        "--allow-for-processing", action="store_true", help="folder: keep DICOMs marked FOR PROCESSING (raw detector data) too"
    )
    reader_option("--workers", type=int, help="folder: header-reading threads (default: cores + 4, at most 32)")
    reader_option(
        "--stratify-site", action="store_true",
        help="rsna: split each site's patients separately, so both sites keep their share of test",
    )
    parser.set_defaults(func=run, reader_options=reader_options)


def run(args) -> int:
    from vismae.data.manifest import write_manifest
    from vismae.data.sources import options_of, read_dataset
    from vismae.data.sources.left_out import report_beside

    if args.root is None and not (args.dataset == "table" and args.csv is not None):
        raise ValueError("--root is required (for --dataset table, --root or --csv)")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    # Readers report what they dropped, moved or filled in through logging.
    logging.basicConfig(level=logging.INFO, format="vismae manifest: %(message)s")

    options = {name: getattr(args, name) for name in args.reader_options if getattr(args, name) is not None}
    # Files kept beside the manifest, for the readers that write them.
    beside = {"report": report_beside(args.out), "salt_file": args.out.with_suffix(".salt")}
    takes = options_of(args.dataset)
    options.update({name: path for name, path in beside.items() if name in takes and name not in options})
    frame = read_dataset(args.dataset, args.root, allow_missing=args.allow_missing, **options)
    write_manifest(frame, args.out)
    print(
        f"wrote {args.out}: {len(frame)} images of {frame['patient_id'].nunique()} patients "
        f"({', '.join(f'{n} {split}' for split, n in frame['split'].value_counts().items())})"
    )
    return 0
