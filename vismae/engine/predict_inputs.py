"""What ``vismae predict`` reads, turned into the images a model takes: prepared exactly as
its training images were.

Three inputs are accepted:

* a folder of DICOM files, read by the folder reader (``vismae.data.sources.folder``: headers
  only, salted pseudonyms for patient, study and image ids, non-mammograms left out);
* a manifest of raw images (any reader's, or a table of one's own);
* a prepared cache's manifest (with ``mask_path``), whose ``prepare.json`` must match the
  model's preprocessing.

Raw images go through ``vismae.data.cache.prepare`` with the training cache's recorded settings
(``prepare.json``: size, bit depth, CLAHE, and the crop, flip, resize and pad it implies) into a
cache under the output folder: the very code that prepared the training images, so a test
image gets the same pixels, hence the same probability, as in the run's own predictions. Every
file that cannot be read or prepared is named with its reason and skipped.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vismae.data import cache
from vismae.data.manifest import read_manifest, write_manifest
from vismae.data.preprocess import Transform

SKIPPED_COLUMNS = ["image_id", "path", "stage", "reason"]
PREPARED_DIR = "prepared"


@dataclass
class PreparedInput:
    rows: pd.DataFrame  # cache manifest rows: path is the prepared image the model reads
    kind: str  # folder | manifest | cache
    skipped: pd.DataFrame  # image_id, path, stage, reason of every file left out
    transforms: dict[str, Transform] = field(default_factory=dict)  # image_id -> original-to-prepared transform
    originals: dict[str, str] = field(default_factory=dict)  # image_id -> original file (raw inputs)
    notes: list[str] = field(default_factory=list)
    cache_dir: Path | None = None  # the cache written under the output folder, if any


def no_skips() -> pd.DataFrame:
    return pd.DataFrame(columns=SKIPPED_COLUMNS)


def read_input(
    source: str | Path,
    preprocessing: dict | None,
    work_dir: str | Path,
    *,
    salt: str | None = None,
    salt_file: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PreparedInput:
    """The model-ready rows of ``source`` (a DICOM folder, a raw manifest or a cache manifest),
    preparing raw images into ``work_dir/prepared`` with ``preprocessing`` (a prepare.json)."""
    source = Path(source).expanduser().resolve()
    work_dir = Path(work_dir)
    if source.is_dir():
        frame, skipped = read_folder(source, work_dir, preprocessing, salt, salt_file, workers)
        return prepare_raw(frame, preprocessing, work_dir, workers, progress, "folder", skipped)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    frame = read_manifest(source)
    if "mask_path" in frame.columns:
        return cached_input(frame, source.parent, preprocessing)
    return prepare_raw(frame, preprocessing, work_dir, workers, progress, "manifest", no_skips())


def read_folder(root: Path, work_dir: Path, preprocessing, salt, salt_file, workers) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The folder reader's manifest of ``root`` and the files it left out. Without a salt (or a
    salt file) a one-off salt is drawn: ids are then stable within this prediction only, and
    the ``path`` column links each row to its file."""
    from vismae.data.sources import read_dataset

    if salt is None and salt_file is None:
        salt = secrets.token_hex(32)
    report = work_dir / "left_out.csv"
    allow = bool((preprocessing or {}).get("allow_for_processing", False))
    options = {"salt": salt, "salt_file": Path(salt_file) if salt_file else None, "report": report,
               "allow_for_processing": allow, "workers": workers}  # fmt: skip
    frame = read_dataset("folder", root, **options)
    left_out = pd.read_csv(report, dtype=str, keep_default_na=False)
    skipped = pd.DataFrame({"image_id": "", "path": left_out["path"], "stage": "folder", "reason": left_out["reason"]})
    return frame, skipped[SKIPPED_COLUMNS]


def _settings(preprocessing: dict) -> dict:
    values = preprocessing["preprocessing"]
    return {
        "size": tuple(values["size"]),
        "bits": int(values["bits"]),
        "clahe_clip": float(values["clahe_clip"]),
        "clahe_tiles": int(values["clahe_tiles"]),
        "point_radius": float(preprocessing.get("point_radius", 20.0)),
        "allow_for_processing": bool(preprocessing.get("allow_for_processing", False)),
    }


def prepare_raw(frame: pd.DataFrame, preprocessing: dict | None, work_dir: Path, workers, progress: bool, kind: str,
                skipped: pd.DataFrame) -> PreparedInput:  # fmt: skip
    """Raw rows prepared with the training cache's settings into ``work_dir/prepared``."""
    if preprocessing is None:
        raise ValueError(
            "the model's training preprocessing is unknown (its cache's prepare.json was not found), so raw images "
            "cannot be prepared as its training images were; give a cache manifest prepared with the same settings"
        )
    cache_dir = work_dir / PREPARED_DIR
    # ROI shapes are not needed to predict, and a mask file that moved would fail the image.
    blind = frame.assign(has_roi=False, roi=[[] for _ in range(len(frame))])
    manifest = write_manifest(blind, cache_dir / "input_manifest.csv")
    cache.prepare(manifest, cache_dir, workers=workers, progress=progress, **_settings(preprocessing))
    rows = read_manifest(cache_dir / "manifest.csv")
    report = pd.read_csv(cache_dir / "prepare_report.csv", dtype=str, keep_default_na=False)
    failed = pd.DataFrame({"image_id": report["image_id"], "path": report["path"], "stage": "prepare", "reason": report["reason"]})
    return PreparedInput(
        rows=rows,
        kind=kind,
        skipped=pd.concat([skipped, failed[SKIPPED_COLUMNS]], ignore_index=True),
        transforms=cache.read_transforms(cache_dir),
        originals=dict(zip(frame["image_id"], frame["path"])),
        cache_dir=cache_dir,
    )


def cached_input(frame: pd.DataFrame, cache_dir: Path, preprocessing: dict | None) -> PreparedInput:
    """Rows of a prepared cache, after checking that it was prepared as the training cache was."""
    notes = []
    saved_path = cache_dir / "prepare.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved is None or preprocessing is None:
        missing = saved_path if saved is None else "the model's training cache"
        notes.append(f"the preprocessing could not be compared ({missing} has no prepare.json); the cache is used as it is")
    else:
        differences = _differences(preprocessing, saved)
        if differences:
            raise ValueError(
                f"{saved_path}: this cache was prepared otherwise than the model's training images "
                f"({'; '.join(differences)}); prepare the raw images again, or give the raw manifest"
            )
    transforms = cache.read_transforms(cache_dir) if (cache_dir / "transforms.csv").is_file() else {}
    return PreparedInput(frame.reset_index(drop=True), "cache", no_skips(), transforms, {}, notes)


def _differences(model: dict, saved: dict) -> list[str]:
    wanted = {**model["preprocessing"], "allow_for_processing": model.get("allow_for_processing", False)}
    found = {**saved["preprocessing"], "allow_for_processing": saved.get("allow_for_processing", False)}
    return [f"{key} is {found.get(key)!r}, the model's {wanted.get(key)!r}" for key in sorted(wanted) if found.get(key) != wanted.get(key)]
