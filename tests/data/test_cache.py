"""`prepare` end to end: outputs, cache manifest, resume, settings check, failures, shards."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.uid import RLELossless

from vismae import cli
from vismae.data.cache import in_shard, merge, parse_shard, prepare, read_transforms, safe_name
from vismae.data.manifest import new_frame, read_manifest, write_manifest

HEIGHT, WIDTH = 240, 200
SIZE = (64, 48)
PATIENT_NAME = "Doe^Jane"
BIRTH_DATE = "19510203"
LESION = {"cx": 60.0, "cy": 110.0, "r": 16.0}  # on the breast of an L image
LESION_BOX = {"type": "box", "xmin": 44.0, "ymin": 94.0, "xmax": 76.0, "ymax": 126.0}


def breast_image(on_right: bool, lesion: bool) -> np.ndarray:
    """[0, 1] half-ellipse breast against one edge, with an optional bright round lesion."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH] + 0.5
    if on_right:
        xx = WIDTH - xx
    image = np.zeros((HEIGHT, WIDTH))
    breast = (xx / 130) ** 2 + ((yy - 120) / 100) ** 2 <= 1
    image[breast] = 0.35 + 0.1 * (1 - xx[breast] / 130)
    if lesion:
        image[(xx - LESION["cx"]) ** 2 + (yy - LESION["cy"]) ** 2 <= LESION["r"] ** 2] = 0.95
    return image


def mirrored_box(box: dict) -> dict:
    return {**box, "xmin": WIDTH - box["xmax"], "xmax": WIDTH - box["xmin"]}


def mammogram_dicom(dicom_file, path, image: np.ndarray, monochrome1=False, compress=None):
    """``image`` in [0, 1] as a 12-bit windowed DICOM of a named patient, stored inverted when MONOCHROME1."""
    stored = np.rint(image * 4000 + 20).astype(np.uint16)
    options = {"transfer_syntax": compress} if compress else {}
    if monochrome1:
        stored, options["photometric"] = 4095 - stored, "MONOCHROME1"
    dicom_file(path, stored, bits_stored=12, WindowCenter=4096 - 2020 if monochrome1 else 2020, WindowWidth=4000,
               PatientName=PATIENT_NAME, PatientBirthDate=BIRTH_DATE, **options)  # fmt: skip


def row(image_id, path, laterality, shapes=(), patient="P1"):
    return {
        "image_id": image_id, "patient_id": patient, "study_id": f"S-{patient}", "dataset": "test",
        "path": str(path), "view": "CC", "laterality": laterality, "label": "benign" if shapes else "normal",
        "birads": 2 if shapes else 1, "has_roi": bool(shapes), "roi": list(shapes), "split": "train",
    }


def build_dataset(folder, dicom_file, corrupt=True):
    """Six images in four formats (two with ROIs, one ROI a mask file), and a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    mammogram_dicom(dicom_file, folder / "l_lesion.dcm", breast_image(False, True))
    mammogram_dicom(dicom_file, folder / "r_lesion.dcm", breast_image(True, True), monochrome1=True, compress=RLELossless)
    mammogram_dicom(dicom_file, folder / "l_plain.dcm", breast_image(False, False))
    cv2.imwrite(str(folder / "r16.png"), np.rint(breast_image(True, False) * 65535).astype(np.uint16))
    cv2.imwrite(str(folder / "l8.jpg"), np.rint(breast_image(False, False) * 255).astype(np.uint8))
    lesion_mask = (breast_image(True, True) > 0.9).astype(np.uint8) * 255
    cv2.imwrite(str(folder / "r8_mask.png"), lesion_mask)
    cv2.imwrite(str(folder / "r8.png"), np.rint(breast_image(True, True) * 255).astype(np.uint8))
    rows = [
        row("1.2.3/L lesion", folder / "l_lesion.dcm", "L", [LESION_BOX]),
        row("r-lesion", folder / "r_lesion.dcm", "R", [mirrored_box(LESION_BOX)], patient="P2"),
        row("l-plain", folder / "l_plain.dcm", "L", patient="P3"),
        row("r16", folder / "r16.png", "R", patient="P4"),
        row("l8", folder / "l8.jpg", "L", patient="P5"),
        row("r8-mask", folder / "r8.png", "R", [{"type": "mask", "path": str(folder / "r8_mask.png")}], patient="P6"),
    ]
    if corrupt:
        # A download cut short: the header is fine, the pixel data is not all there.
        mammogram_dicom(dicom_file, folder / "whole.dcm", breast_image(False, False))
        data = (folder / "whole.dcm").read_bytes()
        (folder / "corrupt.dcm").write_bytes(data[: len(data) // 2])
        rows.append(row("corrupt", folder / "corrupt.dcm", "L", patient="P7"))
    return write_manifest(new_frame(rows), folder / "manifest.csv")


@pytest.fixture
def manifest(tmp_path, dicom_file):
    return build_dataset(tmp_path / "raw", dicom_file)


@pytest.fixture
def clean_manifest(tmp_path, dicom_file):
    return build_dataset(tmp_path / "raw", dicom_file, corrupt=False)


def run_prepare(manifest, out, **options):
    return prepare(manifest, out, **{"size": SIZE, "workers": 1, "progress": False, **options})


def outputs(out) -> dict:
    """Every file of a cache folder and its modification time."""
    return {path.relative_to(out).as_posix(): path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}


def test_prepare_writes_images_masks_and_a_valid_cache_manifest(manifest, tmp_path):
    out = tmp_path / "cache"
    summary = run_prepare(manifest, out)
    assert (summary.total, summary.prepared, summary.failed, summary.cached, summary.reported) == (7, 6, 1, 6, 1)

    cached = read_manifest(out / "manifest.csv")
    assert "mask_path" in cached.columns and "corrupt" not in set(cached["image_id"])
    for item in cached.itertuples():
        pixels = cv2.imread(item.path, cv2.IMREAD_UNCHANGED)
        assert pixels.shape == SIZE and pixels.dtype == np.uint16
        assert pixels[:, 0].any(), f"{item.image_id}: breast not at the left edge"
        assert bool(item.mask_path) == item.has_roi
    by_id = cached.set_index("image_id")
    assert by_id.loc["r8-mask", "roi"] == [{"type": "mask", "path": by_id.loc["r8-mask", "mask_path"]}]
    box = by_id.loc["r-lesion", "roi"][0]
    assert box["type"] == "box" and 0 <= box["xmin"] < box["xmax"] <= SIZE[1]
    assert by_id.loc["1.2.3/L lesion", "roi"] == [box]  # mirrored twins meet in one place

    for image_id in ("1.2.3/L lesion", "r-lesion", "r8-mask"):
        pixels = cv2.imread(by_id.loc[image_id, "path"], cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(by_id.loc[image_id, "mask_path"], cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        blob = pixels > 0.75 * 65535
        assert blob.sum() > 10 and (mask[blob] > 0).mean() > 0.9, f"{image_id}: the mask misses the lesion"

    transforms = read_transforms(out)
    assert set(transforms) == set(cached["image_id"])
    assert transforms["r-lesion"].flipped and not transforms["l-plain"].flipped
    report = pd.read_csv(out / "prepare_report.csv")
    assert list(report.columns) == ["image_id", "path", "reason"]
    assert report["image_id"].tolist() == ["corrupt"] and "corrupt.dcm" in report["path"][0]
    assert json.loads((out / "prepare.json").read_text())["preprocessing"]["size"] == list(SIZE)


def test_rerun_does_only_what_is_missing(clean_manifest, tmp_path):
    out = tmp_path / "cache"
    assert run_prepare(clean_manifest, out).prepared == 6
    before = outputs(out)
    again = run_prepare(clean_manifest, out)
    assert (again.already_done, again.prepared) == (6, 0)
    after = outputs(out)
    assert {k: v for k, v in after.items() if k.startswith(("images", "masks", "records"))} == {
        k: v for k, v in before.items() if k.startswith(("images", "masks", "records"))
    }
    removed = f"images/{safe_name('l8')}.png"
    (out / removed).unlink()
    third = run_prepare(clean_manifest, out)
    assert (third.already_done, third.prepared) == (5, 1)
    redone = {k for k, v in outputs(out).items() if before.get(k) != v and k.startswith(("images", "masks"))}
    assert redone == {removed}


def test_an_edited_roi_is_prepared_again(clean_manifest, tmp_path):
    out = tmp_path / "cache"
    run_prepare(clean_manifest, out)
    frame = read_manifest(clean_manifest)
    frame.at[frame.index[frame["image_id"] == "r-lesion"][0], "roi"] = []
    frame.loc[frame["image_id"] == "r-lesion", "has_roi"] = False
    frame.at[frame.index[frame["image_id"] == "l8"][0], "roi"] = [LESION_BOX]
    frame.loc[frame["image_id"] == "l8", "has_roi"] = True
    write_manifest(frame, clean_manifest)
    summary = run_prepare(clean_manifest, out)
    assert (summary.already_done, summary.prepared) == (4, 2)
    cached = read_manifest(out / "manifest.csv").set_index("image_id")
    assert cached.loc["r-lesion", "roi"] == [] and cached.loc["r-lesion", "mask_path"] == ""
    assert cached.loc["l8", "roi"][0]["type"] == "box" and cached.loc["l8", "mask_path"]


def test_other_settings_in_the_same_folder_are_refused(clean_manifest, tmp_path):
    out = tmp_path / "cache"
    run_prepare(clean_manifest, out)
    with pytest.raises(ValueError, match=r"size was \[64, 48\], now \[96, 96\]"):
        run_prepare(clean_manifest, out, size=(96, 96))
    with pytest.raises(ValueError, match="bits was 16, now 8"):
        run_prepare(clean_manifest, out, bits=8)
    with pytest.raises(ValueError, match="clahe_clip"):
        run_prepare(clean_manifest, out, clahe_clip=4.0)


def test_shards_are_disjoint_and_together_complete(clean_manifest, tmp_path):
    ids = set(read_manifest(clean_manifest)["image_id"])
    done = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        summary = run_prepare(clean_manifest, out, shard=(index, 2))
        done.append(set(read_manifest(out / "manifest.csv")["image_id"]))
        assert summary.pending == len(ids) - len(done[-1])
    assert done[0] and done[1] and not done[0] & done[1] and done[0] | done[1] == ids

    shared = tmp_path / "shared"
    first = run_prepare(clean_manifest, shared, shard=(0, 2))
    assert first.pending == len(done[1])
    last = run_prepare(clean_manifest, shared, shard=(1, 2))
    assert last.pending == 0 and set(read_manifest(shared / "manifest.csv")["image_id"]) == ids
    (shared / "manifest.csv").unlink()
    assert merge(clean_manifest, shared) == (len(ids), 0, 0)
    assert set(read_manifest(shared / "manifest.csv")["image_id"]) == ids


def test_shard_assignment_is_deterministic():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    ids = [f"image-{n}" for n in range(400)]
    counts = [sum(in_shard(i, (k, 4)) for i in ids) for k in range(4)]
    assert sum(counts) == 400 and min(counts) > 60


def test_worker_processes_give_the_same_cache(clean_manifest, tmp_path):
    run_prepare(clean_manifest, tmp_path / "one")
    run_prepare(clean_manifest, tmp_path / "two", workers=2)
    for name in sorted(p.name for p in (tmp_path / "one" / "images").iterdir()):
        one = cv2.imread(str(tmp_path / "one" / "images" / name), cv2.IMREAD_UNCHANGED)
        two = cv2.imread(str(tmp_path / "two" / "images" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(one, two)


def test_no_patient_name_in_any_output(manifest, tmp_path):
    out = tmp_path / "cache"
    run_prepare(manifest, out)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Doe" not in data and BIRTH_DATE.encode() not in data, path


def test_safe_names_do_not_collide():
    assert safe_name("abc-1.2") == "abc-1.2"
    assert safe_name("a/b") != safe_name("a_b") and "/" not in safe_name("a/b")
    assert not safe_name("../x").startswith(".")


def test_command_line(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["prepare"])  # this command alone, as `vismae` runs it
    main = cli.main
    out = tmp_path / "cache"
    args = ["prepare", str(manifest), "--out", str(out), "--size", "64x48", "--bits", "8",
            "--workers", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "6 prepared now, 1 failed" in printed and "1 images skipped" in printed
    assert cv2.imread(str(next((out / "images").iterdir())), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    assert main(["prepare", str(manifest), "--out", str(out), "--merge-only"]) == 0
    assert main(args[:-1] + ["--size", "64x"]) == 2
    assert "size '64x'" in capsys.readouterr().err
    assert main(args + ["--size", "96"]) == 2  # other settings, same folder
