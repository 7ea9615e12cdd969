"""A small prepared cache for the engine tests: 64 x 64 grayscale PNGs of a breast-like shape
touching the left edge with a few bright blobs, and a cache manifest with a mask_path column."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vismae.config import load_pretrain_config
from vismae.data.manifest import new_frame, write_manifest

SIZE = 64
REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "pretrain" / "tiny-test.yaml"


def synthetic_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ry = rng.uniform(0.35, 0.48) * size
    rx = rng.uniform(0.55, 0.9) * size
    breast = ((xx / rx) ** 2 + ((yy - size / 2) / ry) ** 2) < 1.0
    image = breast * (0.35 + 0.1 * rng.random())
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0.3, 0.7) * size, rng.uniform(0.05, 0.5) * size
        radius = rng.uniform(2.0, 6.0)
        image = image + 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)) * breast
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_cache(folder: Path, count: int = 32, seed: int = 0, size: int = SIZE) -> Path:
    """Write ``count`` images and ``folder/manifest.csv``; return the manifest path."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        path = folder / "images" / f"img{index:03d}.png"
        cv2.imwrite(str(path), synthetic_image(rng, size))
        rows.append(
            {
                "image_id": f"img{index:03d}",
                "patient_id": f"p{index // 2:03d}",
                "study_id": f"s{index // 2:03d}",
                "dataset": "synthetic",
                "path": str(path),
                "view": ("CC", "MLO")[index % 2],
                "laterality": "L",
                "label": "unknown",
                "birads": None,
                "has_roi": False,
                "roi": [],
                "split": ("train", "train", "val", "test")[(index // 2) % 4],
                "mask_path": "",
            }
        )
    return write_manifest(new_frame(rows), folder / "manifest.csv")


def tiny_overrides(manifest: Path, output_dir: Path, **extra) -> list[str]:
    """Overrides of the tiny-test config: where the data is and where the run goes, plus ``extra``."""
    values = {"output_dir": str(output_dir), "data.manifests": f"[{manifest}]", **extra}
    return [f"{key}={value}" for key, value in values.items()]


def tiny_config(manifest: Path, output_dir: Path, **extra):
    return load_pretrain_config(TINY_CONFIG, tiny_overrides(manifest, output_dir, **extra))
