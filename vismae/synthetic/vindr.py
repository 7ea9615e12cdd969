"""A VinDr-Mammo phantom: DICOM studies and the three CSVs, laid out as the PhysioNet download.

    breast-level_annotations.csv   one row per image
    finding_annotations.csv        one row per box; ['No Finding'] for an image without one
    metadata.csv                   DICOM attribute names as headers, one with a trailing space
    images/<study_id>/<image_id>.dicom

One study per patient, four images (R/L x CC/MLO), 32-hex ids; the DICOM UIDs are those ids
as "2.25." UIDs. The detector profile, and with it the DICOM variant and for one profile the
image size, changes from study to study (see vindr_profiles). Boxes are loose, as annotators
draw them, in original pixels; the one around a finding at the chest wall reaches a few pixels
past the image edge. Patient name and birth date live in the DICOM files only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation

from vismae.synthetic.cohort import SCREENING, SIDES, VIEWS, Patient, sample_cohort
from vismae.synthetic.dicom_writer import new_dataset, save, set_pixels, uid_from_hex
from vismae.synthetic.lesions import DrawnLesion
from vismae.synthetic.render import add_noise, image_rng, render_view
from vismae.synthetic.vindr_profiles import PROFILES, DetectorProfile, encode, windows

BREAST_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]
FINDING_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]
# The trailing space after "Image Laterality" is in the real file's header too.
METADATA_COLUMNS = [
    "SOP Instance UID", "Series Instance UID", "Patient's Age", "View Position", "Image Laterality ",
    "Photometric Interpretation", "Rows", "Columns", "Bits Stored", "Window Center", "Window Width",
    "Rescale Intercept", "Rescale Slope", "Manufacturer", "Manufacturer's Model Name",
]
TOP_LEVEL = ("images", "breast-level_annotations.csv", "finding_annotations.csv", "metadata.csv")
SPLIT_NAMES = {"train": "training", "test": "test"}
NOISE = 0.012
STUDY_YEAR = 2019


def write_vindr(out: Path, n_patients: int, seed: int, image_size: tuple[int, int]) -> None:
    patients = sample_cohort(n_patients, seed, SCREENING)
    ids = np.random.default_rng([seed, 0x1D5])  # ids and annotators' box margins
    breast_rows, finding_rows, metadata_rows = [], [], []
    for patient in patients:
        study_id = ids.bytes(16).hex()
        profile = PROFILES[patient.index % len(PROFILES)]
        size = profile.image_size(image_size)
        for side in SIDES:
            breast = patient.breasts[side]
            for view in VIEWS:
                row = {
                    "study_id": study_id, "series_id": ids.bytes(16).hex(), "image_id": ids.bytes(16).hex(),
                    "laterality": side, "view_position": view, "height": size[0], "width": size[1],
                    "breast_birads": f"BI-RADS {breast.birads}",
                    "breast_density": f"DENSITY {patient.density}",
                    "split": SPLIT_NAMES[patient.split],
                }
                scene = render_view(patient, breast, view, size, seed)
                image = add_noise(scene.mammogram(), image_rng(seed, patient, side, view, stream=1), NOISE)
                path = out / "images" / study_id / f"{row['image_id']}.dicom"
                _write_dicom(path, image, profile, patient, row)
                breast_rows.append(row)
                finding_rows.extend(_finding_rows(row, scene.annotated(), ids))
                metadata_rows.append(_metadata_row(row, patient, profile))
    for name, rows, columns in (
        ("breast-level_annotations.csv", breast_rows, BREAST_COLUMNS),
        ("finding_annotations.csv", finding_rows, FINDING_COLUMNS),
        ("metadata.csv", metadata_rows, METADATA_COLUMNS),
    ):
        pd.DataFrame(rows, columns=columns).to_csv(out / name, index=False)


def finding_categories(drawn: DrawnLesion) -> list[str]:
    lesion = drawn.lesion
    if lesion.kind == "lymph_node":
        return ["Suspicious Lymph Node"]
    if lesion.kind == "calcifications":
        return ["Suspicious Calcification"]
    categories = ["Mass"]
    if lesion.shape == "spiculated":
        categories.append("Architectural Distortion")
    if lesion.with_calcifications:
        categories.append("Suspicious Calcification")
    return categories


def _finding_rows(image_row: dict, annotated: list[DrawnLesion], rng) -> list[dict]:
    if not annotated:
        return [{**image_row, "finding_categories": str(["No Finding"]), "finding_birads": ""}]
    rows = []
    for drawn in annotated:
        xmin, ymin, xmax, ymax = drawn.box()
        # Annotators draw loose boxes: a margin of about a tenth of the finding, never none.
        margin = 0.1 * max(xmax - xmin, ymax - ymin) + 2
        xmin, ymin, xmax, ymax = (
            value + sign * margin * rng.uniform(0.6, 1.4)
            for value, sign in zip((xmin, ymin, xmax, ymax), (-1, -1, 1, 1))
        )
        birads = drawn.lesion.birads
        rows.append({
            **image_row,
            "finding_categories": str(finding_categories(drawn)),
            "finding_birads": f"BI-RADS {birads}" if birads is not None else "",
            "xmin": round(xmin, 2), "ymin": round(ymin, 2), "xmax": round(xmax, 2), "ymax": round(ymax, 2),
        })
    return rows


def _metadata_row(row: dict, patient: Patient, profile: DetectorProfile) -> dict:
    centres, widths, _ = zip(*windows(profile))
    return {
        "SOP Instance UID": row["image_id"],
        "Series Instance UID": row["series_id"],
        "Patient's Age": f"{patient.age:03d}Y",
        "View Position": row["view_position"],
        "Image Laterality ": row["laterality"],
        "Photometric Interpretation": profile.photometric,
        "Rows": row["height"],
        "Columns": row["width"],
        "Bits Stored": profile.bits_stored,
        "Window Center": _listed(list(centres)),
        "Window Width": _listed(list(widths)),
        "Rescale Intercept": f"{profile.intercept:g}",
        "Rescale Slope": f"{profile.slope:g}",
        "Manufacturer": profile.manufacturer,
        "Manufacturer's Model Name": profile.model,
    }


def _listed(values: list[float]) -> str:
    """A number, or a list of them, as the metadata table shows a multi-valued attribute."""
    return str(values) if len(values) > 1 else str(values[0])


def _write_dicom(path: Path, image: np.ndarray, profile: DetectorProfile, patient: Patient, row: dict):
    ds = new_dataset(
        DigitalMammographyXRayImageStorageForPresentation,
        sop_instance=uid_from_hex(row["image_id"]),
        study=uid_from_hex(row["study_id"]),
        series=uid_from_hex(row["series_id"]),
    )
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = row["laterality"]
    ds.ViewPosition = row["view_position"]
    ds.BreastImplantPresent = "NO"
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model
    ds.StudyDate = f"{STUDY_YEAR}{1 + patient.index % 12:02d}{1 + patient.index % 28:02d}"
    # Made-up identifying attributes: a reader must never copy these into a manifest or log.
    ds.PatientName = f"DOE^JANE^PHANTOM{patient.index:04d}"
    ds.PatientID = f"PHANTOM{patient.index:06d}"
    ds.PatientBirthDate = f"{STUDY_YEAR - patient.age}0{1 + patient.index % 9}15"
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.PatientSex = "F"
    ds.ImagerPixelSpacing = [round(240 / image.shape[1], 4)] * 2  # a 24 cm wide detector
    stored = encode(image, profile, ds)
    set_pixels(ds, stored, profile.bits_stored, profile.photometric)
    save(ds, path, profile.transfer_syntax)
