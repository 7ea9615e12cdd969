"""A folder of DICOMs as a dataset: what is kept, what is left out and why, pseudonymous ids
that never show a raw identifier, stable salts, patient-grouped splits."""

import argparse
import csv
import logging
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from vismae.commands import manifest as manifest_command
from vismae.data.dicom import read_image
from vismae.data.manifest import read_manifest
from vismae.data.sources import folder, read_dataset
from vismae.data.sources.tables import SourceError

PATIENT_NAME = "Doe^Jane"  # what the dicom_file fixture writes into every file
BIRTH_DATE = "19510203"
SECRET_A, SECRET_B = "SECRET-PATIENT-A", "SECRET-PATIENT-B"
CORRUPT_REASON = "no pixel data (file truncated or damaged, or not an image)"


def coded(value: str, meaning: str, modifier: tuple[str, str] | None = None) -> list[Dataset]:
    """A one-item View Code Sequence (SNOMED CT), optionally with a view modifier."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    if modifier is not None:
        extra = Dataset()
        extra.CodeValue, extra.CodingSchemeDesignator, extra.CodeMeaning = modifier[0], "SCT", modifier[1]
        item.ViewModifierCodeSequence = [extra]
    return [item]


def mammogram(dicom_file, path: Path, patient: str, study: str, **attributes) -> Path:
    """One MG file, FOR PRESENTATION, with the patient's name and birth date in its header."""
    values = {"Modality": "MG", "PresentationIntentType": "FOR PRESENTATION", "PatientID": patient,
              "PatientBirthDate": BIRTH_DATE, "StudyInstanceUID": study, **attributes}
    return dicom_file(path, **{key: value for key, value in values.items() if value is not None})


def build_folder(root: Path, dicom_file) -> dict:
    """Two women's screening images (one woman with two studies) among files to leave out,
    in nested folders, some without an extension. Returns the expected outcome."""
    study_a, study_b1, study_b2 = "1.2.3.100", "1.2.3.201", "1.2.3.202"
    a = root / "export" / "2020" / "A"
    mammogram(dicom_file, a / "IM0001", SECRET_A, study_a, ViewPosition="CC", ImageLaterality="L")
    # Coded view only (SNOMED CT medio-lateral oblique), laterality from Laterality.
    mammogram(dicom_file, a / "IM0002", SECRET_A, study_a, ViewCodeSequence=coded("399368009", "medio-lateral oblique"),
              Laterality="L")  # fmt: skip
    mammogram(dicom_file, a / "IM0003.dcm", SECRET_A, study_a, ViewPosition="CC", ImageLaterality="R")
    # The older SNOMED-RT code for MLO.
    item = coded("R-10226", "medio-lateral oblique")
    item[0].CodingSchemeDesignator = "SRT"
    mammogram(dicom_file, a / "IM0004.dcm", SECRET_A, study_a, ViewCodeSequence=item, ImageLaterality="R")
    b = root / "export" / "2021"
    mammogram(dicom_file, b / "B1" / "x.dcm", SECRET_B, study_b1, ViewPosition="MLO", ImageLaterality="R")
    mammogram(dicom_file, b / "B2" / "y", SECRET_B, study_b2, ViewPosition="MLO", ImageLaterality="R",
              ViewCodeSequence=coded("399368009", "medio-lateral oblique",
                                     ("399197001", "implant displaced")))  # fmt: skip

    left = root / "export" / "other"
    mammogram(dicom_file, left / "ml.dcm", SECRET_A, study_a, ViewPosition="ML", ImageLaterality="L")
    mammogram(dicom_file, left / "xccl.dcm", SECRET_A, study_a, ViewPosition="XCCL", ImageLaterality="L")
    mammogram(dicom_file, left / "coded_ml", SECRET_B, study_b1, ViewCodeSequence=coded("399260004", "medio-lateral"),
              ImageLaterality="R")  # fmt: skip
    mammogram(dicom_file, left / "spot.dcm", SECRET_B, study_b1, ViewCodeSequence=coded(
        "399162004", "cranio-caudal", ("399163009", "spot compression")), ImageLaterality="R")  # fmt: skip
    mammogram(dicom_file, left / "raw.dcm", SECRET_B, study_b1, ViewPosition="CC", ImageLaterality="R",
              PresentationIntentType="FOR PROCESSING")  # fmt: skip
    mammogram(dicom_file, left / "ct.dcm", SECRET_B, study_b1, Modality="CT")
    mammogram(dicom_file, left / "both.dcm", SECRET_B, study_b1, ViewPosition="CC", ImageLaterality="B")
    mammogram(dicom_file, left / "tomo.dcm", SECRET_B, study_b1, ViewPosition="CC", ImageLaterality="L",
              NumberOfFrames=2)  # fmt: skip
    (left / "notes.txt").write_text(f"patient {SECRET_A}\n")
    shutil.copy(a / "IM0001", left / "copy_of_IM0001")
    # A download cut short in the header: a DICOM preamble, then the first 300 bytes of a file.
    whole = (a / "IM0003.dcm").read_bytes()
    (left / "cut.dcm").write_bytes(whole[:300])
    return {
        "kept": {"IM0001": ("CC", "L"), "IM0002": ("MLO", "L"), "IM0003.dcm": ("CC", "R"),
                 "IM0004.dcm": ("MLO", "R"), "x.dcm": ("MLO", "R"), "y": ("MLO", "R")},
        "left_out": {
            "ml.dcm": "view ML", "xccl.dcm": "view XCCL", "coded_ml": "view medio-lateral",
            "spot.dcm": "view CC with spot compression", "raw.dcm": "FOR PROCESSING (raw detector data)",
            "ct.dcm": "modality CT", "both.dcm": "laterality B", "notes.txt": "not a DICOM file",
            "tomo.dcm": "multi-frame image (tomosynthesis or a series)",
            "copy_of_IM0001": f"same SOPInstanceUID as a file kept: {a / 'IM0001'}", "cut.dcm": CORRUPT_REASON,
        },
        "raw": [SECRET_A, SECRET_B, PATIENT_NAME, "Doe", BIRTH_DATE, study_a, study_b1, study_b2]
        + [pydicom.dcmread(a / name).SOPInstanceUID for name in ("IM0001", "IM0002", "IM0003.dcm")],
    }  # fmt: skip


def read_report(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [] or list(rows[0]) == ["path", "reason"]
    return {Path(row["path"]).name: row["reason"] for row in rows}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    manifest_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_keeps_cc_and_mlo_and_reports_every_other_file(tmp_path, dicom_file, caplog):
    expected = build_folder(tmp_path / "data", dicom_file)
    report = tmp_path / "left_out.csv"
    with caplog.at_level(logging.INFO):
        frame = folder.read(tmp_path / "data", salt="s3cret", report=report)
    by_name = frame.assign(name=[Path(p).name for p in frame["path"]]).set_index("name")
    assert sorted(by_name.index) == sorted(expected["kept"])
    for name, (view, laterality) in expected["kept"].items():
        assert (by_name.loc[name, "view"], by_name.loc[name, "laterality"]) == (view, laterality), name
    assert read_report(report) == expected["left_out"]
    # The summary counts each reason; 6 kept of 17 files.
    assert "kept 6 of 17 files" in caplog.text and "1 view ML" in caplog.text and "1 not a DICOM file" in caplog.text
    assert set(frame["label"]) == {"unknown"} and frame["birads"].isna().all() and set(frame["dataset"]) == {"folder"}
    assert not frame["has_roi"].any()
    # A file without an extension decodes through the prepare path (DICM marker).
    assert read_image(by_name.loc["IM0001", "path"]).shape == (4, 4)


def test_ids_are_salted_hashes_grouped_by_patient_and_study(tmp_path, dicom_file):
    build_folder(tmp_path / "data", dicom_file)
    frame = folder.read(tmp_path / "data", salt="s3cret")
    names = [Path(p).name for p in frame["path"]]
    by_name = frame.assign(name=names).set_index("name")
    woman_a = by_name.loc[["IM0001", "IM0002", "IM0003.dcm", "IM0004.dcm"]]
    woman_b = by_name.loc[["x.dcm", "y"]]
    assert woman_a["patient_id"].nunique() == 1 and woman_a["study_id"].nunique() == 1
    assert woman_b["patient_id"].nunique() == 1 and woman_b["study_id"].nunique() == 2
    assert woman_a["patient_id"].iloc[0] != woman_b["patient_id"].iloc[0]
    for column in ("image_id", "patient_id", "study_id"):
        assert frame[column].str.fullmatch(r"[0-9a-f]{16}").all(), column
    assert frame["image_id"].is_unique
    # Another salt, other ids; the same salt, the same ids.
    other = folder.read(tmp_path / "data", salt="another")
    assert set(other["patient_id"]).isdisjoint(frame["patient_id"])
    assert set(other["image_id"]).isdisjoint(frame["image_id"])
    again = folder.read(tmp_path / "data", salt="s3cret")
    assert list(again["image_id"]) == list(frame["image_id"]) and list(again["split"]) == list(frame["split"])


def test_command_writes_no_raw_identifier_anywhere_and_reuses_its_salt(tmp_path, dicom_file, capsys, caplog):
    expected = build_folder(tmp_path / "data", dicom_file)
    out = tmp_path / "out" / "inhouse.csv"
    with caplog.at_level(logging.INFO):
        assert cli("manifest", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out)) == 0
    printed = capsys.readouterr()
    assert "6 images of 2 patients" in printed.out
    salt_file, report = out.with_suffix(".salt"), out.with_name("inhouse_left_out.csv")
    assert salt_file.is_file() and stat.S_IMODE(os.stat(salt_file).st_mode) == 0o600
    assert read_report(report) == expected["left_out"]
    outputs = out.read_text() + report.read_text() + printed.out + printed.err + caplog.text
    for raw in expected["raw"]:
        assert raw not in outputs, raw
    # The salt kept beside the manifest gives the same ids on rerun.
    first = read_manifest(out)
    rerun = ("manifest", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out), "--overwrite")
    assert cli(*rerun) == 0
    assert read_manifest(out)["image_id"].tolist() == first["image_id"].tolist()
    assert read_manifest(out)["patient_id"].tolist() == first["patient_id"].tolist()
    # A salt given on the command line wins, and is not written anywhere.
    salt = salt_file.read_text()
    assert cli(*rerun, "--salt", "given") == 0
    assert set(read_manifest(out)["image_id"]).isdisjoint(first["image_id"]) and salt_file.read_text() == salt
    assert "given" not in out.read_text() + report.read_text()


def test_for_processing_kept_when_allowed(tmp_path, dicom_file):
    build_folder(tmp_path / "data", dicom_file)
    frame = read_dataset("folder", tmp_path / "data", salt="s", allow_for_processing=True)
    assert "raw.dcm" in {Path(p).name for p in frame["path"]}


def test_patient_grouped_split_and_pool_agree_with_one_process(tmp_path, dicom_file, monkeypatch):
    root = tmp_path / "data"
    for woman in range(24):
        for view in ("CC", "MLO"):
            mammogram(dicom_file, root / f"w{woman}" / view, f"SECRET-{woman}", f"1.2.3.{woman}",
                      ViewPosition=view, ImageLaterality="L")  # fmt: skip
    (root / "junk.bin").write_bytes(b"\x00" * 10)
    one = folder.read(root, salt="s", seed=3, workers=1)
    assert one.groupby("patient_id")["split"].nunique().max() == 1
    patients = one.groupby("split")["patient_id"].nunique()
    assert patients["test"] >= 1 and patients["train"] > patients["test"]
    monkeypatch.setattr(folder, "PARALLEL_FROM", 0)
    for pool in ("thread", "process"):
        results = folder.inspect_all(folder.list_files(root), workers=2, pool=pool)
        assert [r[0] for r in results] == folder.list_files(root) and sum(r[2] is not None for r in results) == 1
    pooled = folder.read(root, salt="s", seed=3, workers=2)
    assert pooled.equals(one)


def test_no_mammogram_stops_with_the_counts_and_writes_the_report(tmp_path, dicom_file):
    root = tmp_path / "data"
    mammogram(dicom_file, root / "ct.dcm", SECRET_A, "1.2.3", Modality="CT")
    (root / "readme.txt").write_text("hello")
    report = tmp_path / "report.csv"
    with pytest.raises(SourceError, match="no screening mammogram among 2 files"):
        folder.read(root, salt="s", report=report)
    assert Counter(read_report(report).values()) == {"modality CT": 1, "not a DICOM file": 1}
    with pytest.raises(ValueError, match="need a salt"):
        folder.read(root)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        folder.read(tmp_path / "absent", salt="s")
