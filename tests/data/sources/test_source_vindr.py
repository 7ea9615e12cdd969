"""The VinDr-Mammo reader on hand-built finding_annotations.csv files."""

import argparse
import csv
import json
import logging
import re
from pathlib import Path

import pytest

from vismae.commands import manifest as manifest_command
from vismae.commands import summarize as summarize_command
from vismae.data.manifest import read_manifest
from vismae.data.sources import vindr
from vismae.data.sources.tables import SourceError
from vismae.data.summary import summarize

HEADER = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]
VIEWS = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


def hex_id(prefix: str, number: int) -> str:
    return f"{prefix}{number:031x}"


def finding_row(study, image, laterality="L", view="CC", birads=2, split="training", box=None,
                categories="['No Finding']", finding_birads="", size=(3518, 2800)):
    xmin, ymin, xmax, ymax = box if box else ("", "", "", "")
    return {
        "study_id": study, "series_id": hex_id("f", 0), "image_id": image, "laterality": laterality,
        "view_position": view, "height": size[0], "width": size[1], "breast_birads": f"BI-RADS {birads}",
        "breast_density": "DENSITY C", "finding_categories": categories, "finding_birads": finding_birads,
        "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax, "split": split,
    }


def write_vindr(root: Path, rows: list[dict], header=HEADER, touch=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "finding_annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[name] for name in HEADER])
    if touch:
        for row in rows:
            image = root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.touch()
    return root


def small_dataset() -> list[dict]:
    study_a, study_b = hex_id("a", 1), hex_id("b", 2)
    return [
        # Two boxes on one image, the second reaching past the image's edges.
        finding_row(study_a, "img1", "L", "CC", 4, box=(100.5, 200, 300, 400), categories="['Mass']",
                    finding_birads="BI-RADS 4"),
        finding_row(study_a, "img1", "L", "CC", 4, box=(-12.0, 3000, 2900, 3600),
                    categories="['Suspicious Calcification', 'Mass']", finding_birads="BI-RADS 4"),
        finding_row(study_a, "img2", "L", "MLO", 4),
        # A boxed finding without its own BI-RADS (a lymph node) on a BI-RADS 1 breast.
        finding_row(study_a, "img3", "R", "CC", 1, box=(10, 10, 50, 50), categories="['Lymph Node']"),
        finding_row(study_a, "img4", "R", "MLO", 1),
        finding_row(study_b, "img5", "L", "CC", 3, split="test", box=(5, 5, 25, 35), categories="['Mass']",
                    finding_birads="BI-RADS 3"),
        finding_row(study_b, "img6", "L", "MLO", 3, split="test"),
        finding_row(study_b, "img7", "R", "CC", 5, split="test", size=(2812, 2012)),
        finding_row(study_b, "img8", "R", "MLO", 2, split="test"),
    ]


def test_reads_images_labels_boxes_and_split(tmp_path):
    root = write_vindr(tmp_path / "vindr", small_dataset())
    frame = vindr.read(root).set_index("image_id")

    assert len(frame) == 8
    img1 = frame.loc["img1"]
    assert img1.label == "malignant" and img1.birads == 4 and img1.has_roi
    assert img1.roi == [
        {"type": "box", "xmin": 100.5, "ymin": 200.0, "xmax": 300.0, "ymax": 400.0},
        # Clipped to the 2800 x 3518 image.
        {"type": "box", "xmin": 0.0, "ymin": 3000.0, "xmax": 2800.0, "ymax": 3518.0},
    ]
    assert Path(img1.path) == (root / "images" / hex_id("a", 1) / "img1.dicom").resolve()
    assert (img1.patient_id, img1.study_id, img1.dataset) == (hex_id("a", 1), hex_id("a", 1), "vindr")
    assert (img1.view, img1.laterality, img1.split) == ("CC", "L", "train")
    assert frame.loc["img3"].label == "normal" and frame.loc["img3"].has_roi
    assert frame.loc["img4"].label == "normal" and not frame.loc["img4"].has_roi
    assert list(frame.loc[["img5", "img6", "img7", "img8"], "label"]) == ["benign", "benign", "malignant", "benign"]
    assert set(frame.loc[["img5", "img6", "img7", "img8"], "split"]) == {"test"}
    assert frame.loc["img6"].roi == []


def test_header_names_are_stripped(tmp_path):
    header = [f" {name} " if name in ("laterality", "split") else name for name in HEADER]
    root = write_vindr(tmp_path / "vindr", small_dataset(), header=header)
    assert len(vindr.read(root)) == 8


def test_box_wholly_outside_the_image_is_dropped(tmp_path, caplog):
    rows = [finding_row(hex_id("a", 1), "img1", box=(2900, 10, 3000, 20), categories="['Mass']")]
    root = write_vindr(tmp_path / "vindr", rows)
    with caplog.at_level(logging.WARNING):
        frame = vindr.read(root)
    assert not frame["has_roi"].iloc[0] and frame["roi"].iloc[0] == []
    assert "wholly outside" in caplog.text


@pytest.mark.parametrize(
    "change, column",
    [
        ({"finding_categories": "__import__('os').getcwd()"}, "finding_categories"),
        ({"finding_categories": "Mass"}, "finding_categories"),
        ({"breast_birads": "BI-RADS 7"}, "breast_birads"),
        ({"view_position": "ML"}, "view_position"),
        ({"split": "validation"}, "split"),
        ({"xmin": 5, "ymin": 5, "xmax": 9, "ymax": ""}, "ymax"),
        ({"xmin": "a", "ymin": 5, "xmax": 9, "ymax": 9}, "xmin"),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path, change, column):
    rows = small_dataset()
    rows[2] = {**rows[2], **change}
    root = write_vindr(tmp_path / "vindr", rows)
    with pytest.raises(SourceError) as error:
        vindr.read(root)
    assert "finding_annotations.csv, line 4" in str(error.value)
    assert f"column '{column}'" in str(error.value)


def test_ragged_csv_names_the_file_and_line(tmp_path):
    root = write_vindr(tmp_path / "vindr", small_dataset())
    with open(root / "finding_annotations.csv", "a") as handle:
        handle.write("a,b,c," * 6 + "\n")
    with pytest.raises(SourceError, match=r"finding_annotations.csv: not a readable CSV .*line 11"):
        vindr.read(root)


def test_rows_of_one_image_must_agree(tmp_path):
    rows = small_dataset()
    rows[1] = {**rows[1], "breast_birads": "BI-RADS 2"}
    root = write_vindr(tmp_path / "vindr", rows)
    with pytest.raises(SourceError, match="line 3: image img1 has birads 2"):
        vindr.read(root)


def test_missing_images_stop_unless_allowed(tmp_path, caplog):
    root = write_vindr(tmp_path / "vindr", small_dataset())
    gone = root / "images" / hex_id("b", 2) / "img7.dicom"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 8 images listed missing on disk \(first: .*img7.dicom\)"):
        vindr.read(root)
    with caplog.at_level(logging.WARNING):
        frame = vindr.read(root, allow_missing=True)
    assert len(frame) == 7 and "img7" not in set(frame["image_id"])
    assert "dropped 1 of 8" in caplog.text


# The ROI paper's Tables 1-2 (VinDr): rows per (split, label, ROI presence), chosen so that
# every margin equals the paper's: 5,276 training / 1,318 test, 988 malignant, with ROI
# 952 malignant / 816 benign, without 36 malignant / 4,790 benign.
PAPER_GROUPS = {
    ("training", "malignant", True): 762, ("training", "malignant", False): 28,
    ("training", "benign", True): 653, ("training", "benign", False): 3833,
    ("test", "malignant", True): 190, ("test", "malignant", False): 8,
    ("test", "benign", True): 163, ("test", "benign", False): 957,
    # BI-RADS 1 images, some with a box: in the manifest, not in the tables.
    ("training", "normal", True): 12, ("training", "normal", False): 300,
    ("test", "normal", True): 3, ("test", "normal", False): 85,
}
BIRADS_CHOICES = {"malignant": (4, 5), "benign": (2, 3), "normal": (1,)}


def paper_rows() -> list[dict]:
    """finding_annotations.csv rows with PAPER_GROUPS' counts, in studies of four views."""
    rows, image_number, study_number = [], 0, 0
    for split in ("training", "test"):
        images = [
            (label, roi) for (group_split, label, roi), n in PAPER_GROUPS.items() if group_split == split for _ in range(n)
        ]
        for start in range(0, len(images), 4):
            study_number += 1
            study = hex_id("5", study_number)
            for (laterality, view), (label, roi) in zip(VIEWS, images[start:start + 4]):
                image_number += 1
                image = hex_id("1", image_number)
                birads = BIRADS_CHOICES[label][image_number % len(BIRADS_CHOICES[label])]
                if not roi:
                    rows.append(finding_row(study, image, laterality, view, birads, split))
                    continue
                # One to three boxes; every fifth box pokes out of the image, every
                # fourth has no finding BI-RADS.
                for box_number in range(1 + image_number % 3):
                    left = -8.0 if image_number % 5 == 0 else 100.0 * box_number
                    rows.append(finding_row(
                        study, image, laterality, view, birads, split,
                        box=(left, 50.0, left + 200.0, 260.0), categories="['Mass']",
                        finding_birads="" if image_number % 4 == 0 else f"BI-RADS {birads}",
                    ))
    return rows


def cells(table: dict, *columns: str) -> dict:
    """The paper's rows of a summary table as tuples of the given columns."""
    return {row: tuple(table[row][column] for column in columns) for row in ("malignant", "benign", "total")}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command", required=True)
    manifest_command.register(subparsers)
    summarize_command.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def test_reproduces_the_roi_papers_tables_1_and_2(tmp_path, capsys):
    root = write_vindr(tmp_path / "vindr", paper_rows())
    out = tmp_path / "manifest.csv"
    assert cli("manifest", "--dataset", "vindr", "--root", str(root), "--out", str(out)) == 0
    capsys.readouterr()

    frame = read_manifest(out)
    assert frame["roi"].map(len).max() == 3  # multi-box images made it through
    summary = summarize(frame)
    table_1, table_2 = summary["by_split"], summary["by_roi"]
    assert cells(table_1, "train", "test", "total") == {
        "malignant": (790, 198, 988), "benign": (4486, 1120, 5606), "total": (5276, 1318, 6594),
    }
    assert cells(table_2, "with_roi", "without_roi", "total") == {
        "malignant": (952, 36, 988), "benign": (816, 4790, 5606), "total": (1768, 4826, 6594),
    }
    assert table_1["normal"]["total"] == 400 and table_1["all"]["total"] == 6994
    assert summary["images"] == 6994 and summary["patients"] == summary["studies"] == 6994 // 4 + 1

    assert cli("summarize", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out) == summary
    text = summarize_command.format_summary(summary, str(out))
    assert re.search(r"train +test +total\nmalignant +790 +198 +988\n", text)
    assert re.search(
        r"with ROI +without ROI +total\n"
        r"malignant +952 +36 +988\nbenign +816 +4790 +5606\ntotal +1768 +4826 +6594\n",
        text,
    )
