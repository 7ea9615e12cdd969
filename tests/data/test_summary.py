"""The counts of `vismae summarize` and its text and JSON output."""

import argparse
import json
import re

import pytest

from vismae.commands import summarize as summarize_command
from vismae.data.manifest import new_frame, write_manifest
from vismae.data.summary import summarize

BOX = [{"type": "box", "xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}]


def image(number, patient, split, label, laterality="L", view="CC", roi=False, dataset="vindr", kind="DM"):
    return {
        "image_id": f"i{number}", "patient_id": patient, "study_id": f"s-{patient}", "dataset": dataset,
        "path": f"/data/i{number}.png", "view": view, "laterality": laterality, "label": label,
        "birads": None, "has_roi": roi, "roi": BOX if roi else [], "split": split, "image_kind": kind,
    }


@pytest.fixture
def frame():
    return new_frame([
        image(1, "a", "train", "malignant", "R", "CC", roi=True),
        image(2, "a", "train", "malignant", "R", "MLO", roi=True),
        image(3, "a", "train", "benign", "L", "CC"),
        image(4, "b", "val", "benign", "L", "MLO", roi=True),
        image(5, "c", "test", "malignant", "L", "MLO"),
        image(6, "c", "test", "normal", "R", "CC", roi=True),
        image(7, "d", "test", "unknown", "L", "CC", dataset="table", kind=""),
    ])


def test_counts_by_split_roi_and_view(frame):
    summary = summarize(frame)
    assert (summary["images"], summary["patients"], summary["studies"]) == (7, 4, 4)
    assert summary["datasets"] == {"table": 1, "vindr": 6}
    assert summary["image_kinds"] == {"DM": 6, "unknown": 1}
    assert summary["patients_by_split"] == {"train": 1, "val": 1, "test": 2}
    assert summary["by_split"] == {
        "malignant": {"train": 2, "val": 0, "test": 1, "total": 3},
        "benign": {"train": 1, "val": 1, "test": 0, "total": 2},
        "total": {"train": 3, "val": 1, "test": 1, "total": 5},
        "normal": {"train": 0, "val": 0, "test": 1, "total": 1},
        "unknown": {"train": 0, "val": 0, "test": 1, "total": 1},
        "all": {"train": 3, "val": 1, "test": 3, "total": 7},
    }
    by_roi = summary["by_roi"]
    assert by_roi["malignant"] == {"with_roi": 2, "without_roi": 1, "total": 3}
    assert by_roi["benign"] == {"with_roi": 1, "without_roi": 1, "total": 2}
    assert by_roi["total"] == {"with_roi": 3, "without_roi": 2, "total": 5}
    assert by_roi["all"] == {"with_roi": 4, "without_roi": 3, "total": 7}
    by_view = summary["by_view"]
    assert by_view["malignant"] == {"RCC": 1, "LCC": 0, "RMLO": 1, "LMLO": 1, "total": 3}
    assert by_view["total"] == {"RCC": 1, "LCC": 1, "RMLO": 1, "LMLO": 2, "total": 5}
    assert by_view["all"]["total"] == 7


def test_a_manifest_of_one_label_fills_every_cell(frame):
    summary = summarize(frame[frame["label"] == "benign"])
    assert summary["by_split"]["malignant"] == {"train": 0, "val": 0, "test": 0, "total": 0}
    assert summary["by_split"]["total"]["total"] == 2 and summary["by_split"]["all"]["total"] == 2


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    summarize_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_prints_tables_and_json(frame, tmp_path, capsys):
    path = write_manifest(frame, tmp_path / "manifest.csv")
    assert run("summarize", str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out) == summarize(frame)

    assert run("summarize", str(path)) == 0
    text = capsys.readouterr().out
    assert "7 images, 4 patients (train 1, val 1, test 2), 4 studies" in text
    assert "image kinds: DM 6, unknown 1" in text
    assert re.search(
        r"train +val +test +total\n"
        r"malignant +2 +0 +1 +3\nbenign +1 +1 +0 +2\ntotal +3 +1 +1 +5\n"
        r"normal +0 +0 +1 +1\nunknown +0 +0 +1 +1\nall +3 +1 +3 +7\n",
        text,
    )
    assert re.search(r"with ROI +without ROI +total\nmalignant +2 +1 +3\n", text)
    assert re.search(r"RCC +LCC +RMLO +LMLO +total\nmalignant +1 +0 +1 +1 +3\n", text)


def test_text_leaves_out_empty_rows_and_columns(frame, tmp_path, capsys):
    classified = frame[frame["label"].isin(["benign", "malignant"]) & (frame["split"] != "val")]
    path = write_manifest(classified, tmp_path / "manifest.csv")
    assert run("summarize", str(path)) == 0
    text = capsys.readouterr().out
    assert re.search(r" +train +test +total\n", text)  # no val column
    assert "normal" not in text and "\nall " not in text
