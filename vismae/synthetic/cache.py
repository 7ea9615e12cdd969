"""A small prepared cache of synthetic breast images, laid out as `vismae prepare` writes one:
images/*.png and masks/*.png at the working size, and a cache manifest.csv with a mask_path
column. Training, experiments, tests and benchmarks can run on it without a raw dataset.

The caller says which images there are (`CacheImage`: patient, view, side, label, ROI, split);
`draw_breast` draws each one unless the caller brings its own drawing: a breast against the left
edge, as `prepare` flips every breast, and where an ROI is annotated, a lesion that the label
shapes (malignant: large, spiculated, mottled; benign: small, round, smooth) with its mask. The
same images and seed give the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from vismae.data.manifest import new_frame, write_manifest


@dataclass(frozen=True)
class CacheImage:
    """One image of the cache. ``image_id`` defaults to patient, side and view (p001_LCC)."""

    patient_id: str
    view: str = "CC"
    laterality: str = "L"
    label: str = "unknown"
    has_roi: bool = False
    split: str = "train"
    birads: int | None = None
    image_id: str | None = None

    @property
    def name(self) -> str:
        return self.image_id or f"{self.patient_id}_{self.laterality}{self.view}"


def draw_breast(rng: np.random.Generator, shape: tuple[int, int], image: CacheImage) -> tuple[np.ndarray, np.ndarray]:
    """(pixels in [0, 1], lesion mask) of ``shape`` (rows, columns): a breast against the left
    edge, and a lesion where ``image`` has an ROI, which its label shapes."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    breast = ((xx / (0.8 * width)) ** 2 + ((yy - height / 2) / (0.45 * height)) ** 2) < 1.0
    pixels = breast * (rng.uniform(0.25, 0.35) + rng.normal(0, 0.02, shape))
    lesion = np.zeros(shape, bool)
    if image.has_roi:
        scale = min(shape) / 64  # the shapes below were tuned at 64 px
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.2, 0.5) * width
        radius, angle = rng.uniform(5, 8) * scale, np.arctan2(yy - cy, xx - cx)
        if image.label == "malignant":
            reach = (radius + 8 * scale) * (1 + 0.35 * np.sin(5 * angle + rng.uniform(0, 6)))
            intensity = 0.4 + 0.6 * rng.random(shape)
        else:
            reach, intensity = radius, 0.5
        lesion = np.hypot(yy - cy, xx - cx) < reach
        pixels = np.where(lesion, intensity, pixels)
    return np.clip(pixels, 0, 1), lesion


# How an image is drawn: (rng, (rows, columns), image) -> (pixels in [0, 1], boolean lesion mask).
Draw = Callable[[np.random.Generator, tuple[int, int], CacheImage], tuple[np.ndarray, np.ndarray]]


def write_synthetic_cache(
    folder: str | Path,
    images: Iterable[CacheImage],
    *,
    size: int | tuple[int, int] = 64,
    bits: int = 8,
    seed: int = 0,
    dataset: str = "synthetic",
    draw: Draw = draw_breast,
) -> Path:
    """Draw ``images`` in order into ``folder`` as ``bits``-bit PNGs of ``size`` (N or (rows,
    columns)), with a mask and a box ROI around the lesion of each one with an ROI, and write
    ``folder/manifest.csv``; return the manifest's path."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    rows = []
    for item in images:
        pixels, lesion = draw(rng, shape, item)
        if bool(lesion.any()) != item.has_roi:
            state = "not empty" if lesion.any() else "empty"
            raise ValueError(f"{item.name}: has_roi is {item.has_roi}, but its drawn lesion mask is {state}")
        path = folder / "images" / f"{item.name}.png"
        cv2.imwrite(str(path), (pixels * top).astype(np.uint8 if bits == 8 else np.uint16))
        mask_path, roi = "", []
        if lesion.any():
            mask_path = str(folder / "masks" / f"{item.name}.png")
            cv2.imwrite(mask_path, lesion.astype(np.uint8) * 255)
            ys, xs = np.nonzero(lesion)
            roi = [{"type": "box", "xmin": int(xs.min()), "ymin": int(ys.min()), "xmax": int(xs.max()), "ymax": int(ys.max())}]
        rows.append({
            "image_id": item.name, "patient_id": item.patient_id, "study_id": f"s-{item.patient_id}", "dataset": dataset,
            "path": str(path), "view": item.view, "laterality": item.laterality, "label": item.label, "birads": item.birads,
            "has_roi": item.has_roi, "roi": roi, "split": item.split, "mask_path": mask_path,
        })  # fmt: skip
    return write_manifest(new_frame(rows), folder / "manifest.csv")
