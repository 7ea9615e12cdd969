"""RSNA Screening Mammography Breast Cancer Detection, as downloaded -> manifest.

The folder holds ``train.csv`` (one row per image: site_id, patient_id, image_id,
laterality, view, age, cancer, biopsy, invasive, BIRADS, implant, density, machine_id,
difficult_negative_case) and ``train_images/<patient_id>/<image_id>.dcm``; ``test.csv`` and
``test_images/`` are read too when present, as unlabeled images.

Labels are per breast and come from the follow-up, not from a reading of the image:
``cancer = 1`` is malignant; ``cancer = 0`` with ``biopsy = 1`` is benign, which here means
"biopsied, and no cancer found", not a confirmed benign finding; everything else is normal
(not biopsied and no cancer in the follow-up). RSNA's ``BIRADS`` column has its own coding
(0 follow-up required, 1 rated negative, 2 rated normal), so it is not the BI-RADS
assessment scale and is not copied into ``birads``, which stays empty; it, and the other
columns the manifest has no place for, stay in ``train.csv``, joined on ``image_id``.

RSNA's patient and image ids are kept; a patient has one exam, so study_id is the patient.
Views other than CC and MLO (AT, LM, ML, LMO) are left out and counted. There is no split:
patients are split 10:1 into train and test, seeded, and with ``stratify_site`` the two
sites are split separately, so each keeps its share on both sides.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vismae.data.manifest import new_frame
from vismae.data.missing import drop_missing
from vismae.data.sources.left_out import count_reasons, write_report
from vismae.data.sources.tables import SourceError, find_file, read_csv, where
from vismae.data.splits import train_test_by_patient

log = logging.getLogger(__name__)

PARTS = {"train": ("train.csv", "train_images"), "test": ("test.csv", "test_images")}
REQUIRED = ("patient_id", "image_id", "laterality", "view")
LABELLED = ("cancer", "biopsy")
VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
FLAGS = ("0", "1")


def read(
    root: Path,
    *,
    seed: int = 0,
    stratify_site: bool = False,
    report: Path | None = None,
    allow_missing: bool = False,
) -> pd.DataFrame:
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    train_csv = find_file(root, PARTS["train"][0])
    images: list[dict] = []
    left_out: list[tuple[str, str]] = []
    for part, (name, folder) in PARTS.items():
        csv = train_csv if part == "train" else train_csv.parent / name
        if part == "test" and not csv.is_file():
            continue
        kept, dropped = _read_part(csv, train_csv.parent / folder, labelled=part == "train", site=stratify_site)
        images += kept
        left_out += dropped
    _check_unique(images)
    if not images:
        raise SourceError(f"{root}: no CC or MLO image listed (left out {count_reasons(left_out)})")
    listed = new_frame([image["row"] for image in images])
    frame = drop_missing(listed, allow_missing)
    left_out += [(path, "missing on disk") for path in sorted(set(listed["path"]) - set(frame["path"]))]
    sites = _sites(images) if stratify_site else None
    frame["split"] = _split(frame, [sites[i] for i in frame["image_id"]] if sites else None, seed)
    if report is not None:
        write_report(report, left_out)
    log.info(
        "%s: kept %d CC/MLO images of %d patients; left out %s%s", root, len(frame),
        frame["patient_id"].nunique(), count_reasons(left_out),
        f"; listed in {report}" if report is not None and left_out else "",
    )
    return frame


def _read_part(csv: Path, folder: Path, labelled: bool, site: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    required = REQUIRED + (LABELLED if labelled else ()) + (("site_id",) if site else ())
    table = read_csv(csv, required)
    kept, left_out = [], []
    for index, record in enumerate(table.to_dict("records")):
        patient, image_id = record["patient_id"].strip(), record["image_id"].strip()
        for column, value in (("patient_id", patient), ("image_id", image_id)):
            if not value:
                raise SourceError(f"{where(csv, index, column)}: empty")
        path = str(folder / patient / f"{image_id}.dcm")
        laterality = record["laterality"].strip().upper()
        if laterality not in LATERALITIES:
            raise SourceError(f"{where(csv, index, 'laterality')}: {laterality!r}, expected L or R")
        view = record["view"].strip().upper()
        if view not in VIEWS:
            left_out.append((path, f"view {view}" if view else "no view"))
            continue
        kept.append({
            "where": where(csv, index),
            "site": record["site_id"].strip() if site else "",
            "row": {
                "image_id": image_id,
                "patient_id": patient,
                "study_id": patient,
                "dataset": "rsna",
                "path": path,
                "view": view,
                "laterality": laterality,
                "label": _label(record, csv, index) if labelled else "unknown",
                "birads": None,  # RSNA's BIRADS column is not the assessment scale
                "has_roi": False,
                "roi": [],
                "split": "",
            },
        })
    return kept, left_out


def _label(record: dict, csv: Path, index: int) -> str:
    flags = {}
    for column in LABELLED:
        value = record[column].strip()
        if value not in FLAGS:
            raise SourceError(f"{where(csv, index, column)}: {value!r}, expected 0 or 1")
        flags[column] = value == "1"
    if flags["cancer"]:
        return "malignant"
    # Biopsied without cancer found: a benign outcome by follow-up, not a graded benign lesion.
    return "benign" if flags["biopsy"] else "normal"


def _check_unique(images: list[dict]) -> None:
    seen: dict[str, str] = {}
    for image in images:
        image_id = image["row"]["image_id"]
        if image_id in seen:
            raise SourceError(f"{image['where']}: image_id {image_id} is listed already at {seen[image_id]}")
        seen[image_id] = image["where"]


def _sites(images: list[dict]) -> dict[str, str]:
    """Each image's site; a patient seen at two sites cannot be split by site."""
    first: dict[str, dict] = {}
    for image in images:
        patient = image["row"]["patient_id"]
        seen = first.setdefault(patient, image)
        if seen["site"] != image["site"]:
            raise SourceError(
                f"{image['where']}: patient {patient} is at site {image['site']!r} here but at "
                f"{seen['site']!r} at {seen['where']}; split without stratifying by site"
            )
    return {image["row"]["image_id"]: image["site"] for image in images}


def _split(frame: pd.DataFrame, sites: list[str] | None, seed: int) -> np.ndarray:
    """The patient-grouped 10:1 split, drawn within each site when ``sites`` is given."""
    if sites is None:
        return train_test_by_patient(frame["patient_id"], frame["label"], seed=seed)
    sites = np.asarray(sites, dtype=object)
    patients = frame["patient_id"].to_numpy()
    split = np.empty(len(frame), dtype=object)
    labels = frame["label"].to_numpy()
    for site in sorted(set(sites)):
        rows = np.flatnonzero(sites == site)
        split[rows] = train_test_by_patient(patients[rows], labels[rows], seed=seed)
    return split
