"""The manifest: one CSV row per image, the one contract between datasets and training.

Every dataset reader ends in a manifest and nothing after it knows which dataset a row came
from. Columns, in this order:

    image_id, patient_id, study_id, dataset, path, view, laterality, label, birads,
    has_roi, roi, split, image_kind

``image_kind`` says what the pixels are: ``DM``, an ordinary mammogram (digital or digitized
film, and the low-energy image of contrast-enhanced mammography, which is one), or ``CESM``,
a recombined (subtracted) contrast-enhanced image, which looks nothing like a mammogram; empty
where the reader does not say. It is optional on reading: a manifest written before it existed
reads with every kind empty. A model must not learn from both kinds unawares
(``mixed_image_kinds``).

A prepared cache's manifest has the same columns plus ``mask_path`` (empty when the image
has no ROI). In memory a manifest is a pandas DataFrame with ``birads`` as a nullable
integer, ``has_roi`` as bool and ``roi`` as a list of shape dicts; paths are absolute. On
disk ``roi`` is JSON and paths under the manifest's folder are written relative to it, so a
cache folder can be moved as a whole.

ROI shapes, in original pixel coordinates (x to the right, y down):

    {"type": "box", "xmin": .., "ymin": .., "xmax": .., "ymax": ..}
    {"type": "polygon", "points": [[x, y], ...]}           (closed)
    {"type": "ellipse", "cx": .., "cy": .., "rx": .., "ry": .., "theta": radians}
    {"type": "point", "cx": .., "cy": ..}                  (drawn as a small disk)
    {"type": "mask", "path": "..."}                       (a binary image the size of the image)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from vismae.io import atomic_path

COLUMNS = [
    "image_id",
    "patient_id",
    "study_id",
    "dataset",
    "path",
    "view",
    "laterality",
    "label",
    "birads",
    "has_roi",
    "roi",
    "split",
]
CACHE_COLUMNS = COLUMNS + ["mask_path"]
# Written to every manifest after the required columns; optional on reading (older manifests
# lack it), so it is in neither list above.
IMAGE_KIND = "image_kind"
IMAGE_KINDS = ("DM", "CESM", "")  # "": not said

VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
LABELS = ("benign", "malignant", "normal", "unknown")
# The labels most severe first: a patient, or a breast, with one malignant image is malignant.
SEVERITY = ("malignant", "benign", "normal", "unknown")
SPLITS = ("train", "val", "test")
ROI_SHAPE_KEYS = {
    "box": ("xmin", "ymin", "xmax", "ymax"),
    "polygon": ("points",),
    "ellipse": ("cx", "cy", "rx", "ry"),
    "point": ("cx", "cy"),
    "mask": ("path",),
}
VIEW_NAMES = ("RCC", "LCC", "RMLO", "LMLO")


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the file, row and column."""


def view_names(frame: pd.DataFrame) -> pd.Series:
    """Each row's view among the four of screening (``VIEW_NAMES``): RCC, LCC, RMLO, LMLO."""
    return frame["laterality"].astype(str) + frame["view"].astype(str)


def _where(source: str | os.PathLike | None, row_number: int | None = None) -> str:
    place = str(source) if source is not None else "manifest"
    # Row numbers count the header as line 1, as a spreadsheet or an editor shows them.
    return f"{place}, line {row_number + 2}" if row_number is not None else place


def _bad_rows(mask: pd.Series) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask.to_numpy())]


def _check_choice(frame: pd.DataFrame, column: str, allowed: tuple, source) -> None:
    bad = _bad_rows(~frame[column].isin(allowed))
    if bad:
        first = bad[0]
        raise ManifestError(
            f"{_where(source, first)}: column '{column}' is {frame[column].iloc[first]!r}, "
            f"expected one of {', '.join(allowed)} ({len(bad)} bad rows in all)"
        )


def _check_roi(shapes, source, row_number: int) -> None:
    if not isinstance(shapes, list):
        raise ManifestError(f"{_where(source, row_number)}: column 'roi' must be a JSON list")
    for shape in shapes:
        kind = shape.get("type") if isinstance(shape, dict) else None
        if kind not in ROI_SHAPE_KEYS:
            raise ManifestError(
                f"{_where(source, row_number)}: ROI shape {shape!r} has type {kind!r}, "
                f"expected one of {', '.join(ROI_SHAPE_KEYS)}"
            )
        missing = [key for key in ROI_SHAPE_KEYS[kind] if key not in shape]
        if missing:
            raise ManifestError(
                f"{_where(source, row_number)}: ROI {kind} lacks {', '.join(missing)}"
            )


def validate(frame: pd.DataFrame, source: str | os.PathLike | None = None) -> pd.DataFrame:
    """Check a manifest in memory form; return it unchanged or raise ManifestError."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{_where(source)}: missing columns {', '.join(missing)}")
    for column in ("image_id", "patient_id", "path"):
        empty = _bad_rows(frame[column].isna() | (frame[column].astype(str).str.strip() == ""))
        if empty:
            raise ManifestError(f"{_where(source, empty[0])}: column '{column}' is empty")
    _check_choice(frame, "view", VIEWS, source)
    _check_choice(frame, "laterality", LATERALITIES, source)
    _check_choice(frame, "label", LABELS, source)
    _check_choice(frame, "split", SPLITS, source)
    if IMAGE_KIND in frame.columns:
        _check_choice(frame, IMAGE_KIND, IMAGE_KINDS, source)
    birads = frame["birads"]
    bad = _bad_rows(birads.notna() & ~birads.isin(range(0, 7)))
    if bad:
        raise ManifestError(
            f"{_where(source, bad[0])}: column 'birads' is {birads.iloc[bad[0]]!r}, "
            "expected an integer 0-6 or empty"
        )
    duplicated = _bad_rows(frame["image_id"].duplicated())
    if duplicated:
        raise ManifestError(
            f"{_where(source, duplicated[0])}: image_id {frame['image_id'].iloc[duplicated[0]]!r} "
            f"appears more than once ({len(duplicated)} duplicates in all)"
        )
    for row_number, (has_roi, shapes) in enumerate(zip(frame["has_roi"], frame["roi"])):
        _check_roi(shapes, source, row_number)
        if bool(has_roi) != bool(shapes):
            raise ManifestError(
                f"{_where(source, row_number)}: has_roi is {bool(has_roi)} but the roi column "
                f"holds {len(shapes)} shapes"
            )
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        patient = leaking.index[0]
        sides = sorted(frame.loc[frame["patient_id"] == patient, "split"].unique())
        raise ManifestError(
            f"{_where(source)}: patient {patient!r} is in splits {', '.join(sides)}; a patient "
            f"must sit on one side of a split ({len(leaking)} such patients)"
        )
    return frame


def new_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest frame from row dicts (readers use this), with the column types fixed."""
    columns = _written_columns(rows[0] if rows else {})
    frame = pd.DataFrame(rows, columns=columns)
    return _normalize(frame)


def _written_columns(columns) -> list[str]:
    """The manifest columns in file order; a cache's (with ``mask_path``) where ``columns`` has it."""
    return COLUMNS + [IMAGE_KIND] + (["mask_path"] if "mask_path" in columns else [])


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in ("image_id", "patient_id", "study_id", "dataset", "view", "laterality", "label", "split"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
    frame["birads"] = pd.array(
        [pd.NA if pd.isna(value) else int(value) for value in frame["birads"]], dtype="Int64"
    )
    frame["has_roi"] = frame["has_roi"].astype(bool)
    frame["roi"] = [list(shapes) if isinstance(shapes, list) else [] for shapes in frame["roi"]]
    kinds = frame[IMAGE_KIND] if IMAGE_KIND in frame.columns else pd.Series("", index=frame.index)
    frame[IMAGE_KIND] = kinds.astype(object).where(kinds.notna(), "").astype(str)
    return frame


def image_kind_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Images per ``image_kind`` (``""`` counted as ``unknown``); every image unknown for a
    frame without the column."""
    kinds = frame[IMAGE_KIND] if IMAGE_KIND in frame.columns else pd.Series("", index=frame.index)
    counts = kinds.fillna("").replace("", "unknown").value_counts()
    return {str(kind): int(n) for kind, n in counts.sort_index().items()}


def mixed_image_kinds(frame: pd.DataFrame) -> str | None:
    """A sentence naming the counts when ``frame`` holds both DM and CESM images, else None.
    Unknown kinds mix with nothing: an older manifest says nothing either way."""
    counts = {kind: n for kind, n in image_kind_counts(frame).items() if kind != "unknown"}
    if len(counts) < 2:
        return None
    named = " and ".join(f"{n} {kind}" for kind, n in counts.items())
    return (
        f"the rows mix image kinds ({named} images): a low-energy mammogram and a subtracted contrast "
        f"image look nothing alike, and one model would learn both; keep one kind (the manifest's "
        f"'{IMAGE_KIND}' column; for CDD-CESM, build it without --include-cesm)"
    )


def require_one_image_kind(frame: pd.DataFrame, what: str) -> None:
    """Raise ManifestError, naming the counts, when ``frame`` mixes DM and CESM images."""
    problem = mixed_image_kinds(frame)
    if problem:
        raise ManifestError(f"{what}: {problem}")


def _parse_bool(value, source, row_number: int) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ManifestError(f"{_where(source, row_number)}: has_roi is {value!r}, expected true or false")


def _parse_roi(text, source, row_number: int) -> list:
    if pd.isna(text) or str(text).strip() == "":
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{_where(source, row_number)}: column 'roi' is not JSON ({error})") from None


def _parse_birads(value, source, row_number: int):
    if pd.isna(value) or str(value).strip() == "":
        return pd.NA
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise ManifestError(f"{_where(source, row_number)}: birads is {value!r}, expected an integer")
    return int(number)


def _resolve(path_text, base: Path) -> str:
    if pd.isna(path_text) or str(path_text) == "":
        return ""
    # normpath, not resolve(): resolving touches the disk once per row, slow for 20,000 rows.
    return os.path.normpath(os.path.join(base, str(path_text)))


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest CSV; paths come back absolute."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    base = os.path.abspath(path.parent)
    raw["has_roi"] = [_parse_bool(v, path, i) for i, v in enumerate(raw["has_roi"])]
    raw["roi"] = [_parse_roi(v, path, i) for i, v in enumerate(raw["roi"])]
    raw["birads"] = pd.array([_parse_birads(v, path, i) for i, v in enumerate(raw["birads"])], dtype="Int64")
    raw["path"] = [_resolve(p, base) for p in raw["path"]]
    if "mask_path" in raw.columns:
        raw["mask_path"] = [_resolve(p, base) for p in raw["mask_path"]]
    for shapes in raw["roi"]:
        for shape in shapes if isinstance(shapes, list) else []:
            if isinstance(shape, dict) and shape.get("type") == "mask":
                shape["path"] = _resolve(shape["path"], base)
    frame = _normalize(raw)
    return validate(frame, path)


def _relative(path_text: str, base: Path) -> str:
    if not path_text:
        return ""
    path = Path(os.path.abspath(path_text))
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write a manifest atomically (a temporary file renamed into place)."""
    path = Path(path)
    frame = validate(_normalize(frame), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(path.parent))
    out = frame.copy()
    columns = _written_columns(out.columns)
    out["path"] = [_relative(p, base) for p in out["path"]]
    if "mask_path" in out.columns:
        out["mask_path"] = [_relative(p, base) for p in out["mask_path"].fillna("")]
    out["roi"] = [
        json.dumps(
            [
                {**shape, "path": _relative(shape["path"], base)} if shape.get("type") == "mask" else shape
                for shape in shapes
            ],
            separators=(",", ":"),
        )
        for shapes in out["roi"]
    ]
    out["has_roi"] = out["has_roi"].map({True: "true", False: "false"})
    out["birads"] = out["birads"].astype("string").fillna("")
    with atomic_path(path) as temporary:
        out[columns].to_csv(temporary, index=False)
    return path
