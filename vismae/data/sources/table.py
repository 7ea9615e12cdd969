"""A generic CSV for in-house data -> manifest.

Only ``path`` is required. Other columns are optional and found by common aliases, compared
without case, spaces or underscores (``ViewPosition``, ``ImageLaterality``, ``pathology``,
``patient`` ...). What is absent is filled in: view and laterality from the DICOM header,
image_id from the file name, patient_id from image_id, split by a seeded patient-grouped
10:1 draw, label ``unknown``. Relative paths are taken from ``root`` when given, else from
the CSV's folder.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from vismae.data.manifest import new_frame
from vismae.data.missing import drop_missing
from vismae.data.sources.headers import read_header, text
from vismae.data.sources.tables import SourceError, find_column, read_csv, squeeze, where
from vismae.data.splits import train_test_by_patient

log = logging.getLogger(__name__)

ALIASES = {
    "path": ("path", "file path", "image path", "file", "filename", "dicom path"),
    "image_id": ("image_id", "image", "SOPInstanceUID"),
    "patient_id": ("patient_id", "patient", "PatientID", "subject_id", "subject"),
    "study_id": ("study_id", "study", "StudyInstanceUID"),
    "view": ("view", "ViewPosition", "image view"),
    "laterality": ("laterality", "ImageLaterality", "side", "left or right breast"),
    "label": ("label", "pathology", "diagnosis", "class"),
    "birads": ("birads", "breast_birads", "assessment"),
    "roi": ("roi",),
    "mask": ("mask", "mask path", "roi mask", "roi mask path"),
    "has_roi": ("has_roi",),
    "split": ("split", "set", "subset", "partition"),
}
VIEWS = {"CC": "CC", "MLO": "MLO"}
LATERALITIES = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}
# Keys compared squeezed (no case, spaces or underscores): BENIGN_WITHOUT_CALLBACK -> benign.
LABELS = {
    "benign": "benign", "malignant": "malignant", "normal": "normal", "unknown": "unknown",
    "benignwithoutcallback": "benign", "": "unknown",
}
SPLITS = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
BIRADS = re.compile(r"^(?:BI-?RADS)?\s*([0-6])(?:\.0)?[ABC]?$", re.IGNORECASE)
HEADER_TAGS = ["ViewPosition", "ImageLaterality", "Laterality"]
SHOWN = 5


def read(root: Path | None, *, csv: Path | None = None, seed: int = 0, allow_missing: bool = False) -> pd.DataFrame:
    """``root`` is the CSV itself, or the folder relative paths start from (then ``csv`` names the CSV)."""
    csv, base = _locate(root, csv)
    table = read_csv(csv)
    columns = {name: find_column(table, aliases) for name, aliases in ALIASES.items()}
    if columns["path"] is None:
        raise SourceError(f"{csv}: no path column (one of {', '.join(ALIASES['path'])})")
    present = {name: column for name, column in columns.items() if column is not None}
    log.info("%s: columns %s", csv, ", ".join(f"{column!r} as {name}" for name, column in present.items()))

    records = table.to_dict("records")
    if not records:
        raise SourceError(f"{csv}: no rows")
    rows = [_row(record, index, present, csv, base) for index, record in enumerate(records)]
    _fill_ids(rows, csv)
    rows = drop_missing(pd.DataFrame(rows), allow_missing).to_dict("records")
    _fill_from_headers(rows, csv)
    if "split" in present:
        _check_no_leak(rows, csv)
    frame = new_frame(rows)
    if "split" not in present:
        log.info("%s: no split column; patients split 10:1 into train and test with seed %d", csv, seed)
        frame["split"] = train_test_by_patient(frame["patient_id"], frame["label"], seed=seed)
    return frame


def _locate(root: Path | None, csv: Path | None) -> tuple[Path, Path]:
    if csv is None:
        if root is None or not Path(root).is_file():
            raise FileNotFoundError(f"{root}: give the table CSV as the root or name it separately")
        csv = Path(root)
        root = None
    csv = Path(csv).resolve()
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no such CSV")
    base = Path(root).resolve() if root is not None else csv.parent
    return csv, base


def _cell(record: dict, present: dict, name: str) -> str:
    return str(record[present[name]]).strip() if name in present else ""


def _choice(value: str, allowed: dict, place: str, name: str, key=str.upper):
    if key(value) not in allowed:
        expected = ", ".join(str(option) for option in allowed if option)
        raise SourceError(f"{place}: {name} {value!r}, expected one of {expected}")
    return allowed[key(value)]


def _resolved(path_text: str, base: Path) -> str:
    path = Path(path_text)
    return str(path if path.is_absolute() else (base / path).resolve())


def _row(record: dict, index: int, present: dict, csv: Path, base: Path) -> dict:
    def place(name: str) -> str:
        return where(csv, index, present[name]) if name in present else str(csv)

    def cell(name: str) -> str:
        return _cell(record, present, name)

    def optional(name: str, allowed: dict, key=str.upper) -> str:
        # Empty view and laterality are read from the DICOM header later.
        return _choice(cell(name), allowed, place(name), name, key) if cell(name) else ""

    if not cell("path"):
        raise SourceError(f"{place('path')}: empty")
    row = {
        "line": index,
        "path": _resolved(cell("path"), base),
        "image_id": cell("image_id"),
        "patient_id": cell("patient_id"),
        "study_id": cell("study_id"),
        "dataset": "table",
        "view": optional("view", VIEWS),
        "laterality": optional("laterality", LATERALITIES),
        "label": _choice(cell("label"), LABELS, place("label"), "label", key=squeeze),
        "birads": _birads(cell("birads"), place("birads")) if cell("birads") else None,
        "roi": _roi(record, present, csv, index, base),
        "split": _choice(cell("split"), SPLITS, place("split"), "split", key=str.lower) if "split" in present else "",
    }
    row["has_roi"] = bool(row["roi"])
    if cell("has_roi"):
        stated = _choice(cell("has_roi"), BOOLEANS, place("has_roi"), "has_roi", key=str.lower)
        if stated != row["has_roi"]:
            # The manifest ties ROI presence to its geometry: routing by a flag without a
            # shape could not be checked or drawn.
            raise SourceError(
                f"{where(csv, index)}: has_roi is {cell('has_roi')!r} but the row has "
                f"{len(row['roi'])} ROI shapes (give them in a roi or mask column)"
            )
    return row


def _birads(value: str, place: str) -> int:
    match = BIRADS.match(value)
    if match is None:
        raise SourceError(f"{place}: birads {value!r}, expected a category 0-6 such as 4 or BI-RADS 4")
    return int(match.group(1))


def _roi(record: dict, present: dict, csv: Path, index: int, base: Path) -> list:
    shapes = []
    roi_text = _cell(record, present, "roi")
    if roi_text:
        try:
            shapes = json.loads(roi_text)
        except json.JSONDecodeError as error:
            raise SourceError(f"{where(csv, index, present['roi'])}: not JSON ({error})") from None
        if not isinstance(shapes, list) or not all(isinstance(shape, dict) for shape in shapes):
            raise SourceError(f"{where(csv, index, present['roi'])}: expected a JSON list of shapes")
    mask = _cell(record, present, "mask")
    if mask:
        shapes.append({"type": "mask", "path": _resolved(mask, base)})
    return shapes


def _lines(csv: Path, indices: list[int]) -> str:
    shown = ", ".join(str(index + 2) for index in indices[:SHOWN])
    more = f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else ""
    return f"{csv}, lines {shown}{more}"


def _fill_ids(rows: list[dict], csv: Path) -> None:
    """image_id from the file name, patient_id from image_id, study_id from patient_id."""
    for row in rows:
        row["image_id"] = row["image_id"] or Path(row["path"]).stem
    seen, duplicates = set(), []
    for row in rows:
        if row["image_id"] in seen:
            duplicates.append(row["line"])
        seen.add(row["image_id"])
    if duplicates:
        raise SourceError(
            f"{_lines(csv, duplicates)}: image ids (file names where no image_id column) repeat "
            "earlier rows; give an image_id column with unique values"
        )
    anonymous = [row for row in rows if not row["patient_id"]]
    if anonymous:
        log.warning(
            "%s: %d rows without a patient id; each image counts as its own patient, so a "
            "patient's images may end up on both sides of a split", csv, len(anonymous),
        )
        for row in anonymous:
            row["patient_id"] = row["image_id"]
    for row in rows:
        row["study_id"] = row["study_id"] or row["patient_id"]


def _fill_from_headers(rows: list[dict], csv: Path) -> None:
    """View and laterality from DICOM headers where the CSV leaves them out."""
    not_dicom = []
    for row in rows:
        if row["view"] and row["laterality"]:
            continue
        header = read_header(Path(row["path"]), HEADER_TAGS)
        if header is None:
            not_dicom.append(row["line"])
            continue
        place = f"{where(csv, row['line'])}: DICOM header of {row['path']}"
        if not row["view"]:
            row["view"] = _choice(text(header, "ViewPosition"), VIEWS, place, "ViewPosition")
        if not row["laterality"]:
            laterality = text(header, "ImageLaterality") or text(header, "Laterality")
            row["laterality"] = _choice(laterality, LATERALITIES, place, "ImageLaterality/Laterality")
    if not_dicom:
        raise SourceError(
            f"{_lines(csv, not_dicom)}: view or laterality is empty and the file is not a DICOM to "
            "read it from; fill the view and laterality columns"
        )


def _check_no_leak(rows: list[dict], csv: Path) -> None:
    splits: dict[str, set] = {}
    for row in rows:
        splits.setdefault(row["patient_id"], set()).add(row["split"])
    leaking = sorted(patient for patient, sides in splits.items() if len(sides) > 1)
    if leaking:
        raise SourceError(
            f"{csv}: {len(leaking)} patients are in more than one split (first: {leaking[0]!r} in "
            f"{', '.join(sorted(splits[leaking[0]]))}); a patient must sit on one side"
        )
