"""RSNA Screening Mammography as downloaded: labels from cancer and biopsy, BIRADS not taken for
the assessment scale, extra views left out and counted, patient-grouped (per-site) splits, and
its JPEG 2000 MONOCHROME1 files through prepare."""

import argparse
import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from vismae.commands import manifest as manifest_command
from vismae.data.cache import prepare
from vismae.data.manifest import read_manifest
from vismae.data.sources import rsna
from vismae.data.sources.tables import SourceError

TRAIN_COLUMNS = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy",
                 "invasive", "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]
TEST_COLUMNS = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "implant", "machine_id",
                "prediction_id"]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def train_row(site, patient, image, laterality, view, cancer=0, biopsy=0, birads=""):
    return {"site_id": site, "patient_id": patient, "image_id": image, "laterality": laterality, "view": view,
            "age": "61.0", "cancer": cancer, "biopsy": biopsy, "invasive": cancer, "BIRADS": birads,
            "implant": 0, "density": "B", "machine_id": 49, "difficult_negative_case": "False"}  # fmt: skip


def build_rsna(root: Path, dicom_file, women: int = 24) -> list[dict]:
    """``women`` patients over two sites with CC and MLO of both breasts; a few extra views.
    Patient 0's left breast is cancer, patient 1's biopsied without cancer (RSNA BIRADS 0),
    the others normal (RSNA BIRADS 1 or 2). Also a test.csv with one unlabeled woman."""
    rows = []
    for woman in range(women):
        patient, site = str(10000 + woman), str(1 + woman % 2)
        for laterality in ("L", "R"):
            cancer = int(woman == 0 and laterality == "L")
            biopsy = int(woman in (0, 1) and laterality == "L")
            birads = "0" if biopsy else str(1 + woman % 2)
            for view in ("CC", "MLO"):
                image = str(100000 + len(rows))  # numeric, as RSNA's are
                rows.append(train_row(site, patient, image, laterality, view, cancer, biopsy, birads))
    rows += [train_row("1", "10002", extra, "L", view) for extra, view in
             (("e1", "AT"), ("e2", "LM"), ("e3", "ML"), ("e4", "LMO"))]  # fmt: skip
    write_csv(root / "train.csv", TRAIN_COLUMNS, rows)
    for row in rows:
        dicom_file(root / "train_images" / row["patient_id"] / f"{row['image_id']}.dcm", PatientID=row["patient_id"])
    test = [{"site_id": 2, "patient_id": "99999", "image_id": f"t{view}", "laterality": "R", "view": view,
             "age": 50, "implant": 0, "machine_id": 21, "prediction_id": "99999_R"}
            for view in ("CC", "MLO")]  # fmt: skip
    write_csv(root / "test.csv", TEST_COLUMNS, test)
    for row in test:
        dicom_file(root / "test_images" / row["patient_id"] / f"{row['image_id']}.dcm")
    return rows


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    manifest_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_labels_views_and_birads(tmp_path, dicom_file):
    rows = build_rsna(tmp_path / "rsna", dicom_file)
    report = tmp_path / "left_out.csv"
    frame = rsna.read(tmp_path / "rsna", report=report).set_index("image_id")
    assert len(frame) == 24 * 4 + 2 and set(frame["view"]) == {"CC", "MLO"}
    with open(report, newline="") as handle:
        left = list(csv.DictReader(handle))
    assert Counter(row["reason"] for row in left) == {"view AT": 1, "view LM": 1, "view ML": 1, "view LMO": 1}
    assert {Path(row["path"]).name for row in left} == {"e1.dcm", "e2.dcm", "e3.dcm", "e4.dcm"}
    # cancer -> malignant; biopsied without cancer -> benign; the rest normal; test.csv unlabeled.
    expected = {row["image_id"]: "malignant" if row["cancer"] else "benign" if row["biopsy"] else "normal"
                for row in rows if row["view"] in ("CC", "MLO")}  # fmt: skip
    expected.update({"tCC": "unknown", "tMLO": "unknown"})
    assert frame["label"].to_dict() == expected
    assert Counter(frame["label"]) == {"malignant": 2, "benign": 2, "normal": 92, "unknown": 2}
    # RSNA's BIRADS 0/1/2 is its own coding: nothing of it reaches the manifest's birads.
    assert frame["birads"].isna().all()
    # RSNA's ids kept; the file is train_images/<patient>/<image>.dcm.
    first = rows[0]
    assert frame.loc[first["image_id"], "patient_id"] == first["patient_id"] == frame.loc[first["image_id"], "study_id"]
    assert frame.loc[first["image_id"], "path"] == str(
        (tmp_path / "rsna" / "train_images" / first["patient_id"] / f"{first['image_id']}.dcm").resolve()
    )
    assert frame.loc["tCC", "path"].endswith("test_images/99999/tCC.dcm")


def test_patient_grouped_splits_optionally_per_site(tmp_path, dicom_file):
    build_rsna(tmp_path / "rsna", dicom_file)
    plain = rsna.read(tmp_path / "rsna", seed=1)
    for frame in (plain, rsna.read(tmp_path / "rsna", seed=1, stratify_site=True)):
        assert frame.groupby("patient_id")["split"].nunique().max() == 1
        assert set(frame["split"]) == {"train", "test"}
    by_site = rsna.read(tmp_path / "rsna", seed=1, stratify_site=True)
    site = by_site["patient_id"].map(lambda p: "test-woman" if p == "99999" else str(1 + (int(p) - 10000) % 2))
    tested = by_site[by_site["split"] == "test"].assign(site=site)
    # Each site has its own test patients (13 women at one site, 12 at the other: one each).
    assert set(tested.loc[tested["site"] != "test-woman", "site"]) == {"1", "2"}
    assert list(rsna.read(tmp_path / "rsna", seed=1)["split"]) == list(plain["split"])  # seeded


def test_missing_files_bad_values_and_sites(tmp_path, dicom_file):
    rows = build_rsna(tmp_path / "rsna", dicom_file, women=3)
    gone = tmp_path / "rsna" / "train_images" / rows[0]["patient_id"] / f"{rows[0]['image_id']}.dcm"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 14 images listed missing"):
        rsna.read(tmp_path / "rsna")
    report = tmp_path / "left_out.csv"
    frame = rsna.read(tmp_path / "rsna", allow_missing=True, report=report)
    assert len(frame) == 13 and f"{gone},missing on disk" in report.read_text()

    bad = [dict(row) for row in rows]
    bad[2]["cancer"] = "yes"
    write_csv(tmp_path / "bad" / "train.csv", TRAIN_COLUMNS, bad)
    with pytest.raises(SourceError, match=r"train.csv, line 4, column 'cancer': 'yes', expected 0 or 1"):
        rsna.read(tmp_path / "bad", allow_missing=True)
    bad[2]["cancer"], bad[3]["site_id"] = 0, "2" if bad[3]["site_id"] == "1" else "1"
    write_csv(tmp_path / "bad" / "train.csv", TRAIN_COLUMNS, bad)
    moved = r"train.csv, line 5: patient 10000 is at site '.' here but at '.' at .*line 2"
    with pytest.raises(SourceError, match=moved):
        rsna.read(tmp_path / "bad", allow_missing=True, stratify_site=True)


def breast(on_right: bool) -> np.ndarray:
    """[0, 1]: a half-ellipse breast against one edge of a 120 x 100 image, air 0."""
    yy, xx = np.mgrid[:120, :100] + 0.5
    if on_right:
        xx = 100 - xx
    image = np.zeros((120, 100))
    inside = (xx / 65) ** 2 + ((yy - 60) / 50) ** 2 <= 1
    image[inside] = 0.4 + 0.3 * (1 - xx[inside] / 65)
    return image


def test_jpeg2000_monochrome1_images_decode_through_prepare(tmp_path, dicom_file):
    root = tmp_path / "rsna"
    rows = [train_row("1", "1", "100", "R", "CC"), train_row("2", "2", "200", "R", "CC")]
    write_csv(root / "train.csv", TRAIN_COLUMNS, rows)
    stored = np.rint(breast(True) * 4000 + 20).astype(np.uint16)
    # Patient 1 as many RSNA files are: JPEG 2000 lossless, MONOCHROME1 (stored inverted, and
    # so is its window). Patient 2: the same anatomy, uncompressed MONOCHROME2.
    dicom_file(root / "train_images" / "1" / "100.dcm", (4095 - stored).astype(np.uint16), bits_stored=12,
               photometric="MONOCHROME1", transfer_syntax=JPEG2000Lossless, WindowCenter=4096 - 2020,
               WindowWidth=4000)  # fmt: skip
    dicom_file(root / "train_images" / "2" / "200.dcm", stored, bits_stored=12, WindowCenter=2020, WindowWidth=4000)
    written = pydicom.dcmread(root / "train_images" / "1" / "100.dcm", stop_before_pixels=True)
    assert written.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert written.PhotometricInterpretation == "MONOCHROME1"
    manifest = tmp_path / "rsna.csv"
    assert cli("manifest", "--dataset", "rsna", "--root", str(root), "--out", str(manifest)) == 0
    summary = prepare(manifest, tmp_path / "cache", size=(64, 48), workers=1, progress=False)
    assert summary.prepared == 2 and summary.failed == 0
    cached = read_manifest(tmp_path / "cache" / "manifest.csv").set_index("image_id")
    inverted, plain = (cv2.imread(cached.loc[i, "path"], cv2.IMREAD_UNCHANGED).astype(float) for i in ("100", "200"))
    # Inverted back: the breast is bright and the air dark, as in the MONOCHROME2 file.
    assert inverted[:, :8].mean() > 20000 and inverted[:, -4:].mean() < 2000
    assert np.abs(inverted - plain).max() <= 0.01 * 65535
