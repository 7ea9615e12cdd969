"""VinDr-Mammo: ``finding_annotations.csv`` -> manifest.

The file has one row per finding box and one ``['No Finding']`` row for an image without a
box, so it lists every image. Labels follow the ROI paper: BI-RADS 2-3 benign, 4-5 malignant;
BI-RADS 1 is kept as ``normal`` (pretraining uses it, classification leaves it out). An image
has an ROI when at least one of its rows has a box.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pandas as pd

from vismae.data.manifest import new_frame
from vismae.data.missing import drop_missing
from vismae.data.sources.tables import SourceError, read_csv, where

log = logging.getLogger(__name__)

FINDINGS = "finding_annotations.csv"
REQUIRED = (
    "study_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "finding_categories", "xmin", "ymin", "xmax", "ymax", "split",
)
BOX = ("xmin", "ymin", "xmax", "ymax")
LABELS = {1: "normal", 2: "benign", 3: "benign", 4: "malignant", 5: "malignant"}
SPLITS = {"training": "train", "test": "test"}
BIRADS = re.compile(r"^\s*BI-?RADS\s*([1-5])\s*$", re.IGNORECASE)
# Columns that describe the image, so every row of one image must agree on them.
IMAGE_FIELDS = ("study_id", "laterality", "view", "birads", "split")


def read(root: Path, *, allow_missing: bool = False) -> pd.DataFrame:
    root = Path(root).resolve()
    csv = root / FINDINGS
    if not csv.is_file():
        raise FileNotFoundError(f"{root}: no {FINDINGS}; expected the VinDr-Mammo folder")
    table = read_csv(csv, REQUIRED)
    images: dict[str, dict] = {}
    disagreeing = clipped_away = 0
    for index, record in enumerate(table.to_dict("records")):
        image = _image_fields(record, csv, index)
        categories = _categories(record, csv, index)
        box = _box(record, csv, index)
        if box is not None and "No Finding" in categories:
            disagreeing += 1
        seen = images.setdefault(image["image_id"], {**image, "boxes": []})
        for field in IMAGE_FIELDS:
            if seen[field] != image[field]:
                raise SourceError(
                    f"{where(csv, index)}: image {image['image_id']} has {field} {image[field]!r} "
                    f"here but {seen[field]!r} on an earlier line"
                )
        if box is not None:
            if box["xmax"] > box["xmin"] and box["ymax"] > box["ymin"]:
                seen["boxes"].append(box)
            else:
                clipped_away += 1
    if disagreeing:
        log.warning("%s: %d rows have a box but say 'No Finding'; their boxes are kept", csv, disagreeing)
    if clipped_away:
        log.warning("%s: %d boxes lie wholly outside their image and were dropped", csv, clipped_away)
    frame = new_frame([_manifest_row(root, image) for image in images.values()])
    return drop_missing(frame, allow_missing)


def _manifest_row(root: Path, image: dict) -> dict:
    path = root / "images" / image["study_id"] / f"{image['image_id']}.dicom"
    return {
        "image_id": image["image_id"],
        # VinDr publishes no patient id; a study is one woman's screening exam.
        "patient_id": image["study_id"],
        "study_id": image["study_id"],
        "dataset": "vindr",
        "path": str(path),
        "view": image["view"],
        "laterality": image["laterality"],
        "label": LABELS[image["birads"]],
        "birads": image["birads"],
        "has_roi": bool(image["boxes"]),
        "roi": image["boxes"],
        "split": image["split"],
    }


def _image_fields(record: dict, csv: Path, index: int) -> dict:
    def choice(column: str, allowed: dict) -> str:
        value = record[column].strip()
        if value not in allowed:
            raise SourceError(
                f"{where(csv, index, column)}: {value!r}, expected one of {', '.join(allowed)}"
            )
        return allowed[value]

    image_id, study_id = record["image_id"].strip(), record["study_id"].strip()
    for column, value in (("image_id", image_id), ("study_id", study_id)):
        if not value:
            raise SourceError(f"{where(csv, index, column)}: empty")
    birads = BIRADS.match(record["breast_birads"])
    if birads is None:
        raise SourceError(
            f"{where(csv, index, 'breast_birads')}: {record['breast_birads']!r}, "
            "expected 'BI-RADS 1' to 'BI-RADS 5'"
        )
    return {
        "image_id": image_id,
        "study_id": study_id,
        "laterality": choice("laterality", {"L": "L", "R": "R"}),
        "view": choice("view_position", {"CC": "CC", "MLO": "MLO"}),
        "birads": int(birads.group(1)),
        "split": choice("split", SPLITS),
    }


def _categories(record: dict, csv: Path, index: int) -> list[str]:
    # The column holds a Python list literal such as "['Mass', 'Suspicious Calcification']".
    text = record["finding_categories"]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SourceError(
            f"{where(csv, index, 'finding_categories')}: {text!r}, expected a list such as ['Mass']"
        )
    return value


def _number(record: dict, column: str, csv: Path, index: int) -> float:
    try:
        return float(record[column])
    except ValueError:
        raise SourceError(f"{where(csv, index, column)}: {record[column]!r}, expected a number") from None


def _box(record: dict, csv: Path, index: int) -> dict | None:
    """The row's box clipped to the image, or None for a row without one."""
    filled = [column for column in BOX if record[column].strip()]
    if not filled:
        return None
    if len(filled) < len(BOX):
        empty = next(column for column in BOX if column not in filled)
        raise SourceError(f"{where(csv, index, empty)}: empty while the other box columns are set")
    width = _number(record, "width", csv, index)
    height = _number(record, "height", csv, index)
    xmin, ymin, xmax, ymax = (_number(record, column, csv, index) for column in BOX)
    # A few annotated boxes reach slightly past the image border.
    return {
        "type": "box",
        "xmin": min(max(xmin, 0.0), width),
        "ymin": min(max(ymin, 0.0), height),
        "xmax": min(max(xmax, 0.0), width),
        "ymax": min(max(ymax, 0.0), height),
    }
