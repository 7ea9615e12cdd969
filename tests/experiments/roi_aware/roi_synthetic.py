"""Shared by the ROI-aware tests: the images of a small prepared cache whose ROI presence tells
much about the label (as in VinDr), and a stand-in engine that trains a real but trivial model.

Every patient has four images (RCC, LCC, RMLO, LMLO); both views of a breast share its label
and ROI presence. The pattern is fixed by the patient's number, so the groups' sizes are
known: malignant breasts mostly have an ROI, benign ones seldom. `blob_breast` draws them so
that pixel statistics tell much about the label, but not all: malignant tissue brighter, a faint
blob where an ROI is annotated.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from vismae.data.dataset import read_cached_image
from vismae.metrics import choose_threshold
from vismae.synthetic.cache import CacheImage



def blob_breast(rng: np.random.Generator, shape: tuple[int, int], image: CacheImage) -> tuple[np.ndarray, np.ndarray]:
    """(pixels in [0, 1], mask) of a square ``shape``: a breast touching the left edge, a bright
    blob where an ROI is annotated, brighter tissue when malignant."""
    malignant, size = image.label == "malignant", shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    breast = ((xx / (0.8 * size)) ** 2 + ((yy - size / 2) / (0.45 * size)) ** 2) < 1.0
    pixels = breast * (0.30 + 0.15 * malignant + 0.05 * rng.random())
    mask = np.zeros((size, size), bool)
    if image.has_roi:
        cy, cx, radius = rng.uniform(0.35, 0.65) * size, rng.uniform(0.15, 0.45) * size, rng.uniform(3.0, 6.0)
        pixels = pixels + (0.5 if malignant else 0.3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    pixels = pixels + rng.normal(0, 0.02, pixels.shape)
    return np.clip(pixels, 0, 1), mask


# What the tests pass to the `synthetic_cache` fixture with `roi_images(...)`.
ROI_CACHE = {"draw": blob_breast}


def breast_pattern(patient: int, side: str) -> tuple[str, bool]:
    """(label, has_roi) of one breast, fixed by the patient's number."""
    malignant = (patient + (side == "L")) % 3 == 0
    if malignant:
        has_roi = patient % 7 != 1  # a few malignant breasts without an annotated ROI
    else:
        has_roi = patient % 4 == 0  # some benign breasts with one
    return ("malignant" if malignant else "benign"), has_roi


def roi_images(patients: int = 40) -> list[CacheImage]:
    """The cache's images; every fifth patient is a test patient."""
    images = []
    for patient in range(patients):
        for side in ("R", "L"):
            label, has_roi = breast_pattern(patient, side)
            birads = 4 if label == "malignant" else 2
            if patient % 6 == 5 and side == "L":
                label = "normal"  # a normal breast the experiment must leave out
            for view in ("CC", "MLO"):
                images.append(CacheImage(
                    f"p{patient:03d}", view=view, laterality=side, label=label, has_roi=has_roi, birads=birads,
                    split="test" if patient % 5 == 4 else "train",
                ))  # fmt: skip
    return images


# ---------------------------------------------------------------------------------------------
# A stand-in for the finetuning engine.


def _features(rows: pd.DataFrame) -> np.ndarray:
    images = [read_cached_image(path) for path in rows["path"]]
    return np.array([[image.mean(), np.percentile(image, 99)] for image in images])


class PixelStatsEngine:
    """Logistic regression on two pixel statistics (mean and 99th percentile) of a seeded 80 %
    of the training rows, threshold chosen on validation like the real engine; the segmenter's "area" is the share of bright
    pixels. It records every frame it is given, to check what reached training and prediction."""

    def __init__(self):
        self.trained: list[pd.DataFrame] = []
        self.predicted: list[pd.DataFrame] = []

    def finetune(self, frame, init, task, config, run_dir):
        self.trained.append(frame.copy())
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if task == "segment":
            (run_dir / "model.json").write_text(json.dumps({"task": task}))
            return SimpleNamespace(run_dir=run_dir, threshold=None)
        target = frame["label"].isin(config.data.positive).astype(int).to_numpy()
        train, val = (frame["split"] == "train").to_numpy(), (frame["split"] == "val").to_numpy()
        # Each seed fits on its own random 80 % of the training rows, so seeds differ.
        rng = np.random.default_rng(config.train.seed)
        train = train & (rng.random(len(frame)) < 0.8)
        if len(set(target[train])) < 2:
            train = (frame["split"] == "train").to_numpy()
        features = _features(frame)
        model = LogisticRegression().fit(features[train], target[train])
        scores = model.predict_proba(features[val])[:, 1]
        threshold = choose_threshold(target[val], scores) if len(set(target[val])) == 2 else 0.5
        description = {"task": task, "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]), "threshold": threshold}
        (run_dir / "model.json").write_text(json.dumps(description))
        return SimpleNamespace(run_dir=run_dir, threshold=threshold)

    def predict(self, run_dir, rows):
        self.predicted.append(rows.copy())
        description = json.loads((Path(run_dir) / "model.json").read_text())
        if description["task"] == "segment":
            area = [float((read_cached_image(path) > 0.6).mean()) for path in rows["path"]]
            return pd.DataFrame({"image_id": rows["image_id"].to_numpy(), "predicted_area_fraction": area})
        logits = _features(rows) @ np.array(description["coef"]) + description["intercept"]
        probability = 1 / (1 + np.exp(-logits))
        return pd.DataFrame(
            {
                "image_id": rows["image_id"].to_numpy(),
                "probability": probability,
                "prediction": (probability >= description["threshold"]).astype(int),
            }
        )
