"""A CDD-CESM phantom: low-energy and subtracted JPEGs, the annotation workbook and VIA outlines.

    Low energy images of CDD-CESM/P{n}_{L|R}_DM_{CC|MLO}.jpg     the ordinary mammogram
    Subtracted images of CDD-CESM/P{n}_{L|R}_CM_{CC|MLO}.jpg     contrast-enhanced
    Radiology manual annotations.xlsx                             sheet "all", one row per image
    Radiology_hand_drawn_segmentations_v2.csv                     VIA export, one row per region

As in the real download some patients lack a view (or only its subtracted image), a few file
names carry a space before ".jpg", and a few workbook names carry stray spaces. The workbook's
Type says DM or CESM where the file names say DM or CM. Outlines are drawn on both images of a
pair (they are registered) and name the file without the stray space.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from vismae.synthetic.cohort import SCREENING, SIDES, VIEWS, Breast, sample_cohort
from vismae.synthetic.render import Scene, add_noise, image_rng, render_view
from vismae.synthetic.via import RegionStyles

LOW_ENERGY_DIR = "Low energy images of CDD-CESM"
SUBTRACTED_DIR = "Subtracted images of CDD-CESM"
WORKBOOK = "Radiology manual annotations.xlsx"
SEGMENTATIONS = "Radiology_hand_drawn_segmentations_v2.csv"
TOP_LEVEL = (LOW_ENERGY_DIR, SUBTRACTED_DIR, WORKBOOK, SEGMENTATIONS)
WORKBOOK_COLUMNS = [
    "Image_name", "Patient_ID", "Side", "Type", "Age", "Breast density (ACR)", "BIRADS", "Findings",
    "View", "Tags", "Machine", "Pathology Classification/ Follow up",
]
VIA_COLUMNS = [
    "#filename", "file_size", "file_attributes", "region_count", "region_id",
    "region_shape_attributes", "region_attributes",
]
KINDS = {"DM": ("DM", LOW_ENERGY_DIR), "CM": ("CESM", SUBTRACTED_DIR)}  # file tag -> workbook Type, folder
MACHINE = "Phantom CESM unit"
JPEG_QUALITY = 92
NOISE = 0.01
MISSING_SHARE = 0.15  # patients lacking one view, or one view's subtracted image
SPACED_SHARE = 0.04  # names with a stray space, in the files and in the workbook


def write_cdd_cesm(out: Path, n_patients: int, seed: int, image_size: tuple[int, int]) -> None:
    patients = sample_cohort(n_patients, seed, SCREENING)
    quirks = np.random.default_rng([seed, 0xCDD])
    absent = _absent_images(quirks, n_patients)
    n_images = 2 * len(SIDES) * len(VIEWS) * n_patients - len(absent)
    spaced_files = _pick(quirks, n_images, SPACED_SHARE)
    spaced_names = _pick(quirks, n_images, SPACED_SHARE)
    styles = RegionStyles()
    workbook_rows, via_rows = [], []
    for patient in patients:
        for side in SIDES:
            breast = patient.breasts[side]
            for view in VIEWS:
                if (patient.index, side, view, "DM") in absent:
                    continue
                scene = render_view(patient, breast, view, image_size, seed)
                for tag in ("DM", "CM"):
                    if (patient.index, side, view, tag) in absent:
                        continue
                    position = len(workbook_rows)
                    name = f"P{patient.index + 1}_{side}_{tag}_{view}"
                    noise = image_rng(seed, patient, side, view, stream=1 if tag == "DM" else 2)
                    file_name = f"{name} .jpg" if position in spaced_files else f"{name}.jpg"
                    path = out / KINDS[tag][1] / file_name
                    _write_jpeg(path, _pixels(scene, tag, noise))
                    via_rows.extend(_via_rows(f"{name}.jpg", path.stat().st_size, scene, styles, quirks))
                    workbook_rows.append({
                        "Image_name": _stray_space(name, position) if position in spaced_names else name,
                        "Patient_ID": patient.index + 1, "Side": side, "Type": KINDS[tag][0],
                        "Age": patient.age, "Breast density (ACR)": patient.density, "BIRADS": breast.birads,
                        "Findings": _findings(scene, tag, breast), "View": view, "Tags": _tags(scene),
                        "Machine": MACHINE, "Pathology Classification/ Follow up": breast.label.capitalize(),
                    })
    workbook = pd.DataFrame(workbook_rows, columns=WORKBOOK_COLUMNS)
    workbook.to_excel(out / WORKBOOK, sheet_name="all", index=False)
    pd.DataFrame(via_rows, columns=VIA_COLUMNS).to_csv(out / SEGMENTATIONS, index=False)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _stray_space(name: str, position: int) -> str:
    return f" {name}" if position % 3 == 0 else f"{name} "


def _pixels(scene: Scene, tag: str, rng) -> np.ndarray:
    image = scene.mammogram() if tag == "DM" else scene.subtracted(rng)
    return np.round(add_noise(image, rng, NOISE) * 255).astype(np.uint8)


def _absent_images(rng, n_patients: int) -> set[tuple]:
    """Images the download lacks: a whole view (both images) or only its subtracted image."""
    absent = set()
    for turn, patient in enumerate(sorted(_pick(rng, n_patients, MISSING_SHARE))):
        side, view = str(rng.choice(SIDES)), str(rng.choice(VIEWS))
        absent.add((patient, side, view, "CM"))
        if turn % 2 == 0:
            absent.add((patient, side, view, "DM"))
    return absent


def _pick(rng, n: int, share: float) -> set[int]:
    """At least one, and about ``share`` of ``n`` positions (none of none)."""
    if n == 0:
        return set()
    return {int(i) for i in rng.permutation(n)[: max(1, round(share * n))]}


def _via_rows(file_name: str, file_size: int, scene: Scene, styles: RegionStyles, rng) -> list[dict]:
    regions = [region for drawn in scene.annotated() for region in styles.regions(drawn)]
    base = {"#filename": file_name, "file_size": file_size, "file_attributes": "{}",
            "region_attributes": "{}"}
    if not regions:
        # Some images without an outline are listed with an empty region, the rest not at all.
        if rng.uniform() < 0.5:
            return [{**base, "region_count": 0, "region_id": 0, "region_shape_attributes": "{}"}]
        return []
    return [
        {**base, "region_count": len(regions), "region_id": index,
         "region_shape_attributes": json.dumps(region, separators=(",", ":"))}
        for index, region in enumerate(regions)
    ]


DESCRIPTIONS = {
    ("mass", "round"): "round circumscribed mass",
    ("mass", "oval"): "oval circumscribed mass",
    ("mass", "irregular"): "irregular mass with indistinct margins",
    ("mass", "spiculated"): "spiculated mass with architectural distortion",
    ("calcifications", "fine"): "grouped fine pleomorphic microcalcifications",
    ("calcifications", "coarse"): "scattered coarse benign calcifications",
    ("lymph_node", "oval"): "axillary lymph node with fatty hilum",
}


def _findings(scene: Scene, tag: str, breast: Breast) -> str:
    if not scene.lesions:
        return "no findings" if breast.label == "normal" else "no suspicious findings"
    texts = []
    for drawn in scene.lesions:
        text = DESCRIPTIONS[drawn.lesion.kind, drawn.lesion.shape]
        if tag == "CM":
            enhancing = drawn.lesion.malignant and drawn.lesion.kind != "lymph_node"
            text = f"{'enhancing' if enhancing else 'non-enhancing'} {text}"
        texts.append(text)
    return ", ".join(texts)


def _tags(scene: Scene) -> str:
    tags = {"mass": "mass", "calcifications": "calcification", "lymph_node": "lymph node"}
    return ", ".join(dict.fromkeys(tags[drawn.lesion.kind] for drawn in scene.lesions))
