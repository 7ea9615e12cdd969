"""A deployable model applied to prepared images, in batches, on the GPU when there is one.

Scores go through ``vismae.engine.predict.infer``, the function that scored the run's own
validation and test images, with the same image loader (``LabelledImages``) and in the
precision the run predicted in, so a test image gets the probability the run wrote for it.
Saliency maps are a second pass over the images asked for, with gradients (Grad-CAM needs them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vismae.data.labelled_dataset import LabelledImages, readable_rows
from vismae.engine.accelerator import make_accelerator
from vismae.engine.deployable import Deployable
from vismae.engine.predict import infer

SCORE_COLUMN = {"classify": "probability", "segment": "predicted_area_fraction"}


@dataclass
class Scores:
    table: pd.DataFrame  # the rows scored, with ``probability`` (classifier) or ``predicted_area_fraction`` (segmenter)
    unreadable: list[str]  # prepared images that could not be opened, left out


class ModelRunner:
    """One deployable model, loaded once, scoring any number of row sets."""

    def __init__(self, deployable: Deployable, batch_size: int = 16, num_workers: int = 0, progress: bool = True):
        self.deployable = deployable
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        # The run's precision (fp32 on a CPU): the one its threshold was chosen in.
        self.accelerator = make_accelerator(deployable.mixed_precision)
        model, _ = deployable.load_model()
        self.model = self.accelerator.prepare(model)
        self._cam = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _loader(self, rows: pd.DataFrame) -> DataLoader:
        # A segmenter's outputs are computed beside an (here empty) mask, as in its validation.
        dataset = LabelledImages(rows, self.deployable.input_size, with_masks=self.deployable.task == "segment")
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        return self.accelerator.prepare(loader)

    def score(self, rows: pd.DataFrame, what: str = "predict") -> Scores:
        """``rows`` (cache manifest rows) with their score; rows whose prepared image does not
        open are left out and named."""
        if rows.empty:
            return Scores(rows.assign(**{SCORE_COLUMN[self.deployable.task]: pd.Series(dtype=float)}), [])
        rows = rows.reset_index(drop=True)
        readable, unreadable, _ = readable_rows(rows)
        readable = readable.reset_index(drop=True)
        loader = self._loader(readable)
        batches = tqdm(loader, desc=what, unit="batch", disable=not self.progress)
        outputs = infer(self.model, batches, self.accelerator, self.deployable.task)
        scored = readable.iloc[outputs["index"].to_numpy()].reset_index(drop=True)
        if self.deployable.task == "classify":
            scored["probability"] = outputs["probability"].to_numpy().astype(np.float64)
        else:
            height, width = self.deployable.input_size
            scored["predicted_area_fraction"] = outputs["predicted_area"].to_numpy().astype(np.float64) / (height * width)
        return Scores(scored, unreadable)

    def saliency(self, rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, float]]:
        """image_id -> (Grad-CAM map over the model's input, H x W in [0, 1], its peak before
        normalization) for a classifier."""
        from vismae.engine.gradcam import GradCam

        if self.deployable.task != "classify":
            raise ValueError("saliency maps are drawn for classifiers only")
        if self._cam is None:
            self._cam = GradCam(self.accelerator.unwrap_model(self.model))
        maps = {}
        rows = rows.reset_index(drop=True)
        dataset = LabelledImages(rows, self.deployable.input_size)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)
        for batch in tqdm(loader, desc="saliency", unit="batch", disable=not self.progress):
            heat, peaks = self._cam(batch["image"].to(self.device))
            for index, one, peak in zip(batch["index"].tolist(), heat, peaks):
                maps[rows["image_id"].iloc[index]] = (one, float(peak))
        return maps


def choose_device_note(runner: ModelRunner) -> str:
    """One line naming where the model runs, for the report."""
    device = runner.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name} ({runner.accelerator.mixed_precision})"
