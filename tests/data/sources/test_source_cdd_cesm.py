"""The CDD-CESM reader on a hand-built folder: annotation sheet, VIA CSV, JPEG folders."""

import argparse
import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vismae.commands import manifest as manifest_command
from vismae.commands import summarize as summarize_command
from vismae.data.manifest import mixed_image_kinds, read_manifest
from vismae.data.sources import cdd_cesm, paper_split
from vismae.data.sources.tables import SourceError

LABEL = "Pathology Classification/ Follow up"
SHEET_COLUMNS = [
    "Image_name", "Patient_ID", "Side", "Type", "Age", "Breast density (ACR)", "BIRADS",
    "Findings", "View", "Tags", "Machine", LABEL,
]
VIA_HEADER = ["#filename", "file_size", "file_attributes", "region_count", "region_id",
              "region_shape_attributes", "region_attributes"]
FOLDERS = {"DM": "Low energy images of CDD-CESM", "CESM": "Subtracted images of CDD-CESM"}


def sheet_row(name, patient, side, kind, view, label, birads=""):
    return {"Image_name": name, "Patient_ID": patient, "Side": side, "Type": kind, "Age": 50,
            "Breast density (ACR)": "B", "BIRADS": birads, "Findings": "", "View": view,
            "Tags": "", "Machine": "", LABEL: label}


def write_cdd(root: Path, rows: list[dict], regions: dict, file_names: dict | None = None) -> Path:
    """The dataset folder; ``file_names`` overrides a JPEG's name (a space before .jpg)."""
    file_names = file_names or {}
    package = root / "CDD-CESM"  # downloads nest one folder deeper than the root
    for folder in FOLDERS.values():
        (package / folder).mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = row["Image_name"].strip()
        (package / FOLDERS[row["Type"]] / file_names.get(name, f"{name}.jpg")).write_bytes(b"\xff\xd8")
    sheet = pd.DataFrame(rows, columns=SHEET_COLUMNS)
    sheet.to_excel(root / "Radiology manual annotations.xlsx", sheet_name="all", index=False)
    with open(root / "Radiology_hand_drawn_segmentations_v2.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(VIA_HEADER)
        for file_name, shapes in regions.items():
            for region_id, shape in enumerate(shapes):
                writer.writerow([file_name, 1000, "{}", len(shapes), region_id, json.dumps(shape), "{}"])
    return root


POLYGON = {"name": "polygon", "all_points_x": [10, 50, 30], "all_points_y": [5, 5, 40]}
POLYLINE = {"name": "polyline", "all_points_x": [1, 2, 3, 1], "all_points_y": [4, 8, 4, 6]}
ELLIPSE = {"name": "ellipse", "cx": 100, "cy": 80, "rx": 20, "ry": 10, "theta": 0.5}
ELLIPSE_NO_THETA = {"name": "ellipse", "cx": 10, "cy": 8, "rx": 2, "ry": 1}
CIRCLE = {"name": "circle", "cx": 60, "cy": 70, "r": 9}
POINT = {"name": "point", "cx": 7, "cy": 9}


def small_dataset(root: Path) -> Path:
    rows = [
        sheet_row(" P1_L_DM_CC ", 1, "L", "DM", "CC", " malignant", 5),
        sheet_row("P1_L_DM_MLO", 1, "L", "DM", "MLO", "Malignant", "4"),
        sheet_row("P1_L_CM_CC", 1, "L", "CESM", "CC", "MALIGNANT", 5),
        sheet_row("P2_R_DM_MLO", 2, "R", "DM", "MLO", "Benign", 3),
        sheet_row("P2_R_DM_CC", 2, "R", "DM", "CC", "benign", ""),
        sheet_row("P3_L_DM_CC", 3, "L", "DM", "CC", "Normal", 1),
        sheet_row("P3_R_DM_CC", 3, "R", "DM", "CC", "Normal", 1),
    ]
    regions = {
        "P1_L_DM_CC.jpg": [POLYGON, ELLIPSE],
        "P1_L_DM_MLO.jpg": [CIRCLE, POINT],
        "P1_L_CM_CC.jpg": [POLYLINE, ELLIPSE_NO_THETA],
        "P2_R_DM_MLO .jpg": [POLYGON],
        "P2_R_DM_CC.jpg": [{}],
        "P3_L_DM_CC.jpg": [{}],
    }
    return write_cdd(root, rows, regions, file_names={"P2_R_DM_MLO": "P2_R_DM_MLO .jpg"})


def test_reads_low_energy_images_with_labels_and_every_via_shape(tmp_path):
    frame = cdd_cesm.read(small_dataset(tmp_path)).set_index("image_id")

    assert sorted(frame.index) == ["P1_L_DM_CC", "P1_L_DM_MLO", "P2_R_DM_CC", "P2_R_DM_MLO", "P3_L_DM_CC", "P3_R_DM_CC"]
    assert frame.loc["P1_L_DM_CC"].roi == [
        {"type": "polygon", "points": [[10.0, 5.0], [50.0, 5.0], [30.0, 40.0]]},
        {"type": "ellipse", "cx": 100.0, "cy": 80.0, "rx": 20.0, "ry": 10.0, "theta": 0.5},
    ]
    assert frame.loc["P1_L_DM_MLO"].roi == [
        {"type": "ellipse", "cx": 60.0, "cy": 70.0, "rx": 9.0, "ry": 9.0, "theta": 0.0},
        {"type": "point", "cx": 7.0, "cy": 9.0},
    ]
    # The file with a space before ".jpg" is found and its region matched.
    p2 = frame.loc["P2_R_DM_MLO"]
    assert Path(p2.path).name == "P2_R_DM_MLO .jpg" and p2.has_roi and p2.label == "benign" and p2.birads == 3
    assert not frame.loc["P2_R_DM_CC"].has_roi and pd.isna(frame.loc["P2_R_DM_CC"].birads)
    assert not frame.loc["P3_R_DM_CC"].has_roi  # not in the segmentation CSV at all
    assert list(frame.loc[["P1_L_DM_CC", "P2_R_DM_CC", "P3_L_DM_CC"], "label"]) == ["malignant", "benign", "normal"]
    assert (frame.loc["P1_L_DM_CC", "birads"], frame.loc["P1_L_DM_MLO", "birads"]) == (5, 4)
    p1 = frame.loc["P1_L_DM_CC"]
    assert (p1.patient_id, p1.study_id, p1.dataset, p1.view, p1.laterality) == ("1", "1", "cdd-cesm", "CC", "L")


def test_include_cesm_adds_subtracted_images_with_closed_polylines(tmp_path):
    frame = cdd_cesm.read(small_dataset(tmp_path), include_cesm=True).set_index("image_id")
    assert len(frame) == 7
    cm = frame.loc["P1_L_CM_CC"]
    assert "Subtracted images of CDD-CESM" in cm.path and cm.label == "malignant"
    assert cm.roi == [
        {"type": "polygon", "points": [[1.0, 4.0], [2.0, 8.0], [3.0, 4.0], [1.0, 6.0]]},
        {"type": "ellipse", "cx": 10.0, "cy": 8.0, "rx": 2.0, "ry": 1.0, "theta": 0.0},
    ]
    # A patient's DM and CM images share a side of the split.
    assert frame.loc["P1_L_CM_CC", "split"] == frame.loc["P1_L_DM_CC", "split"]


def many_patients(root: Path, n_patients: int = 44) -> Path:
    rows, regions = [], {}
    for patient in range(1, n_patients + 1):
        label = ("Malignant", "Benign", "Benign", "Normal")[patient % 4]
        for side in "LR":
            for view in ("CC", "MLO"):
                name = f"P{patient}_{side}_DM_{view}"
                rows.append(sheet_row(name, patient, side, "DM", view, label if side == "L" else "Normal"))
                regions[f"{name}.jpg"] = [POINT] if label != "Normal" and side == "L" else [{}]
    return write_cdd(root, rows, regions)


def test_split_is_patient_grouped_ten_to_one_stratified_and_seeded(tmp_path):
    root = many_patients(tmp_path)
    frame = cdd_cesm.read(root)
    sides = frame.groupby("patient_id")["split"].nunique()
    assert (sides == 1).all()  # no patient on both sides
    test_patients = frame.loc[frame["split"] == "test", "patient_id"].nunique()
    assert test_patients == 4  # 44 patients at 10:1
    malignant = set(frame.loc[frame["label"] == "malignant", "patient_id"])
    test_ids = set(frame.loc[frame["split"] == "test", "patient_id"])
    assert 0 < len(test_ids & malignant) < 4  # stratified: malignant patients on both sides

    again = cdd_cesm.read(root)
    assert list(again["split"]) == list(frame["split"])
    assert any(list(cdd_cesm.read(root, seed=seed)["split"]) != list(frame["split"]) for seed in (1, 2, 3))


@pytest.mark.parametrize(
    "shape, message",
    [
        ('{"name": "rhombus", "cx": 1}', "rhombus"),
        ('{"name": "ellipse", "cx": 1, "cy": 2, "rx": 3}', "lacks ry"),
        ('{"name": "polygon", "all_points_x": [1, 2], "all_points_y": [1]}', "equal length"),
        ('{"name": "polygon", ', "Expecting"),
    ],
)
def test_bad_via_regions_name_file_line_and_column(tmp_path, shape, message):
    root = small_dataset(tmp_path)
    via = root / "Radiology_hand_drawn_segmentations_v2.csv"
    with open(via, "a", newline="") as handle:
        csv.writer(handle).writerow(["P9_L_DM_CC.jpg", 1, "{}", 1, 0, shape, "{}"])
    lines = via.read_text().count("\n")
    with pytest.raises(SourceError) as error:
        cdd_cesm.read(root)
    assert f"v2.csv, line {lines}, column 'region_shape_attributes'" in str(error.value)
    assert message in str(error.value)


def test_bad_label_names_sheet_row_and_column(tmp_path):
    rows = [
        sheet_row("P1_L_DM_CC", 1, "L", "DM", "CC", "Benign"),
        sheet_row("P1_L_DM_MLO", 1, "L", "DM", "MLO", "Suspicious"),
    ]
    root = write_cdd(tmp_path, rows, {})
    expected = r"annotations.xlsx, row 3, column 'Pathology Classification/ Follow up': 'Suspicious'"
    with pytest.raises(SourceError, match=expected):
        cdd_cesm.read(root)


def test_missing_images_stop_unless_allowed(tmp_path, caplog):
    root = small_dataset(tmp_path)
    (root / "CDD-CESM" / FOLDERS["DM"] / "P3_R_DM_CC.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images listed missing on disk \(first: .*P3_R_DM_CC.jpg\)"):
        cdd_cesm.read(root)
    with caplog.at_level(logging.WARNING):
        frame = cdd_cesm.read(root, allow_missing=True)
    assert "P3_R_DM_CC" not in set(frame["image_id"]) and len(frame) == 5
    assert "dropped 1 of 6" in caplog.text


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    manifest_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_manifest_command_end_to_end(tmp_path, capsys):
    root = many_patients(tmp_path / "cdd")
    out = tmp_path / "out" / "manifest.csv"
    assert cli("manifest", "--dataset", "cdd-cesm", "--root", str(root), "--out", str(out), "--seed", "3") == 0
    assert "176 images of 44 patients" in capsys.readouterr().out
    frame = read_manifest(out)
    assert list(frame["split"]) == list(cdd_cesm.read(root, seed=3)["split"])
    assert frame.loc[frame["has_roi"], "roi"].map(lambda shapes: shapes[0]["type"]).eq("point").all()
    assert all(Path(path).is_file() for path in frame["path"])

    again = ("manifest", "--dataset", "cdd-cesm", "--root", str(root), "--out", str(out))
    with pytest.raises(ValueError, match="exists"):
        cli(*again)
    with pytest.raises(ValueError, match="takes no option csv"):
        cli(*again, "--overwrite", "--csv", "x.csv")
    assert cli(*again, "--overwrite", "--include-cesm") == 0


def test_ellipse_theta_is_radians_as_via_writes_it(tmp_path):
    rows = [sheet_row(f"P{n}_L_DM_CC", n, "L", "DM", "CC", "Benign") for n in (1, 2)]
    root = write_cdd(tmp_path, rows, {"P1_L_DM_CC.jpg": [{**ELLIPSE, "theta": math.pi / 2}]})
    shape = cdd_cesm.read(root).set_index("image_id").loc["P1_L_DM_CC", "roi"][0]
    assert shape["theta"] == pytest.approx(math.pi / 2)


def test_each_row_says_whether_it_is_a_low_energy_or_a_subtracted_image(tmp_path):
    root = small_dataset(tmp_path)
    assert set(cdd_cesm.read(root)["image_kind"]) == {"DM"}
    both = cdd_cesm.read(root, include_cesm=True).set_index("image_id")["image_kind"]
    assert both["P1_L_CM_CC"] == "CESM" and (both.drop("P1_L_CM_CC") == "DM").all()
    assert "1 CESM and 6 DM images" in mixed_image_kinds(both.reset_index())


def paper_like(root: Path, per_class: int = 331, seed: int = 0) -> Path:
    """Patients whose breasts are malignant, benign or normal, two views each, a few breasts
    with one view only, so that ``per_class`` malignant and ``per_class`` benign images exist
    (CDD-CESM's 331 + 331 low-energy ones), and some normal ones the paper leaves out."""
    rng = np.random.default_rng(seed)
    breasts = []
    for label in ("Malignant", "Benign"):
        breasts += [(label, ("CC", "MLO"))] * (per_class // 2) + [(label, ("CC",))] * (per_class % 2)
    breasts += [("Normal", ("CC", "MLO"))] * 60
    rows = []
    for patient, pair in enumerate(np.array_split(rng.permutation(len(breasts)), len(breasts) // 2), start=1):
        for side, index in zip("LR", pair):
            label, views = breasts[index]
            rows += [sheet_row(f"P{patient}_{side}_DM_{view}", patient, side, "DM", view, label) for view in views]
    return write_cdd(root, rows, {})


def test_paper_split_reproduces_table_3_and_summarize_prints_it(tmp_path, capsys):
    root = paper_like(tmp_path / "cdd")
    out = tmp_path / "manifest.csv"
    assert cli("manifest", "--dataset", "cdd-cesm", "--root", str(root), "--out", str(out), "--paper-split") == 0
    frame = read_manifest(out)
    counts = frame.groupby(["label", "split"]).size().to_dict()
    assert counts == {("malignant", "train"): 300, ("malignant", "test"): 31, ("benign", "train"): 300, ("benign", "test"): 31}
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()  # by patient
    assert set(frame["image_kind"]) == {"DM"}
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    summarize_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["summarize", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert re.search(r"train +test +total\nmalignant +300 +31 +331\nbenign +300 +31 +331\ntotal +600 +62 +662\n", text)
    assert "normal" not in text and "image kinds: DM 662" in text


def test_paper_split_balances_the_classes_and_is_seeded(tmp_path):
    root = paper_like(tmp_path, per_class=33)
    # One more benign breast: 35 benign images against 33 malignant; 3 of each go to test.
    sheet = pd.read_excel(root / "Radiology manual annotations.xlsx", sheet_name="all")
    extra = [sheet_row(f"P999_L_DM_{view}", 999, "L", "DM", view, "Benign") for view in ("CC", "MLO")]
    rows = sheet.to_dict("records") + extra
    write_cdd(root, rows, {})
    frame = cdd_cesm.read(root, paper_split=True, seed=4)
    assert frame["label"].value_counts().to_dict() == {"malignant": 33, "benign": 33}
    test = frame[frame["split"] == "test"]
    assert test["label"].value_counts().to_dict() == {"malignant": 3, "benign": 3}
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    again = cdd_cesm.read(root, paper_split=True, seed=4)
    assert again.equals(frame)
    others = [set(cdd_cesm.read(root, paper_split=True, seed=seed).query("split == 'test'")["image_id"]) for seed in (5, 6, 7)]
    assert any(other != set(test["image_id"]) for other in others)
    with pytest.raises(ValueError, match="low-energy .DM. images only"):
        cdd_cesm.read(root, paper_split=True, include_cesm=True)


def test_paper_split_keeps_patients_whole_when_the_counts_cannot_be_exact(caplog):
    # Every patient holds two malignant or two benign images: 3 of each in test is out of reach
    # with whole patients; the split takes 2 + 2 (nearest, fewer images) and says so.
    rows = pd.DataFrame(
        {"patient_id": np.repeat([f"p{n}" for n in range(16)], 2), "label": np.repeat(["malignant", "benign"] * 8, 2)}
    )
    with caplog.at_level(logging.WARNING):
        split = paper_split.balanced_patient_split(rows, test_per_class=3, seed=0)
    test = rows[split == "test"]
    assert test["label"].value_counts().to_dict() == {"malignant": 2, "benign": 2}
    assert pd.Series(split).groupby(rows["patient_id"]).nunique().eq(1).all()
    assert "no set of whole patients holds exactly 3 malignant and 3 benign" in caplog.text
    assert "2 malignant and 2 benign" in caplog.text
    assert paper_split.held_out_per_class(331) == 31 and paper_split.held_out_per_class(33) == 3


def test_paper_split_needs_both_classes(tmp_path):
    rows = [sheet_row(f"P{n}_L_DM_CC", n, "L", "DM", "CC", "Benign") for n in (1, 2)]
    with pytest.raises(ValueError, match="needs malignant and benign images"):
        cdd_cesm.read(write_cdd(tmp_path, rows, {}), paper_split=True)
