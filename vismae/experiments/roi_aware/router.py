"""The deployable path's router: a model trained on the training split that predicts whether
an image has an ROI, so that test images can be routed without their annotations.

``classifier`` trains a has-ROI classifier with the same encoder through the same
``finetune`` call as every other model. ``segmenter`` trains an ROI segmenter and calls an
image ROI-positive when its predicted ROI area reaches a threshold chosen on validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vismae.engine.finetune_config import FinetuneConfig, fixed_threshold
from vismae.metrics import choose_threshold


def roi_presence_frame(rows: pd.DataFrame, config: FinetuneConfig) -> pd.DataFrame:
    """A copy of the train and val rows whose ``label`` says whether an ROI is annotated.

    The engine's classifier learns the classes of ``data.negative`` / ``data.positive``
    labels and has no option to learn another target, so this copy writes "ROI present" as
    the first positive label and "ROI absent" as the first negative one. Only the router's
    run reads it; its label column means ROI presence, not malignancy.
    """
    relabelled = rows.copy()
    present, absent = config.data.positive[0], config.data.negative[0]
    relabelled["label"] = [present if has_roi else absent for has_roi in rows["has_roi"].astype(bool)]
    relabelled["birads"] = pd.array([pd.NA] * len(rows), dtype="Int64")  # BI-RADS would describe the old label
    return relabelled


def segmenter_recipe(config: FinetuneConfig) -> FinetuneConfig:
    """The recipe as a segmentation recipe: class-weighted loss and AUC selection are for
    classifiers, so images with and without ROI are drawn equally often and the epoch is
    chosen by validation Dice."""
    train = config.train
    balance = "sampler" if train.balance == "weighted_loss" else train.balance
    return dataclasses.replace(config, train=dataclasses.replace(train, balance=balance, select_by="auto"))


@dataclass
class Router:
    kind: str  # classifier | segmenter
    run_dir: Path
    threshold: float  # on the probability (classifier) or the predicted ROI area fraction (segmenter)
    chosen_on: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "run_dir": str(self.run_dir), "threshold": self.threshold, "chosen_on": self.chosen_on}

    def route(self, engine, rows: pd.DataFrame) -> pd.DataFrame:
        """``image_id, score, roi_predicted`` for blind ``rows``, in their order."""
        table = engine.predict(self.run_dir, rows)
        score = table["probability" if self.kind == "classifier" else "predicted_area_fraction"].to_numpy(dtype=float)
        return pd.DataFrame({"image_id": table["image_id"].to_numpy(), "score": score, "roi_predicted": score >= self.threshold})


def train_router(engine, rows: pd.DataFrame, kind: str, init: str, config: FinetuneConfig, run_dir: Path) -> Router:
    """The router, from train and val ``rows`` only."""
    if (rows["split"] == "test").any():
        raise ValueError("test rows must not reach the router's training")
    for split in ("train", "val"):
        present = rows.loc[rows["split"] == split, "has_roi"].astype(bool)
        if present.nunique() < 2:
            raise ValueError(f"the {split} rows hold images {'with' if present.all() else 'without'} an ROI only; a router needs both")
    if kind == "classifier":
        result = engine.finetune(roi_presence_frame(rows, config), init, "classify", config, run_dir)
        rule = config.eval.threshold_rule
        chosen_on = f"fixed by the recipe ({rule})" if fixed_threshold(rule) is not None else "validation, by the finetuning engine"
        return Router(kind, Path(result.run_dir), float(result.threshold), chosen_on)
    if kind == "segmenter":
        result = engine.finetune(rows, init, "segment", segmenter_recipe(config), run_dir)
        val = rows[rows["split"] == "val"]
        area = engine.predict(result.run_dir, val)["predicted_area_fraction"].to_numpy(dtype=float)
        threshold = choose_threshold(val["has_roi"].astype(int).to_numpy(), area, "youden")
        return Router(kind, Path(result.run_dir), threshold, "validation, Youden's J on the predicted ROI area")
    raise ValueError(f"unknown router kind {kind!r}; expected classifier or segmenter")
