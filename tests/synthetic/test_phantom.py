"""The phantom generator: each format's layout, headers, pixels, annotations and determinism."""

from __future__ import annotations

import argparse
import ast
import json
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless, RLELossless

from vismae.commands import phantom as phantom_command
from vismae.synthetic import FORMATS, make_phantom
from vismae.synthetic.cohort import CASE_SERIES, SCREENING, sample_cohort
from vismae.synthetic.render import render_view

SIZE = (256, 208)  # rows, columns: small, with the real images' aspect
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> Path:
    # Five patients: one study per detector profile, so every DICOM variant is present.
    return make_phantom("vindr", tmp_path_factory.mktemp("phantom") / "vindr", 5, seed=7, image_size=SIZE)


@pytest.fixture(scope="module")
def cdd(tmp_path_factory) -> Path:
    return make_phantom("cdd-cesm", tmp_path_factory.mktemp("phantom") / "cdd", 6, seed=7, image_size=SIZE)


@pytest.fixture(scope="module")
def cbis(tmp_path_factory) -> Path:
    return make_phantom("cbis-ddsm", tmp_path_factory.mktemp("phantom") / "cbis", 5, seed=7, image_size=SIZE)


def presentation(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> modality LUT -> VOI -> MONOCHROME1 inversion, scaled to [0, 1]."""
    values = apply_modality_lut(ds.pixel_array, ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about float input to a VOI LUT
        values = apply_voi_lut(values, ds).astype(np.float64)
    values = (values - values.min()) / (values.max() - values.min())
    return 1 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def ring_contrast(image: np.ndarray, mask: np.ndarray, spots: bool = False) -> float:
    """How much brighter ``mask`` is than a ring around it: by the mean (masses) or, for
    calcifications (``spots``), by the brightest pixels."""
    size = max(3, int(np.sqrt(mask.sum()) / 2) * 2 + 1)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool) & ~mask
    if spots:
        return float(np.percentile(image[mask], 99) - np.percentile(image[ring], 99))
    return float(image[mask].mean() - image[ring].mean())


def box_mask(shape, row) -> np.ndarray:
    mask = np.zeros(shape, bool)
    xmin, ymin, xmax, ymax = (float(v) for v in (row.xmin, row.ymin, row.xmax, row.ymax))
    mask[max(0, int(ymin)): int(np.ceil(ymax)) + 1, max(0, int(xmin)): int(np.ceil(xmax)) + 1] = True
    return mask


# -- VinDr-Mammo -------------------------------------------------------------------------------


def test_vindr_layout_and_exact_headers(vindr):
    assert sorted(p.name for p in vindr.iterdir()) == [
        "breast-level_annotations.csv", "finding_annotations.csv", "images", "metadata.csv",
    ]
    assert (vindr / "finding_annotations.csv").read_text().splitlines()[0] == (
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
        "breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split"
    )
    assert (vindr / "breast-level_annotations.csv").read_text().splitlines()[0] == (
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
    )
    metadata_header = (vindr / "metadata.csv").read_text().splitlines()[0].split(",")
    assert "Image Laterality " in metadata_header and "SOP Instance UID" in metadata_header

    breasts = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    assert len(breasts) == 20 and breasts["study_id"].nunique() == 5
    for row in breasts.itertuples():
        assert HEX32.match(row.study_id) and HEX32.match(row.series_id) and HEX32.match(row.image_id)
        assert (vindr / "images" / row.study_id / f"{row.image_id}.dicom").is_file()
    assert sorted(p.name for p in (vindr / "images").iterdir()) == sorted(breasts["study_id"].unique())
    assert set(breasts["split"]) == {"training", "test"}
    assert breasts.groupby("study_id")["split"].nunique().max() == 1  # split at study level
    # BI-RADS is per breast: CC and MLO of a breast share it.
    assert breasts.groupby(["study_id", "laterality"])["breast_birads"].nunique().max() == 1
    metadata = pd.read_csv(vindr / "metadata.csv", dtype=str)
    assert set(metadata["SOP Instance UID"]) == set(breasts["image_id"])
    assert metadata["Patient's Age"].str.fullmatch(r"\d{3}Y").all()


def test_vindr_finding_rows_have_the_real_quirks(vindr):
    findings = pd.read_csv(vindr / "finding_annotations.csv", dtype=str, keep_default_na=False)
    categories = findings["finding_categories"].map(ast.literal_eval)
    empty_box = findings["xmin"] == ""
    assert (categories[empty_box] == pd.Series([["No Finding"]] * empty_box.sum(), index=categories[empty_box].index)).all()
    assert (findings.loc[empty_box, "finding_birads"] == "").all()
    assert not any("No Finding" in c for c in categories[~empty_box])
    # Every image without a box has exactly one row.
    assert findings[empty_box].groupby("image_id").size().max() == 1
    assert set(findings.loc[empty_box, "image_id"]).isdisjoint(findings.loc[~empty_box, "image_id"])

    boxes = findings[~empty_box].copy()
    for column in ("xmin", "ymin", "xmax", "ymax", "width", "height"):
        boxes[column] = boxes[column].astype(float)
    assert (boxes["xmin"] < boxes["xmax"]).all() and (boxes["ymin"] < boxes["ymax"]).all()
    assert ((boxes["xmin"] < 0) | (boxes["xmax"] > boxes["width"])).any(), "no box reaches past the image"
    assert (boxes["finding_birads"] == "").any(), "no boxed row without a finding BI-RADS"
    assert (boxes.groupby("image_id").size() > 1).any() or categories[~empty_box].map(len).max() > 1


def test_vindr_dicoms_decode_with_every_variant(vindr):
    breasts = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    seen = {key: set() for key in ("photometric", "bits", "syntax", "function", "lut", "windows", "slope")}
    for row in breasts.itertuples():
        ds = pydicom.dcmread(vindr / "images" / row.study_id / f"{row.image_id}.dicom")
        assert ds.pixel_array.shape == (int(row.height), int(row.width))
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography, For Presentation
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert (ds.ImageLaterality, ds.ViewPosition) == (row.laterality, row.view_position)
        assert str(ds.PatientName) and ds.PatientBirthDate
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID)
        seen["function"].add(ds.VOILUTFunction)
        seen["lut"].add("VOILUTSequence" in ds)
        seen["windows"].add(len(ds.WindowCenter) if isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else 1)
        seen["slope"].add((float(ds.RescaleSlope), float(ds.RescaleIntercept)))
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 13, 14, 15, 16}
    assert JPEG2000Lossless in seen["syntax"] and len(seen["syntax"]) > 1
    assert seen["function"] == {"LINEAR", "SIGMOID"}
    assert seen["lut"] == {True, False}
    assert max(seen["windows"]) > 1 and min(seen["windows"]) == 1
    assert len(seen["slope"]) > 1


def test_vindr_breast_touches_the_edge_of_its_side(vindr):
    breasts = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    for row in breasts.itertuples():
        image = presentation(pydicom.dcmread(vindr / "images" / row.study_id / f"{row.image_id}.dicom"))
        tissue = image > 0.15
        chest_wall, far = (0, -1) if row.laterality == "L" else (-1, 0)
        assert tissue[:, chest_wall].mean() > 0.5, f"{row.laterality}{row.view_position}: chest wall not at its edge"
        assert tissue[:, far].mean() < 0.05


def test_vindr_boxes_hold_brighter_lesions(vindr):
    findings = pd.read_csv(vindr / "finding_annotations.csv", keep_default_na=False)
    boxes = findings[findings["xmin"].astype(str) != ""]
    # Lymph nodes sit against the bright pectoral muscle: a ring around them is no fair background.
    boxes = boxes[~boxes["finding_categories"].str.contains("Lymph Node")]
    assert len(boxes) >= 4
    for row in boxes.itertuples():
        ds = pydicom.dcmread(vindr / "images" / row.study_id / f"{row.image_id}.dicom")
        image = presentation(ds)
        spots = "Mass" not in row.finding_categories and "Calcification" in row.finding_categories
        assert ring_contrast(image, box_mask(image.shape, row), spots) > 0.02, row.finding_categories


def test_no_identifying_dicom_attribute_reaches_a_csv(vindr):
    ds = pydicom.dcmread(next((vindr / "images").rglob("*.dicom")))
    text = "".join(path.read_text() for path in vindr.glob("*.csv"))
    assert str(ds.PatientName) not in text and ds.PatientBirthDate not in text and ds.PatientID not in text


# -- cohort: labels, BI-RADS and ROI presence ----------------------------------------------------


def test_label_mix_and_roi_presence_follow_vindr():
    breasts = [b for p in sample_cohort(400, seed=3, profile=SCREENING) for b in p.breasts.values()]
    labels = pd.Series([b.label for b in breasts])
    assert labels.value_counts(normalize=True).round(2).to_dict() == {"benign": 0.35, "normal": 0.35, "malignant": 0.3}
    roi_rate = pd.Series([b.has_roi for b in breasts]).groupby(labels).mean()
    assert roi_rate["malignant"] == pytest.approx(0.95, abs=0.01)
    assert roi_rate["benign"] == pytest.approx(0.25, abs=0.01)
    assert roi_rate["normal"] == 0
    allowed = {"normal": {1}, "benign": {2, 3}, "malignant": {4, 5}}
    assert all(b.birads in allowed[b.label] for b in breasts)
    assert all(not b.lesions for b in breasts if b.label == "normal")
    shapes = {(lesion.kind, lesion.shape, lesion.malignant) for b in breasts for lesion in b.lesions}
    assert {("mass", "spiculated", True), ("mass", "irregular", True), ("calcifications", "fine", True)} <= shapes
    assert {("mass", "round", False), ("mass", "oval", False), ("calcifications", "coarse", False)} <= shapes
    assert not any(lesion.malignant for b in breasts if b.label == "benign" for lesion in b.lesions)


def test_a_lesion_shows_in_both_views_of_its_breast():
    patients = sample_cohort(6, seed=5, profile=SCREENING)
    breast, patient = next((b, p) for p in patients for b in p.breasts.values() if b.label == "malignant")
    scenes = [render_view(patient, breast, view, SIZE, seed=5) for view in ("CC", "MLO")]
    for scene in scenes:
        assert [d.lesion for d in scene.lesions] == list(breast.lesions)
        for drawn in scene.lesions:
            assert ring_contrast(scene.mammogram(), drawn.mask(scene.shape)) > 0.05
            assert scene.anatomy.breast[drawn.mask(scene.shape)].mean() > 0.95  # inside the breast
    # The same distance from the chest wall in both views, give or take the breast's shape.
    distances = [
        abs(d.box()[0] + d.box()[2] - (0 if breast.laterality == "L" else 2 * (SIZE[1] - 1))) / 2
        for scene in scenes for d in scene.lesions[:1]
    ]
    assert abs(distances[0] - distances[1]) < 0.25 * SIZE[1]


def test_case_series_images_only_abnormal_breasts():
    patients = sample_cohort(40, seed=1, profile=CASE_SERIES)
    breasts = [b for p in patients for b in p.breasts.values()]
    assert {b.label for b in breasts} == {"benign", "malignant"} and all(b.has_roi for b in breasts)
    assert 1 <= sum(len(p.breasts) == 2 for p in patients) < len(patients)


# -- CDD-CESM -----------------------------------------------------------------------------------


def test_cdd_layout_workbook_and_missing_views(cdd):
    low, subtracted = cdd / "Low energy images of CDD-CESM", cdd / "Subtracted images of CDD-CESM"
    names = [p.name for p in low.iterdir()] + [p.name for p in subtracted.iterdir()]
    assert all(re.fullmatch(r"P\d+_[LR]_(DM|CM)_(CC|MLO) ?\.jpg", name) for name in names)
    assert all("_DM_" in p.name for p in low.iterdir()) and all("_CM_" in p.name for p in subtracted.iterdir())
    assert any(name.endswith(" .jpg") for name in names)
    assert len(names) < 6 * 8, "every patient has all eight images"

    workbook = pd.read_excel(cdd / "Radiology manual annotations.xlsx", sheet_name="all")
    assert list(workbook.columns) == [
        "Image_name", "Patient_ID", "Side", "Type", "Age", "Breast density (ACR)", "BIRADS", "Findings",
        "View", "Tags", "Machine", "Pathology Classification/ Follow up",
    ]
    assert set(workbook["Type"]) == {"DM", "CESM"}
    assert set(workbook["Pathology Classification/ Follow up"]) == {"Normal", "Benign", "Malignant"}
    assert (workbook["Image_name"] != workbook["Image_name"].str.strip()).any()
    on_disk = {name.replace(" .jpg", ".jpg").removesuffix(".jpg") for name in names}
    assert set(workbook["Image_name"].str.strip()) == on_disk
    image = cv2.imread(str(next(low.iterdir())), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.ndim == 2 and image.shape == SIZE


def test_cdd_outlines_use_every_via_shape_and_cover_the_lesion(cdd):
    lines = (cdd / "Radiology_hand_drawn_segmentations_v2.csv").read_text().splitlines()
    assert lines[0] == "#filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes"
    regions = pd.read_csv(cdd / "Radiology_hand_drawn_segmentations_v2.csv")
    shapes = regions["region_shape_attributes"].map(json.loads)
    assert {s.get("name") for s in shapes} == {"polygon", "ellipse", "circle", "point", "polyline", None}
    assert (regions.loc[shapes.map(len) == 0, "region_count"] == 0).all()

    workbook = pd.read_excel(cdd / "Radiology manual annotations.xlsx", sheet_name="all")
    labels = dict(zip(workbook["Image_name"].str.strip(), workbook["Pathology Classification/ Follow up"]))
    uptake = {"Malignant": [], "Benign": []}
    for name, group in regions.groupby("#filename"):
        folder = "Low energy images of CDD-CESM" if "_DM_" in name else "Subtracted images of CDD-CESM"
        path = next((cdd / folder).glob(name.replace(".jpg", "*.jpg")))
        assert group["file_size"].iloc[0] == path.stat().st_size
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float64) / 255
        mask = np.zeros(image.shape, np.uint8)
        for shape in group["region_shape_attributes"].map(json.loads):
            _draw_via(mask, shape)
        if not mask.any():
            continue
        contrast = ring_contrast(image, mask.astype(bool))
        assert contrast > 0.02, name
        if "_CM_" in name:
            uptake[labels[name.removesuffix(".jpg")]].append(contrast)
    # Cancers enhance strongly in the subtracted image, benign findings mildly.
    assert uptake["Malignant"] and np.mean(uptake["Malignant"]) > 0.2
    if uptake["Benign"]:
        assert np.mean(uptake["Malignant"]) > np.mean(uptake["Benign"])


def _draw_via(mask: np.ndarray, shape: dict) -> None:
    name = shape.get("name")
    if name in ("polygon", "polyline"):
        points = np.column_stack([shape["all_points_x"], shape["all_points_y"]]).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    elif name == "ellipse":
        axes = (round(shape["rx"]), round(shape["ry"]))
        cv2.ellipse(mask, (shape["cx"], shape["cy"]), axes, np.degrees(shape.get("theta", 0)), 0, 360, 1, -1)
    elif name == "circle":
        cv2.circle(mask, (shape["cx"], shape["cy"]), round(shape["r"]), 1, -1)
    elif name == "point":
        cv2.circle(mask, (shape["cx"], shape["cy"]), 2, 1, -1)


# -- CBIS-DDSM ----------------------------------------------------------------------------------


def test_cbis_csvs_have_the_exact_columns(cbis):
    tail = "assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path"
    for kind in ("mass", "calc"):
        for split in ("train", "test"):
            header = (cbis / f"{kind}_case_description_{split}_set.csv").read_text().splitlines()[0]
            if kind == "mass":
                assert header == ("patient_id,breast_density,left or right breast,image view,abnormality id,"
                                  f"abnormality type,mass shape,mass margins,{tail}")
            else:
                assert header == ("patient_id,breast density,left or right breast,image view,abnormality id,"
                                  f"abnormality type,calc type,calc distribution,{tail}")


def _cbis_rows(cbis: Path) -> pd.DataFrame:
    frames = [pd.read_csv(path).assign(csv=path.name) for path in sorted(cbis.glob("*_case_description_*.csv"))]
    return pd.concat(frames, ignore_index=True)


def test_cbis_download_matches_the_csv_on_the_first_path_component_only(cbis):
    rows = _cbis_rows(cbis)
    assert set(rows["pathology"]) <= {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    assert "MALIGNANT" in set(rows["pathology"]) and len(set(rows["pathology"])) > 1
    assert {"train", "test"} == {name.split("_")[-2] for name in rows["csv"]}
    root = cbis / "CBIS-DDSM"
    for row in rows.itertuples():
        image, crop, mask = row[12], row[13], row[14]
        assert image.endswith("000000.dcm") and {crop[-10:], mask[-10:]} == {"000000.dcm", "000001.dcm"}
        assert not (root / image).exists()
        case = image.split("/")[0]
        assert re.fullmatch(r"(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)", case)
        assert crop.split("/")[0] == mask.split("/")[0] == f"{case}_{row[5]}"
        assert [p.name for p in (root / case).glob("*/*/*.dcm")] == ["1-1.dcm"]
        assert sorted(p.name for p in (root / crop.split("/")[0]).glob("*/*/*.dcm")) == ["1-1.dcm", "1-2.dcm"]


def test_cbis_dicoms_masks_and_film_look(cbis):
    rows = _cbis_rows(cbis)
    root = cbis / "CBIS-DDSM"
    syntaxes, mask_numbers = set(), set()
    for row in rows.itertuples():
        case = row[12].split("/")[0]
        full = pydicom.dcmread(next((root / case).glob("*/*/1-1.dcm")))
        syntaxes.add(full.file_meta.TransferSyntaxUID)
        assert full.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
        assert (full.PhotometricInterpretation, full.BitsStored) == ("MONOCHROME2", 16)
        assert full.PatientID == case and full.Laterality == row[3][0]
        for absent in ("ImageLaterality", "ViewPosition", "WindowCenter"):
            assert absent not in full
        pixels = full.pixel_array.astype(np.float64) / 65535

        roi_files = [pydicom.dcmread(p) for p in sorted((root / f"{case}_{row[5]}").glob("*/*/*.dcm"))]
        masks = [ds for ds in roi_files if ds.pixel_array.shape == pixels.shape]
        assert len(masks) == 1 and set(np.unique(masks[0].pixel_array)) == {0, 255}
        mask_numbers.add(roi_files.index(masks[0]))
        assert ring_contrast(pixels, masks[0].pixel_array > 0, spots=row[6] == "calcification") > 0.02

        # Bright film edge and burned-in label lie on the side away from the chest wall.
        far = slice(-2, None) if row[3] == "LEFT" else slice(0, 2)
        assert pixels[:, far].mean() > 0.8
        corner = pixels[: SIZE[0] // 8, -SIZE[1] // 3:] if row[3] == "LEFT" else pixels[: SIZE[0] // 8, : SIZE[1] // 3]
        assert (corner > 0.9).any()
    assert RLELossless in syntaxes and len(syntaxes) == 2
    assert mask_numbers == {0, 1}, "mask always numbered the same way"


# -- determinism, folder safety, command line ----------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
def test_same_seed_same_files(tmp_path, format):
    first = make_phantom(format, tmp_path / "a", 2, seed=11, image_size=(128, 104))
    second = make_phantom(format, tmp_path / "b", 2, seed=11, image_size=(128, 104))
    other = make_phantom(format, tmp_path / "c", 2, seed=12, image_size=(128, 104))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        if relative.suffix == ".xlsx":  # the workbook's zip carries a timestamp; compare content
            pd.testing.assert_frame_equal(pd.read_excel(first / relative), pd.read_excel(second / relative))
        else:
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    csvs = sorted(first.glob("*.csv"))
    assert any((p.read_bytes() != (other / p.name).read_bytes()) for p in csvs if (other / p.name).exists())


def test_refuses_a_non_empty_folder_unless_overwriting_a_phantom(tmp_path):
    out = make_phantom("vindr", tmp_path / "out", 1, seed=0, image_size=(128, 104))
    with pytest.raises(ValueError, match="not empty"):
        make_phantom("vindr", out, 1, seed=1, image_size=(128, 104))
    before = (out / "breast-level_annotations.csv").read_text()
    make_phantom("cdd-cesm", out, 1, seed=1, image_size=(128, 104), overwrite=True)
    assert not (out / "images").exists() and (out / "Radiology manual annotations.xlsx").exists()
    assert before  # the replaced phantom was there until then

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        make_phantom("vindr", mine, 1, overwrite=True, image_size=(128, 104))
    assert (mine / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging left behind


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="unknown phantom format"):
        make_phantom("inbreast", "unused", 1)
    with pytest.raises(ValueError, match="at least one patient"):
        make_phantom("vindr", "unused", 0)
    with pytest.raises(ValueError, match="too small"):
        make_phantom("vindr", "unused", 1, image_size=(32, 26))


def test_command_line_writes_a_phantom(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    phantom_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["phantom", "--format", "cbis-ddsm", "--out", str(tmp_path / "cbis"), "--n", "2", "--image-size", "128x104"]
    )
    assert args.func(args) == 0
    assert "cbis-ddsm phantom: 2 patients" in capsys.readouterr().out
    assert (tmp_path / "cbis" / "CBIS-DDSM").is_dir()
    assert phantom_command.FORMATS == FORMATS


def test_image_size_option():
    assert phantom_command.image_size("512x416") == (512, 416)
    assert phantom_command.image_size("1024") == (1024, 816)
    for bad in ("512x", "axb", "0x10", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            phantom_command.image_size(bad)
