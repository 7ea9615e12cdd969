"""The generic table reader: aliases, filled-in columns, DICOM-header fallback, errors."""

import argparse
import csv
import json
import logging
from pathlib import Path

import pytest

from vismae.commands import manifest as manifest_command
from vismae.data.manifest import read_manifest
from vismae.data.sources import table
from vismae.data.sources.tables import SourceError


def write_table(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")
    return path


def test_aliases_are_matched_without_case_spaces_or_underscores(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        touch(tmp_path / "img" / name)
    csv_path = write_table(
        tmp_path / "list.csv",
        ["File", "PatientID", "ViewPosition", "Image_Laterality", "Pathology", "BI-RADS", "Set"],
        [
            ["img/a.png", "p1", "cc", "LEFT", "BENIGN_WITHOUT_CALLBACK", "BI-RADS 3", "training"],
            ["img/b.png", "p1", "MLO", "l", "Malignant", "4a", "Training"],
            ["img/c.png", "p2", "CC", "right", "", "", "test"],
        ],
    )
    frame = table.read(csv_path).set_index("image_id")
    assert list(frame.index) == ["a", "b", "c"]  # ids from file names
    assert list(frame["patient_id"]) == ["p1", "p1", "p2"] and list(frame["study_id"]) == ["p1", "p1", "p2"]
    assert list(frame["view"]) == ["CC", "MLO", "CC"] and list(frame["laterality"]) == ["L", "L", "R"]
    assert list(frame["label"]) == ["benign", "malignant", "unknown"]
    assert list(frame["birads"].astype("float").fillna(-1)) == [3, 4, -1]
    assert list(frame["split"]) == ["train", "train", "test"]
    assert frame.loc["a", "path"] == str((tmp_path / "img" / "a.png").resolve())
    assert set(frame["dataset"]) == {"table"} and not frame["has_roi"].any()


def test_paths_start_from_root_when_given(tmp_path):
    touch(tmp_path / "data" / "x.png")
    csv_path = write_table(tmp_path / "lists" / "t.csv", ["path", "view", "laterality", "patient"], [["x.png", "CC", "R", "p"]])
    frame = table.read(tmp_path / "data", csv=csv_path)
    assert frame["path"].iloc[0] == str((tmp_path / "data" / "x.png").resolve())
    with pytest.raises(FileNotFoundError, match=r"1 of 1 images listed missing on disk \(first: .*lists/x.png\)"):
        table.read(csv_path)  # relative to the CSV's folder, where there is no x.png


def test_view_and_laterality_from_dicom_headers(tmp_path, dicom_file):
    dicom_file(tmp_path / "one.dcm", ViewPosition="MLO", ImageLaterality="R")
    dicom_file(tmp_path / "two", ViewPosition="CC", Laterality="L")  # no extension, series laterality only
    csv_path = write_table(tmp_path / "t.csv", ["path", "patient_id", "view"], [["one.dcm", "p1", ""], ["two", "p2", "MLO"]])
    frame = table.read(csv_path).set_index("image_id")
    assert (frame.loc["one", "view"], frame.loc["one", "laterality"]) == ("MLO", "R")
    # The CSV's own value wins over the header's.
    assert (frame.loc["two", "view"], frame.loc["two", "laterality"]) == ("MLO", "L")


def test_missing_view_of_a_non_dicom_names_the_rows(tmp_path, dicom_file):
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.png")
    dicom_file(tmp_path / "c.dcm", ViewPosition="CC", ImageLaterality="L")
    csv_path = write_table(tmp_path / "t.csv", ["path", "laterality"], [["a.png", "L"], ["c.dcm", ""], ["b.png", "R"]])
    with pytest.raises(SourceError, match=r"t.csv, lines 2, 4: view or laterality is empty and the file is not a DICOM"):
        table.read(csv_path)


def test_unusable_header_view_names_row_and_file(tmp_path, dicom_file):
    dicom_file(tmp_path / "a.dcm", ViewPosition="ML", ImageLaterality="L")
    csv_path = write_table(tmp_path / "t.csv", ["path"], [["a.dcm"]])
    expected = r"t.csv, line 2: DICOM header of .*a.dcm: ViewPosition 'ML', expected one of CC, MLO"
    with pytest.raises(SourceError, match=expected):
        table.read(csv_path)


def test_filled_in_patient_split_and_label(tmp_path, caplog):
    rows = []
    for patient in range(22):
        for view in ("CC", "MLO"):
            touch(tmp_path / f"p{patient}_{view}.png")
            rows.append([f"p{patient}_{view}.png", view, "L", f"p{patient}", "malignant" if patient % 3 == 0 else "benign"])
    csv_path = write_table(tmp_path / "t.csv", ["path", "view", "laterality", "patient", "label"], rows)
    with caplog.at_level(logging.INFO):
        frame = table.read(csv_path, seed=5)
    assert "no split column" in caplog.text
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert frame.loc[frame["split"] == "test", "patient_id"].nunique() == 2  # 22 patients at 10:1
    assert list(table.read(csv_path, seed=5)["split"]) == list(frame["split"])

    anonymous = write_table(tmp_path / "anon.csv", ["path", "view", "laterality"], [[r[0], r[1], r[2]] for r in rows[:4]])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        frame = table.read(anonymous)
    assert list(frame["patient_id"]) == list(frame["image_id"]) == ["p0_CC", "p0_MLO", "p1_CC", "p1_MLO"]
    assert "4 rows without a patient id" in caplog.text
    assert set(frame["label"]) == {"unknown"}


def test_roi_json_and_mask_columns(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.png")
    box = {"type": "box", "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}
    csv_path = write_table(
        tmp_path / "t.csv", ["path", "view", "laterality", "patient", "roi", "mask_path", "has_roi"],
        [
            ["a.png", "CC", "L", "p", json.dumps([box]), "masks/a.png", "true"],
            ["b.png", "CC", "R", "p", "", "", "false"],
        ],
    )
    frame = table.read(csv_path).set_index("image_id")
    assert frame.loc["a", "roi"] == [box, {"type": "mask", "path": str((tmp_path / "masks" / "a.png").resolve())}]
    assert frame.loc["a", "has_roi"] and not frame.loc["b", "has_roi"]


@pytest.mark.parametrize(
    "header, row, message",
    [
        (["path", "view", "laterality", "has_roi"], ["a.png", "CC", "L", "yes"],
         r"line 2: has_roi is 'yes' but the row has 0 ROI shapes"),
        (["path", "view", "laterality", "roi"], ["a.png", "CC", "L", "[{"], r"line 2, column 'roi': not JSON"),
        (["path", "view", "laterality", "label"], ["a.png", "CC", "L", "suspicious"],
         r"line 2, column 'label': label 'suspicious'"),
        (["path", "view", "laterality", "birads"], ["a.png", "CC", "L", "7"], r"line 2, column 'birads': birads '7'"),
        (["path", "view", "laterality", "split"], ["a.png", "CC", "L", ""], r"line 2, column 'split': split ''"),
        (["path", "view", "laterality"], ["a.png", "AX", "L"], r"line 2, column 'view': view 'AX'"),
        (["view", "laterality"], ["CC", "L"], r"no path column"),
    ],
)
def test_bad_values_name_file_line_and_column(tmp_path, header, row, message):
    touch(tmp_path / "a.png")
    csv_path = write_table(tmp_path / "t.csv", header, [row])
    with pytest.raises(SourceError, match=message):
        table.read(csv_path)


def test_duplicate_file_names_and_split_leaks_are_refused(tmp_path):
    touch(tmp_path / "x" / "a.png")
    touch(tmp_path / "y" / "a.png")
    duplicated = write_table(tmp_path / "d.csv", ["path", "view", "laterality"], [["x/a.png", "CC", "L"], ["y/a.png", "CC", "R"]])
    with pytest.raises(SourceError, match=r"d.csv, lines 3: image ids .* repeat"):
        table.read(duplicated)
    leaking = write_table(
        tmp_path / "l.csv", ["path", "image_id", "view", "laterality", "patient", "split"],
        [["x/a.png", "xa", "CC", "L", "p1", "train"], ["y/a.png", "ya", "CC", "R", "p1", "test"]],
    )
    with pytest.raises(SourceError, match="1 patients are in more than one split"):
        table.read(tmp_path, csv=leaking)


def test_missing_files_dropped_when_allowed(tmp_path, caplog):
    touch(tmp_path / "a.png")
    csv_path = write_table(tmp_path / "t.csv", ["path", "view", "laterality"], [["a.png", "CC", "L"], ["gone.png", "", ""]])
    with pytest.raises(FileNotFoundError, match="1 of 2 images listed missing"):
        table.read(csv_path, seed=0)
    with caplog.at_level(logging.WARNING):
        frame = table.read(csv_path, allow_missing=True)
    assert list(frame["image_id"]) == ["a"] and "dropped 1 of 2" in caplog.text


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    manifest_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_manifest_command_with_a_csv_as_root_or_named_apart(tmp_path, capsys, dicom_file):
    dicom_file(tmp_path / "data" / "a.dcm", ViewPosition="CC", ImageLaterality="L", PatientID="SECRET-ID")
    dicom_file(tmp_path / "data" / "b.dcm", ViewPosition="MLO", ImageLaterality="L")
    header = ["path", "patient", "split"]
    csv_path = write_table(tmp_path / "data" / "t.csv", header, [["a.dcm", "p1", "train"], ["b.dcm", "p2", "val"]])
    out = tmp_path / "manifest.csv"
    assert cli("manifest", "--dataset", "table", "--root", str(csv_path), "--out", str(out)) == 0
    assert "2 images of 2 patients" in capsys.readouterr().out
    frame = read_manifest(out)
    assert list(frame["view"]) == ["CC", "MLO"] and list(frame["split"]) == ["train", "val"]
    text = out.read_text()
    assert "Doe" not in text and "SECRET" not in text

    apart = write_table(tmp_path / "t.csv", header, [["a.dcm", "p1", "train"], ["b.dcm", "p2", "test"]])
    data = str(tmp_path / "data")
    assert cli("manifest", "--dataset", "table", "--root", data, "--csv", str(apart), "--out", str(out), "--overwrite") == 0
    assert list(read_manifest(out)["split"]) == ["train", "test"]
    with pytest.raises(ValueError, match="--root is required"):
        cli("manifest", "--dataset", "vindr", "--out", str(tmp_path / "v.csv"))
