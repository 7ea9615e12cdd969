"""The CBIS-DDSM reader on a hand-built download: CSVs whose paths differ from the files,
tiny DICOMs, ROI folders with the mask and the crop numbered either way."""

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from vismae.commands import manifest as manifest_command
from vismae.data.manifest import read_manifest
from vismae.data.sources import cbis_ddsm
from vismae.data.sources.tables import SourceError

FULL, CROP = (60, 40), (12, 10)
MASS_HEADER = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]
CALC_HEADER = [name if name != "breast_density" else "breast density" for name in MASS_HEADER]
CALC_HEADER[6:8] = ["calc type", "calc distribution"]


def write_dicom(dicom_file, path: Path, size: tuple[int, int], series: str) -> None:
    """A blank 16-bit secondary capture, as CBIS-DDSM's scanned films are stored."""
    dicom_file(path, np.zeros(size, np.uint16), sop_class=SecondaryCaptureImageStorage, PatientID=series)


def csv_path(folder: str, name: str) -> str:
    # The CSV's own (DICOM UID) folders, which a download does not reproduce.
    return f"{folder}/1.3.6.1.4.1.9590.100.1.2.4221/1.3.6.1.4.1.9590.100.1.2.3423/{name}"


def abnormality(patient, side, view, number, pathology, assessment, kind="Mass", split="Training"):
    image = f"{kind}-{split}_{patient}_{side}_{view}"
    return {
        "patient_id": patient, "breast_density": 2, "left or right breast": side, "image view": view,
        "abnormality id": number, "abnormality type": kind.lower(), "mass shape": "OVAL",
        "mass margins": "CIRCUMSCRIBED", "assessment": assessment, "pathology": pathology, "subtlety": 3,
        "image file path": csv_path(image, "000000.dcm"),
        "cropped image file path": csv_path(f"{image}_{number}", "000000.dcm"),
        # The real CSVs end some paths with a newline.
        "ROI mask file path": csv_path(f"{image}_{number}", "000001.dcm") + "\n",
    }


def write_download(root: Path, rows: list[dict], dicom_file, mask_first: bool = True) -> None:
    """Files as the TCIA downloader lays them out: 1-1.dcm, 1-2.dcm under other folders."""
    for number, row in enumerate(rows):
        image = row["image file path"].split("/")[0]
        full = root / "CBIS-DDSM" / image / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm"
        if not full.exists():
            write_dicom(dicom_file, full, FULL, image)
        roi = root / "CBIS-DDSM" / f"{image}_{row['abnormality id']}" / "08-07-2016-DDSM-80834"
        # Mask and crop numbered either way, sometimes in separate series folders.
        mask_first = not mask_first
        if number % 3 == 2:
            write_dicom(dicom_file, roi / "1.000000-ROI mask images-1" / "1-1.dcm", FULL, image)
            write_dicom(dicom_file, roi / "1.000001-cropped images-2" / "1-1.dcm", CROP, image)
        else:
            write_dicom(dicom_file, roi / "1.000000-ROI mask images-1" / ("1-1.dcm" if mask_first else "1-2.dcm"), FULL, image)
            write_dicom(dicom_file, roi / "1.000000-ROI mask images-1" / ("1-2.dcm" if mask_first else "1-1.dcm"), CROP, image)


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, row.get(name.replace(" ", "_"), "")) for name in header])


def make_dataset(root: Path, dicom_file) -> dict[str, list[dict]]:
    tables = {
        "mass_case_description_train_set.csv": [
            abnormality("P_00001", "LEFT", "CC", 1, "BENIGN", 3),
            abnormality("P_00001", "LEFT", "CC", 2, "MALIGNANT", 5),
            abnormality("P_00001", "LEFT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK", 2),
        ],
        "mass_case_description_test_set.csv": [
            abnormality("P_00004", "RIGHT", "MLO", 1, "BENIGN", 4, split="Test"),
        ],
        "calc_case_description_train_set.csv": [
            abnormality("P_00002", "RIGHT", "MLO", 1, "BENIGN", 2, kind="Calc"),
            abnormality("P_00003", "LEFT", "CC", 1, "BENIGN", 3, kind="Calc"),
        ],
        # P_00002 is also a test patient here: all their images must end in test.
        "calc_case_description_test_set.csv": [
            abnormality("P_00002", "RIGHT", "CC", 1, "MALIGNANT", 4, kind="Calc", split="Test"),
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        write_csv(root / name, CALC_HEADER if name.startswith("calc") else MASS_HEADER, rows)
        write_download(root, rows, dicom_file)
    return tables


def test_one_row_per_mammogram_with_labels_masks_and_split(tmp_path, caplog, dicom_file):
    make_dataset(tmp_path, dicom_file)
    with caplog.at_level(logging.WARNING):
        frame = cbis_ddsm.read(tmp_path).set_index("image_id")

    assert sorted(frame.index) == [
        "Calc-Test_P_00002_RIGHT_CC", "Calc-Training_P_00002_RIGHT_MLO", "Calc-Training_P_00003_LEFT_CC",
        "Mass-Test_P_00004_RIGHT_MLO", "Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_LEFT_MLO",
    ]
    two = frame.loc["Mass-Training_P_00001_LEFT_CC"]
    assert (two.label, two.birads, two.patient_id) == ("malignant", 5, "P_00001")
    assert (two.view, two.laterality, two.split) == ("CC", "L", "train")
    assert Path(two.path).relative_to(tmp_path).parts[1:] == (
        "Mass-Training_P_00001_LEFT_CC", "07-20-2016-DDSM-74994", "1.000000-full mammogram images-24515", "1-1.dcm",
    )
    # Both abnormalities' masks, each the full-size file of its ROI folder whatever its number.
    assert [shape["type"] for shape in two.roi] == ["mask", "mask"]
    roi_folders = [Path(shape["path"]).parts[-4] for shape in two.roi]
    assert roi_folders == ["Mass-Training_P_00001_LEFT_CC_1", "Mass-Training_P_00001_LEFT_CC_2"]
    assert frame.loc["Mass-Training_P_00001_LEFT_MLO", "label"] == "benign"  # BENIGN_WITHOUT_CALLBACK
    for image_id, row in frame.iterrows():
        assert row.has_roi and len(row.roi) >= 1
        for shape in row.roi:
            assert cbis_ddsm._size(Path(shape["path"])) == FULL, image_id
    # P_00002 had a training and a test image: both are in test now.
    assert set(frame.loc[frame["patient_id"] == "P_00002", "split"]) == {"test"}
    assert frame.loc["Calc-Training_P_00003_LEFT_CC", "split"] == "train"
    assert "moved 1 training images of 1 patients" in caplog.text
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()


def test_manifest_holds_no_names(tmp_path, dicom_file):
    make_dataset(tmp_path / "cbis", dicom_file)
    parser = argparse.ArgumentParser()
    manifest_command.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "manifest.csv"
    args = parser.parse_args(
        ["manifest", "--dataset", "cbis-ddsm", "--root", str(tmp_path / "cbis"), "--out", str(out)]
    )
    assert args.func(args) == 0
    assert "Doe" not in out.read_text()
    frame = read_manifest(out)
    assert len(frame) == 6 and set(frame["dataset"]) == {"cbis-ddsm"}
    assert all(Path(shape["path"]).is_file() for shapes in frame["roi"] for shape in shapes)


def test_reads_whichever_csvs_exist(tmp_path, dicom_file):
    make_dataset(tmp_path, dicom_file)
    for name in ("calc_case_description_train_set", "calc_case_description_test_set", "mass_case_description_test_set"):
        (tmp_path / f"{name}.csv").unlink()
    frame = cbis_ddsm.read(tmp_path)
    assert set(frame["image_id"]) == {"Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_LEFT_MLO"}


def test_missing_image_stops_unless_allowed(tmp_path, caplog, dicom_file):
    make_dataset(tmp_path, dicom_file)
    for path in (tmp_path / "CBIS-DDSM" / "Calc-Training_P_00003_LEFT_CC").rglob("*.dcm"):
        path.unlink()
    # Reported by its CSV path, the one the user can look up.
    expected = r"1 of 6 images listed missing on disk \(first: .*Calc-Training_P_00003_LEFT_CC/1.3.6"
    with pytest.raises(FileNotFoundError, match=expected):
        cbis_ddsm.read(tmp_path)
    with caplog.at_level(logging.WARNING):
        frame = cbis_ddsm.read(tmp_path, allow_missing=True)
    assert len(frame) == 5 and "dropped 1 of 6" in caplog.text


def test_missing_mask_stops_unless_allowed(tmp_path, caplog, dicom_file):
    make_dataset(tmp_path, dicom_file)
    roi = tmp_path / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC_2"
    for path in roi.rglob("*.dcm"):
        if cbis_ddsm._size(path) == FULL:
            path.unlink()  # the crop stays: it must not be taken for the mask
    with pytest.raises(FileNotFoundError, match=r"1 of 7 ROI masks .* \(first: Mass-Training_P_00001_LEFT_CC_2\)"):
        cbis_ddsm.read(tmp_path)
    with caplog.at_level(logging.WARNING):
        frame = cbis_ddsm.read(tmp_path, allow_missing=True).set_index("image_id")
    assert len(frame.loc["Mass-Training_P_00001_LEFT_CC", "roi"]) == 1
    assert "kept images without their mask" in caplog.text


def test_mask_a_few_pixels_off_the_image_size_is_still_the_mask(tmp_path, dicom_file):
    make_dataset(tmp_path, dicom_file)
    roi = tmp_path / "CBIS-DDSM" / "Calc-Training_P_00003_LEFT_CC_1"
    mask = next(path for path in roi.rglob("*.dcm") if cbis_ddsm._size(path) == FULL)
    write_dicom(dicom_file, mask, (FULL[0] - 2, FULL[1]), "x")
    frame = cbis_ddsm.read(tmp_path).set_index("image_id")
    assert frame.loc["Calc-Training_P_00003_LEFT_CC", "roi"] == [{"type": "mask", "path": str(mask)}]


def test_bad_pathology_names_file_line_and_column(tmp_path, dicom_file):
    tables = make_dataset(tmp_path, dicom_file)
    rows = tables["mass_case_description_test_set.csv"]
    rows.append({**rows[0], "pathology": "UNSURE"})
    write_csv(tmp_path / "mass_case_description_test_set.csv", MASS_HEADER, rows)
    with pytest.raises(SourceError, match=r"mass_case_description_test_set.csv, line 3, column 'pathology': 'UNSURE'"):
        cbis_ddsm.read(tmp_path)
