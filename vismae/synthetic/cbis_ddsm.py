"""A CBIS-DDSM phantom: scanned-film DICOMs, ROI masks and crops, and the four case CSVs.

    mass_case_description_{train,test}_set.csv      one row per mass, per view
    calc_case_description_{train,test}_set.csv      one row per calcification group, per view
    CBIS-DDSM/Mass-Training_P_00004_LEFT_CC/<study>/<series>/1-1.dcm              full mammogram
    CBIS-DDSM/Mass-Training_P_00004_LEFT_CC_1/<study>/<series>/1-1.dcm, 1-2.dcm   mask and crop

Like the TCIA download, the files do not match the CSV paths letter for letter: the CSV says
000000.dcm/000001.dcm under other folder names, and only the first path component agrees. In
an ROI folder the mask and the cropped lesion are numbered either way round; the mask is the
binary image of the full mammogram's size. A breast with a mass and a calcification group is
stored twice, once under Mass- and once under Calc-. Only breasts with findings are imaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

from vismae.synthetic.cohort import CASE_SERIES, VIEWS, Breast, Patient, sample_cohort
from vismae.synthetic.dicom_writer import new_dataset, save, set_pixels
from vismae.synthetic.film import scanned_film
from vismae.synthetic.lesions import DrawnLesion
from vismae.synthetic.render import Scene, image_rng, render_view

ROOT = "CBIS-DDSM"
CSV_NAMES = {
    ("Mass", "train"): "mass_case_description_train_set.csv",
    ("Mass", "test"): "mass_case_description_test_set.csv",
    ("Calc", "train"): "calc_case_description_train_set.csv",
    ("Calc", "test"): "calc_case_description_test_set.csv",
}
TOP_LEVEL = (ROOT, *CSV_NAMES.values())
PATHS = ["image file path", "cropped image file path", "ROI mask file path"]
COMMON = ["patient_id", "left or right breast", "image view", "abnormality id", "abnormality type"]
GRADING = ["assessment", "pathology", "subtlety"]
COLUMNS = {
    "Mass": ["patient_id", "breast_density", *COMMON[1:], "mass shape", "mass margins", *GRADING, *PATHS],
    "Calc": ["patient_id", "breast density", *COMMON[1:], "calc type", "calc distribution", *GRADING, *PATHS],
}
SPLIT_NAMES = {"train": "Training", "test": "Test"}
SIDE_NAMES = {"L": "LEFT", "R": "RIGHT"}
DENSITY_NUMBERS = {"A": 1, "B": 2, "C": 3, "D": 4}
UID_ROOT = "1.3.6.1.4.1.9590.100.1.2."  # the root TCIA's CBIS-DDSM UIDs share
MASS_DESCRIPTORS = {  # shape -> (mass shape, mass margins)
    "round": ("ROUND", "CIRCUMSCRIBED"),
    "oval": ("OVAL", "CIRCUMSCRIBED"),
    "irregular": ("IRREGULAR", "ILL_DEFINED"),
    "spiculated": ("IRREGULAR", "SPICULATED"),
}
CALC_DESCRIPTORS = {  # shape -> (calc type, calc distribution)
    "fine": ("PLEOMORPHIC", "CLUSTERED"),
    "coarse": ("COARSE", "REGIONAL"),
}
RLE_EVERY = 3  # every third full mammogram is RLE compressed
CROP_MARGIN = 0.15


def write_cbis_ddsm(out: Path, n_patients: int, seed: int, image_size: tuple[int, int]) -> None:
    patients = sample_cohort(n_patients, seed, CASE_SERIES)
    naming = np.random.default_rng([seed, 0xCB15])  # ids, folder names, subtlety, file order
    rows = {key: [] for key in CSV_NAMES}
    full_images = 0
    for patient, patient_id in zip(patients, _patient_ids(naming, len(patients))):
        for side in ("L", "R"):
            if side not in patient.breasts:
                continue
            breast = patient.breasts[side]
            for view in VIEWS:
                scene = render_view(patient, breast, view, image_size, seed)
                grain = image_rng(seed, patient, side, view, stream=1)
                film = scanned_film(scene.mammogram(), side, view, grain)
                for kind, findings in _by_collection(scene).items():
                    case = f"{kind}-{SPLIT_NAMES[patient.split]}_{patient_id}_{SIDE_NAMES[side]}_{view}"
                    syntax = RLELossless if full_images % RLE_EVERY == 0 else ExplicitVRLittleEndian
                    full_images += 1
                    # Some downloads name folders NBIA's descriptive way instead of by UID.
                    image_path = _write_full(out / ROOT, case, film, side, syntax, naming,
                                             descriptive=patient.index % 3 == 2)
                    for abnormality, drawn in enumerate(findings, start=1):
                        roi = f"{case}_{abnormality}"
                        crop_path, mask_path = _write_roi(out / ROOT, roi, film, drawn, side, naming)
                        rows[kind, patient.split].append({
                            "patient_id": patient_id,
                            "left or right breast": SIDE_NAMES[side],
                            "image view": view,
                            "abnormality id": abnormality,
                            **_description(kind, patient, breast, drawn, naming),
                            "image file path": image_path,
                            "cropped image file path": crop_path,
                            "ROI mask file path": mask_path,
                        })
    for key, name in CSV_NAMES.items():
        pd.DataFrame(rows[key], columns=COLUMNS[key[0]]).to_csv(out / name, index=False)


def _patient_ids(rng, count: int) -> list[str]:
    """P_00001-style ids, increasing with gaps as in CBIS-DDSM."""
    return [f"P_{number:05d}" for number in np.cumsum(rng.integers(1, 6, count))]


def _by_collection(scene: Scene) -> dict[str, list[DrawnLesion]]:
    """Findings by CBIS collection: masses (lymph nodes are a mass shape there) and calcifications."""
    groups = {"Mass": [], "Calc": []}
    for drawn in scene.annotated():
        groups["Calc" if drawn.lesion.kind == "calcifications" else "Mass"].append(drawn)
    return {kind: findings for kind, findings in groups.items() if findings}


def _uid_folder(rng) -> str:
    return UID_ROOT + str(int(rng.integers(10**15, 10**16))) + str(int(rng.integers(10**15, 10**16)))


def _download_folders(rng, series: str, descriptive: bool) -> tuple[str, str]:
    """Study and series folders as a download names them: UIDs, or NBIA's descriptive names."""
    if not descriptive:
        return _uid_folder(rng), _uid_folder(rng)
    date = f"{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}-2016"
    study_number, series_number = (int(n) for n in rng.integers(10000, 99999, 2))
    return f"{date}-DDSM-{study_number}", f"1.000000-{series}-{series_number}"


def _write_full(root: Path, case: str, film: np.ndarray, side: str, syntax, rng, descriptive: bool) -> str:
    """Write the full mammogram; returns the path the CSV gives for it."""
    study, series = _download_folders(rng, "full mammogram images", descriptive)
    ds = _dataset(case, side, "full mammogram images", rng)
    set_pixels(ds, film, 16)
    save(ds, root / case / study / series / "1-1.dcm", syntax)
    return f"{case}/{_uid_folder(rng)}/{_uid_folder(rng)}/000000.dcm"


def _write_roi(
    root: Path, case: str, film: np.ndarray, drawn: DrawnLesion, side: str, rng
) -> tuple[str, str]:
    """Write the ROI folder of one finding; returns the CSV's (cropped image, ROI mask) paths."""
    mask = drawn.mask(film.shape).astype(np.uint8) * 255
    xmin, ymin, xmax, ymax = drawn.box()
    margin_x = round(CROP_MARGIN * (xmax - xmin)) + 2
    margin_y = round(CROP_MARGIN * (ymax - ymin)) + 2
    crop = film[max(0, ymin - margin_y): ymax + margin_y + 1, max(0, xmin - margin_x): xmax + margin_x + 1]

    study, series = _download_folders(rng, "ROI mask images", descriptive=False)
    mask_first = bool(rng.integers(2))  # the download numbers them either way round
    folder = root / case / study / series
    for ds_name, pixels, bits, file_name in (
        ("ROI mask images", mask, 8, "1-1.dcm" if mask_first else "1-2.dcm"),
        ("cropped images", np.ascontiguousarray(crop), 16, "1-2.dcm" if mask_first else "1-1.dcm"),
    ):
        ds = _dataset(case, side, ds_name, rng)
        set_pixels(ds, pixels, bits)
        save(ds, folder / file_name)
    # The CSV's numbering is inconsistent too, independently of the download's.
    csv_study = _uid_folder(rng)
    crop_number, mask_number = ("000001", "000000") if rng.integers(4) == 0 else ("000000", "000001")
    return (
        f"{case}/{csv_study}/{_uid_folder(rng)}/{crop_number}.dcm",
        f"{case}/{csv_study}/{_uid_folder(rng)}/{mask_number}.dcm",
    )


def _dataset(case: str, side: str, description: str, rng):
    ds = new_dataset(SecondaryCaptureImageStorage, _uid_folder(rng), _uid_folder(rng), _uid_folder(rng))
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.PatientID = case  # CBIS-DDSM keeps the view in the patient ID; there is no ViewPosition
    ds.PatientName = case
    ds.Laterality = side
    ds.SeriesDescription = description
    ds.BodyPartExamined = "BREAST"
    return ds


def _description(kind: str, patient: Patient, breast: Breast, drawn: DrawnLesion, rng) -> dict:
    """The radiologist's columns of a CSV row: density, descriptors, assessment, pathology."""
    lesion = drawn.lesion
    density = DENSITY_NUMBERS[patient.density]
    if kind == "Mass":
        if lesion.kind == "lymph_node":
            shape, margins = "LYMPH_NODE", "CIRCUMSCRIBED"
        else:
            shape, margins = MASS_DESCRIPTORS[lesion.shape]
        described = {"breast_density": density, "abnormality type": "mass",
                     "mass shape": shape, "mass margins": margins}
    else:
        calc_type, distribution = CALC_DESCRIPTORS[lesion.shape]
        described = {"breast density": density, "abnormality type": "calcification",
                     "calc type": calc_type, "calc distribution": distribution}
    return {
        **described,
        "assessment": lesion.birads if lesion.birads is not None else breast.birads,
        "pathology": _pathology(lesion),
        "subtlety": int(rng.integers(2, 6)),
    }


def _pathology(lesion) -> str:
    if lesion.malignant:
        return "MALIGNANT"
    # Findings benign at a glance were never called back for biopsy.
    if lesion.kind == "lymph_node" or lesion.shape in ("coarse", "round"):
        return "BENIGN_WITHOUT_CALLBACK"
    return "BENIGN"
