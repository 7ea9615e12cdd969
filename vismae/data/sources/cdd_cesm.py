"""CDD-CESM: the radiology annotation sheet, the VIA segmentations and the JPEG folders ->
manifest.

Low-energy (DM) images, the ordinary mammograms, are read by default; ``include_cesm`` adds
the recombined contrast (CM) images. Each row's ``image_kind`` says which (DM or CESM), so that
no model mixes them unawares. Names are matched without spaces and case, because the sheet's
``Image_name`` carries stray spaces and some files have a space before ``.jpg``.

The dataset has no split: patients are split 10:1 (train:test), seeded, stratified by label.
``paper_split`` instead reproduces the ROI paper's selection and split (its Table 3): benign
and malignant low-energy images only, as many of each (331), 31 of each in test, by patient
(``vismae.data.sources.paper_split``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from vismae.data.manifest import SEVERITY, new_frame
from vismae.data.missing import drop_missing
from vismae.data.sources.paper_split import paper_split as papers_split
from vismae.data.sources.tables import SourceError, find_column, find_file, find_folder, read_table, where
from vismae.data.sources.via import read_regions
from vismae.data.splits import train_test_by_patient

log = logging.getLogger(__name__)

FOLDERS = {"DM": "Low energy images of CDD-CESM", "CM": "Subtracted images of CDD-CESM"}
ANNOTATIONS = "Radiology manual annotations"
SHEET = "all"
SEGMENTATIONS = "Radiology_hand_drawn_segmentations_v2.csv"
REQUIRED = ("Image_name", "Patient_ID", "Side", "Type", "View", "BIRADS")
LABEL_COLUMN = ("Pathology Classification/ Follow up", "Pathology Classification", "Pathology")
TYPES = {"DM": "DM", "CESM": "CM", "CM": "CM"}
IMAGE_KINDS = {"DM": "DM", "CM": "CESM"}  # the folder's kind -> the manifest's image_kind
LABELS = {"normal": "normal", "benign": "benign", "malignant": "malignant"}


def image_key(name: str) -> str:
    """A file or sheet name reduced to what identifies the image: ``P12_L_DM_CC``."""
    name = re.sub(r"\s+", "", str(name))
    return re.sub(r"\.jpe?g$", "", name, flags=re.IGNORECASE).upper()


def read(
    root: Path, *, include_cesm: bool = False, paper_split: bool = False, seed: int = 0, allow_missing: bool = False
) -> pd.DataFrame:
    if paper_split and include_cesm:
        raise ValueError(
            "the paper split selects low-energy (DM) images only (331 benign and 331 malignant); "
            "it cannot add the subtracted images (drop --include-cesm or --paper-split)"
        )
    root = Path(root).resolve()
    kinds = ("DM", "CM") if include_cesm else ("DM",)
    files = {kind: _jpegs(find_folder(root, FOLDERS[kind])) for kind in kinds}
    regions = read_regions(find_file(root, SEGMENTATIONS), key=image_key)
    sheet_path = _annotation_file(root)
    sheet = read_table(sheet_path, SHEET, REQUIRED)
    label_column = find_column(sheet, LABEL_COLUMN)
    if label_column is None:
        raise SourceError(f"{sheet_path}: no column {LABEL_COLUMN[0]!r} (the pathology label)")

    rows: dict[str, dict] = {}
    for index, record in enumerate(sheet.to_dict("records")):
        if not any(str(value).strip() for value in record.values()):
            continue  # spreadsheets often end in blank rows
        kind = _choice(record, "Type", TYPES, sheet_path, index)
        if kind not in kinds:
            continue
        key = image_key(record["Image_name"])
        if not key:
            raise SourceError(f"{where(sheet_path, index, 'Image_name')}: empty")
        row = {
            "image_id": key,
            "patient_id": _patient(record, sheet_path, index),
            "dataset": "cdd-cesm",
            "path": str(files[kind].get(key, root / FOLDERS[kind] / f"{key}.jpg")),
            "view": _choice(record, "View", {"CC": "CC", "MLO": "MLO"}, sheet_path, index),
            "laterality": _choice(record, "Side", {"L": "L", "R": "R"}, sheet_path, index),
            "label": _label(record, label_column, sheet_path, index),
            "birads": _birads(record, sheet_path, index),
            "roi": regions.get(key, []),
            "split": "",  # drawn by patient below, once the images are known
            "image_kind": IMAGE_KINDS[kind],
        }
        row["study_id"] = row["patient_id"]
        row["has_roi"] = bool(row["roi"])
        _merge(rows, row, sheet_path, index)

    frame = drop_missing(new_frame(list(rows.values())), allow_missing)
    if frame.empty:
        raise SourceError(f"{sheet_path}: no {' or '.join(kinds)} images listed")
    if paper_split:
        return papers_split(frame, seed=seed)
    frame["split"] = train_test_by_patient(frame["patient_id"], frame["label"], seed=seed)
    return frame


def _annotation_file(root: Path) -> Path:
    # TCIA ships the sheet as XLSX; a CSV export of its 'all' sheet works the same.
    for suffix in (".xlsx", ".csv"):
        try:
            return find_file(root, ANNOTATIONS + suffix)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{root}: no '{ANNOTATIONS}.xlsx' (or .csv) in this folder or below it")


def _jpegs(folder: Path) -> dict[str, Path]:
    return {image_key(path.name): path for path in sorted(folder.iterdir()) if path.suffix.lower() in (".jpg", ".jpeg")}


def _choice(record: dict, column: str, allowed: dict, path: Path, index: int) -> str:
    value = re.sub(r"\s+", "", str(record[column])).upper()
    if value not in allowed:
        raise SourceError(f"{where(path, index, column)}: {record[column]!r}, expected one of {', '.join(allowed)}")
    return allowed[value]


def _patient(record: dict, path: Path, index: int) -> str:
    value = str(record["Patient_ID"]).strip()
    value = value[:-2] if value.endswith(".0") else value  # a spreadsheet number read as a float
    if not value:
        raise SourceError(f"{where(path, index, 'Patient_ID')}: empty")
    return value


def _label(record: dict, column: str, path: Path, index: int) -> str:
    value = str(record[column]).strip().lower()
    if not value:
        return "unknown"
    if value not in LABELS:
        raise SourceError(f"{where(path, index, column)}: {record[column]!r}, expected Normal, Benign or Malignant")
    return LABELS[value]


def _birads(record: dict, path: Path, index: int):
    # The column is mostly a number; anything else (empty, "4a") is left out rather than guessed.
    text = str(record["BIRADS"]).strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if not number.is_integer() or not 0 <= number <= 6:
        raise SourceError(f"{where(path, index, 'BIRADS')}: {text!r}, expected a BI-RADS category 0-6")
    return int(number)


def _merge(rows: dict[str, dict], row: dict, path: Path, index: int) -> None:
    """Keep one row per image; a repeated image keeps its worst label and highest BI-RADS."""
    seen = rows.get(row["image_id"])
    if seen is None:
        rows[row["image_id"]] = row
        return
    for field in ("patient_id", "view", "laterality"):
        if seen[field] != row[field]:
            raise SourceError(
                f"{where(path, index)}: image {row['image_id']} has {field} {row[field]!r} here "
                f"but {seen[field]!r} on an earlier row"
            )
    log.warning("%s: image %s is listed more than once; keeping its worst label", where(path, index), row["image_id"])
    seen["label"] = min(seen["label"], row["label"], key=SEVERITY.index)
    birads = [value for value in (seen["birads"], row["birads"]) if value is not None]
    seen["birads"] = max(birads) if birads else None
