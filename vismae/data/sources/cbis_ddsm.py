"""CBIS-DDSM: the four case-description CSVs and the DICOM download -> manifest.

The CSVs list one abnormality per row; the manifest has one row per full mammogram, named by
the first component of its CSV path (``Mass-Training_P_00001_LEFT_CC``). A download does not
match the CSV paths below that component (``1-1.dcm`` for ``000000.dcm``, other folder
names), so files are found by it alone. Each abnormality's ROI folder
(``<image>_<abnormality id>``) holds its mask and a cropped lesion in no fixed order: the mask
is the one the size of the full mammogram, which a header (no pixels) tells.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from vismae.data.manifest import new_frame
from vismae.data.missing import drop_missing, missing_message
from vismae.data.sources.headers import read_header
from vismae.data.sources.tables import SourceError, find_file, read_csv, where

log = logging.getLogger(__name__)

CSVS = {
    "mass_case_description_train_set.csv": "train",
    "calc_case_description_train_set.csv": "train",
    "mass_case_description_test_set.csv": "test",
    "calc_case_description_test_set.csv": "test",
}
# Columns by a spelling-proof name (lower case, underscores as spaces): the mass CSVs say
# "breast_density", the calc CSVs "breast density".
REQUIRED = (
    "patient id", "left or right breast", "image view", "abnormality id",
    "assessment", "pathology", "image file path", "roi mask file path",
)
LABELS = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
LATERALITIES = {"LEFT": "L", "RIGHT": "R"}
VIEWS = {"CC": "CC", "MLO": "MLO"}
SERIES_FOLDER = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$", re.IGNORECASE)
SIZE = ["Rows", "Columns"]


def read(root: Path, *, allow_missing: bool = False) -> pd.DataFrame:
    root = Path(root).resolve()
    abnormalities = [row for name, split in CSVS.items() for row in _abnormalities(root, name, split)]
    if not abnormalities:
        raise FileNotFoundError(f"{root}: none of the CBIS-DDSM case description CSVs ({', '.join(CSVS)})")
    images = _images(abnormalities)
    files = _dicoms_by_series(root)

    rows = []
    for image_id, image in images.items():
        full = _full_image(files.get(image_id, []))
        rows.append({
            "image_id": image_id,
            "patient_id": image["patient"],
            "study_id": image["patient"],
            "dataset": "cbis-ddsm",
            # An image not found on disk keeps its CSV path, which the missing check reports.
            "path": str(full or root / image["csv_path"]),
            "view": image["view"],
            "laterality": image["laterality"],
            "label": image["label"],
            "birads": image["birads"],
            "has_roi": False,
            "roi": [],
            "split": image["split"],
        })
    frame = drop_missing(new_frame(rows), allow_missing)
    _attach_masks(frame, images, files, allow_missing)
    return _test_wins(frame)


def _canonical(column: str) -> str:
    return re.sub(r"\s+", " ", column.replace("_", " ")).strip().lower()


def _abnormalities(root: Path, name: str, split: str) -> list[dict]:
    try:
        path = find_file(root, name)
    except FileNotFoundError:
        log.info("%s: no %s, reading the other case descriptions", root, name)
        return []
    table = read_csv(path)
    original = {_canonical(column): column for column in table.columns}
    missing = [column for column in REQUIRED if column not in original]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")

    def cell(record: dict, column: str) -> str:
        return record[original[column]].strip()

    def choice(record: dict, column: str, allowed: dict, index: int) -> str:
        value = cell(record, column).upper()
        if value not in allowed:
            raise SourceError(
                f"{where(path, index, original[column])}: {value!r}, expected one of {', '.join(allowed)}"
            )
        return allowed[value]

    rows = []
    for index, record in enumerate(table.to_dict("records")):
        image_path = cell(record, "image file path").replace("\\", "/")
        mask_path = cell(record, "roi mask file path").replace("\\", "/")
        image = image_path.split("/")[0]
        if not SERIES_FOLDER.match(image):
            raise SourceError(
                f"{where(path, index, original['image file path'])}: {image_path!r} does not start with "
                "a folder such as Mass-Training_P_00001_LEFT_CC"
            )
        abnormality = cell(record, "abnormality id")
        rows.append({
            "image": image,
            "csv_path": image_path,
            # The ROI folder is named in the CSV; fall back on the naming rule if it is empty.
            "roi_folder": mask_path.split("/")[0] if mask_path else f"{image}_{abnormality}",
            "patient": cell(record, "patient id"),
            "laterality": choice(record, "left or right breast", LATERALITIES, index),
            "view": choice(record, "image view", VIEWS, index),
            "label": choice(record, "pathology", LABELS, index),
            "birads": _assessment(cell(record, "assessment"), where(path, index, original["assessment"])),
            "split": split,
            "where": where(path, index),
        })
    return rows


def _assessment(text: str, place: str) -> int | None:
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not 0 <= number <= 6:
        raise SourceError(f"{place}: {text!r}, expected a BI-RADS assessment 0-6")
    return int(number)


def _images(abnormalities: list[dict]) -> dict[str, dict]:
    """One entry per full mammogram: malignant if any abnormality is, the highest BI-RADS."""
    images: dict[str, dict] = {}
    for row in abnormalities:
        image = images.setdefault(row["image"], {**row, "roi_folders": []})
        for field in ("patient", "laterality", "view", "split"):
            if image[field] != row[field]:
                raise SourceError(
                    f"{row['where']}: image {row['image']} has {field} {row[field]!r} here but "
                    f"{image[field]!r} in an earlier row"
                )
        if row["label"] == "malignant":
            image["label"] = "malignant"
        if row["birads"] is not None and (image["birads"] is None or row["birads"] > image["birads"]):
            image["birads"] = row["birads"]
        if row["roi_folder"] not in image["roi_folders"]:
            image["roi_folders"].append(row["roi_folder"])
    return images


def _dicoms_by_series(root: Path) -> dict[str, list[Path]]:
    """Every .dcm below ``root`` under the series folder (first CSV path component) it sits in."""
    files: dict[str, list[Path]] = {}
    for folder, _, names in os.walk(root):
        dicoms = sorted(name for name in names if name.lower().endswith(".dcm"))
        if not dicoms:
            continue
        parts = Path(folder).relative_to(root).parts
        series = next((part for part in reversed(parts) if SERIES_FOLDER.match(part)), None)
        if series is not None:
            files.setdefault(series, []).extend(Path(folder) / name for name in dicoms)
    return files


def _size(path: Path) -> tuple[int, int] | None:
    header = read_header(path, SIZE)
    if header is None or "Rows" not in header or "Columns" not in header:
        return None
    return int(header.Rows), int(header.Columns)


def _full_image(candidates: list[Path]) -> Path | None:
    if len(candidates) > 1:
        # Only a re-download into the same folder leaves several; the largest is the mammogram.
        log.warning("%s holds %d DICOMs; taking the largest", candidates[0].parent, len(candidates))
        return max(candidates, key=lambda path: _area(_size(path)))
    return candidates[0] if candidates else None


def _area(size: tuple[int, int] | None) -> int:
    return size[0] * size[1] if size else 0


def _find_mask(candidates: list[Path], image_size: tuple[int, int]) -> Path | None:
    """The file in an ROI folder that has the full image's size (the other is a small crop)."""
    sizes = {path: _size(path) for path in candidates}
    same = [path for path, size in sizes.items() if size == image_size]
    if same:
        return same[0]
    # A few masks are a handful of pixels off the image size; a crop is far smaller.
    largest = max(candidates, key=lambda path: _area(sizes[path]), default=None)
    if largest is not None and _area(sizes[largest]) >= _area(image_size) / 2:
        log.warning("%s: the mask is %s pixels, the image %s", largest, sizes[largest], image_size)
        return largest
    return None


def _attach_masks(frame: pd.DataFrame, images: dict, files: dict, allow_missing: bool) -> None:
    lost: list[str] = []
    rois = []
    for image_id, path in zip(frame["image_id"], frame["path"]):
        image_size = _size(Path(path))
        if image_size is None:
            raise SourceError(f"{path}: not a DICOM with Rows and Columns (image {image_id})")
        shapes = []
        for folder in images[image_id]["roi_folders"]:
            mask = _find_mask(files.get(folder, []), image_size)
            if mask is None:
                lost.append(folder)
            else:
                shapes.append({"type": "mask", "path": str(mask)})
        rois.append(shapes)
    frame["roi"] = pd.Series(rois, index=frame.index, dtype=object)
    frame["has_roi"] = [bool(shapes) for shapes in rois]
    if lost:
        total = sum(len(images[image_id]["roi_folders"]) for image_id in frame["image_id"])
        message = missing_message(len(lost), total, "ROI masks (no file the image's size in the ROI folder)", lost)
        if not allow_missing:
            raise FileNotFoundError(
                f"{message}; allow missing files (--allow-missing) to keep those images without them"
            )
        log.warning("kept images without their mask: %s", message)


def _test_wins(frame: pd.DataFrame) -> pd.DataFrame:
    """Put every image of a patient listed in both train and test into test.

    The mass and calc CSVs are split separately, so one woman can sit on both sides;
    moving her to test keeps the test set free of anything the model trained on.
    """
    in_test = set(frame.loc[frame["split"] == "test", "patient_id"])
    moved = (frame["split"] == "train") & frame["patient_id"].isin(in_test)
    if moved.any():
        log.warning(
            "moved %d training images of %d patients who also have test images to test",
            int(moved.sum()), frame.loc[moved, "patient_id"].nunique(),
        )
        frame.loc[moved, "split"] = "test"
    return frame
