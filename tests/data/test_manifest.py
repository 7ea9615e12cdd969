"""The manifest contract: round trip, typed columns, and clear errors for bad input."""

from pathlib import Path

import pandas as pd
import pytest

from vismae.data.manifest import (
    COLUMNS,
    IMAGE_KIND,
    ManifestError,
    image_kind_counts,
    mixed_image_kinds,
    new_frame,
    read_manifest,
    require_one_image_kind,
    view_names,
    write_manifest,
)


def row(image_id="a", patient_id="p1", split="train", **changes):
    base = dict(
        image_id=image_id,
        patient_id=patient_id,
        study_id="s1",
        dataset="test",
        path=f"/data/{image_id}.png",
        view="CC",
        laterality="L",
        label="benign",
        birads=3,
        has_roi=True,
        roi=[{"type": "box", "xmin": 1.5, "ymin": 2, "xmax": 30, "ymax": 40}],
        split=split,
    )
    base.update(changes)
    return base


def test_round_trip_keeps_types_and_makes_local_paths_relative(tmp_path: Path):
    rows = [
        row("a", path=str(tmp_path / "images" / "a.png")),
        row("b", patient_id="p2", split="test", view="MLO", laterality="R", label="normal",
            birads=None, has_roi=False, roi=[], path="/elsewhere/b.dcm"),
    ]
    target = write_manifest(new_frame(rows), tmp_path / "manifest.csv")
    text = target.read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS + [IMAGE_KIND])
    assert "images/a.png" in text and str(tmp_path) not in text  # relative under the folder
    assert "/elsewhere/b.dcm" in text  # absolute outside it

    frame = read_manifest(target)
    assert frame["path"].tolist() == [str(tmp_path / "images" / "a.png"), "/elsewhere/b.dcm"]
    assert frame["birads"].tolist()[0] == 3 and frame["birads"].isna().tolist() == [False, True]
    assert frame["has_roi"].tolist() == [True, False]
    assert frame["roi"][0] == [{"type": "box", "xmin": 1.5, "ymin": 2, "xmax": 30, "ymax": 40}]
    assert view_names(frame).tolist() == ["LCC", "RMLO"]


def test_moving_a_folder_keeps_relative_paths_valid(tmp_path: Path):
    first = tmp_path / "one"
    write_manifest(new_frame([row(path=str(first / "images" / "a.png"))]), first / "manifest.csv")
    moved = tmp_path / "two"
    first.rename(moved)
    assert read_manifest(moved / "manifest.csv")["path"][0] == str(moved / "images" / "a.png")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(view="AP"), "column 'view' is 'AP', expected one of CC, MLO"),
        (dict(laterality="B"), "column 'laterality'"),
        (dict(label="cancer"), "column 'label' is 'cancer'"),
        (dict(split="training"), "column 'split' is 'training'"),
        (dict(birads=9), "birads"),
        (dict(has_roi=False), "has_roi is False but the roi column holds 1 shapes"),
        (dict(roi=[{"type": "star"}]), "type 'star'"),
        (dict(roi=[{"type": "box", "xmin": 1}]), "lacks ymin, xmax, ymax"),
        (dict(image_kind="CM"), "column 'image_kind' is 'CM', expected one of DM, CESM"),
    ],
)
def test_bad_values_are_refused_with_the_line(tmp_path: Path, changes, message):
    frame = new_frame([row("a"), row("b", patient_id="p2", **changes)])
    with pytest.raises(ManifestError, match="line 3") as error:
        write_manifest(frame, tmp_path / "manifest.csv")
    assert message in str(error.value)
    assert not (tmp_path / "manifest.csv").exists()


def test_duplicate_ids_and_split_leaks_are_refused(tmp_path: Path):
    with pytest.raises(ManifestError, match="image_id 'a' appears more than once"):
        write_manifest(new_frame([row("a"), row("a", patient_id="p2")]), tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="patient 'p1' is in splits test, train"):
        write_manifest(new_frame([row("a"), row("b", split="test")]), tmp_path / "m.csv")


def test_reading_names_the_file_and_line(tmp_path: Path):
    target = write_manifest(new_frame([row("a"), row("b", patient_id="p2")]), tmp_path / "m.csv")
    text = target.read_text().replace(",true,", ",maybe,", 1)
    target.write_text(text)
    with pytest.raises(ManifestError, match=r"m\.csv, line 2: has_roi is 'maybe'"):
        read_manifest(target)
    (tmp_path / "short.csv").write_text("image_id,path\na,b\n")
    with pytest.raises(ManifestError, match="missing columns patient_id"):
        read_manifest(tmp_path / "short.csv")


def test_cache_manifest_keeps_mask_path(tmp_path: Path):
    rows = [row("a", path=str(tmp_path / "images/a.png"), mask_path=str(tmp_path / "masks/a.png"))]
    frame = read_manifest(write_manifest(new_frame(rows), tmp_path / "manifest.csv"))
    assert frame["mask_path"][0] == str(tmp_path / "masks" / "a.png")


def test_image_kind_round_trips_and_an_older_manifest_reads_without_it(tmp_path: Path):
    frame = new_frame([row("a", image_kind="DM"), row("b", patient_id="p2", image_kind="CESM"), row("c", patient_id="p3")])
    assert frame[IMAGE_KIND].tolist() == ["DM", "CESM", ""]  # a reader that does not say: empty
    target = write_manifest(frame, tmp_path / "manifest.csv")
    assert read_manifest(target)[IMAGE_KIND].tolist() == ["DM", "CESM", ""]
    # A manifest written before the column existed: read, every kind unknown, no error.
    raw = pd.read_csv(target, dtype=str, keep_default_na=False)
    raw.drop(columns=IMAGE_KIND).to_csv(tmp_path / "old.csv", index=False)
    assert (tmp_path / "old.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    again = read_manifest(tmp_path / "old.csv")
    assert again[IMAGE_KIND].tolist() == ["", "", ""]
    assert image_kind_counts(again) == {"unknown": 3} and mixed_image_kinds(again) is None
    # Written again, it gains the column.
    assert read_manifest(write_manifest(again, tmp_path / "new.csv"))[IMAGE_KIND].tolist() == ["", "", ""]


def test_mixed_image_kinds_are_named_with_their_counts():
    rows = [row(f"d{n}", patient_id=f"p{n}", image_kind="DM") for n in range(3)] + [
        row(f"c{n}", patient_id=f"p{n}", image_kind="CESM") for n in range(2)
    ]
    frame = new_frame(rows + [row("u", patient_id="p9")])
    assert image_kind_counts(frame) == {"CESM": 2, "DM": 3, "unknown": 1}
    problem = mixed_image_kinds(frame)
    assert "2 CESM and 3 DM images" in problem and "--include-cesm" in problem
    with pytest.raises(ManifestError, match=r"finetuning: the rows mix image kinds \(2 CESM and 3 DM images\)"):
        require_one_image_kind(frame, "finetuning")
    # One kind, with or without unknown rows beside it, is no mix.
    require_one_image_kind(frame[frame[IMAGE_KIND] != "CESM"], "finetuning")
    assert mixed_image_kinds(frame[frame[IMAGE_KIND] == "CESM"]) is None
