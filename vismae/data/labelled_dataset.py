"""Labelled data for finetuning: which cache manifest rows a task uses and with which
targets, and a Dataset of their images, classes and ROI masks, augmented so that the mask
moves with the pixels.

Like pretraining's dataset, a sample's augmentation is a pure function of (seed, epoch,
index), so runs repeat exactly on one process or several and after a resume.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vismae.data.dataset import EpochShuffle, check_image_sizes, read_cached_image
from vismae.data.manifest import CACHE_COLUMNS, SPLITS, mixed_image_kinds, view_names
from vismae.data.splits import carve_validation
from vismae.io import input_digest

NO_CLASS = -1  # the target of rows without a class (segmentation ignores classes)


# ---------------------------------------------------------------------------------------------
# Which rows, with which targets.


def select_task_rows(frame: pd.DataFrame, task: str, data) -> tuple[pd.DataFrame, dict]:
    """The rows a task (classify or segment) uses under the ``data`` settings (a FinetuneData),
    with a ``target`` column: 1 for a positive label (classify) or an annotated ROI (segment),
    else 0; and how many rows were left out, by reason."""
    missing = [column for column in CACHE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"the rows lack cache manifest columns {missing}; finetuning reads a prepared cache's manifest")
    left_out: dict[str, int] = {}
    keep = np.ones(len(frame), dtype=bool)
    if data.views:
        in_view = frame["view"].isin(data.views).to_numpy() | view_names(frame).isin(data.views).to_numpy()
        left_out["other views"] = int((keep & ~in_view).sum())
        keep &= in_view
    if data.roi != "any":
        wanted = frame["has_roi"].to_numpy() == (data.roi == "with")
        left_out[f"not {data.roi} ROI"] = int((keep & ~wanted).sum())
        keep &= wanted
    if task == "classify":
        labelled = frame["label"].isin(data.negative + data.positive).to_numpy()
        for label, count in frame.loc[keep & ~labelled, "label"].value_counts().items():
            left_out[f"label {label}"] = int(count)
        keep &= labelled
    rows = frame[keep].copy()
    if task == "classify":
        rows["target"] = rows["label"].isin(data.positive).astype(int)
    else:
        rows["target"] = rows["has_roi"].astype(int)
    return rows.reset_index(drop=True), {key: count for key, count in left_out.items() if count}


def prepare_task_rows(frame: pd.DataFrame, task: str, data) -> tuple[pd.DataFrame, dict]:
    """``select_task_rows``, unreadable images left out and reported, a validation share carved
    from train when there are no val rows; and the counts that say what the run is trained
    and judged on."""
    rows, left_out = select_task_rows(frame, task, data)
    if rows.empty:
        raise ValueError(f"no rows left to finetune on ({_describe(left_out)})")
    if (mixed := mixed_image_kinds(rows)) is not None:
        print(f"warning: {mixed}")
    rows, unreadable, cache_size = readable_rows(rows)
    if unreadable:
        left_out["unreadable image"] = len(unreadable)
        print(f"warning: {len(unreadable)} cached images cannot be opened and are left out (first: {unreadable[0]})")
    carved = not (rows["split"] == "val").any()
    if carved:
        rows = carve_validation(rows, data.val_fraction, seed=data.split_seed)
    counts = {split: _counts(rows[rows["split"] == split]) for split in SPLITS}
    for split in ("train", "val"):
        if counts[split]["images"] == 0:
            raise ValueError(f"no {split} rows to finetune on ({counts}; left out: {_describe(left_out)})")
    if task == "classify" and counts["train"]["positives"] in (0, counts["train"]["images"]):
        raise ValueError(
            f"the training rows hold one class only ({counts['train']}); classification needs "
            f"{data.negative} and {data.positive} images"
        )
    notes = {
        "splits": counts,
        "left_out": left_out,
        "validation": "carved from train by patient" if carved else "given",
        "unreadable": unreadable[:20],
        "cache_image_size": list(cache_size),
        "digest": rows_digest(rows),
    }
    return rows, notes


def _counts(rows: pd.DataFrame) -> dict:
    return {"images": len(rows), "patients": int(rows["patient_id"].nunique()), "positives": int(rows["target"].sum())}


def _describe(left_out: dict) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in left_out.items()) or "none left out"


def rows_digest(rows: pd.DataFrame) -> str:
    """What identifies the data of a run: each image, its split and its target."""
    return input_digest(rows, ["image_id", "split", "target"])


def cache_image_size(paths: list[str]) -> tuple[int, int]:
    """(height, width) of the first cached image that opens (every cached image has it)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                return image.size[1], image.size[0]
        except (OSError, UnidentifiedImageError):
            continue
    raise ValueError(f"none of the {len(paths)} cached images can be opened (first: {paths[0] if paths else 'none'})")


def readable_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], tuple[int, int]]:
    """(rows whose image opens, paths of those that do not, the cache's image size).

    Reads PNG headers only. An image of another size than the rest is a broken cache and
    stops the run with the file named."""
    paths = frame["path"].tolist()
    size = cache_image_size(paths)
    _, unreadable = check_image_sizes(paths, size)
    return frame[~frame["path"].isin(set(unreadable))], unreadable, size


# ---------------------------------------------------------------------------------------------
# Images and augmentation.


def read_cached_mask(path: str) -> np.ndarray:
    """A cached ROI mask PNG as uint8 H x W of 0 and 1; ValueError if unreadable."""
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"{path}: cannot decode the cached ROI mask")
    return (pixels > 127).astype(np.uint8)


@dataclass
class MammogramAugmentation:
    """Small affine moves and intensity changes; the mask moves with the pixels.

    Rotation and zoom pivot on the middle of the left edge, where every prepared breast's chest
    wall lies, so the breast stays anchored there. Never a horizontal flip. Written with
    OpenCV and numpy rather than MONAI's RandAffined / RandAdjustContrast, which on one CPU
    core take about 0.13 s and 0.08 s per 384 px image against about 1 ms here: a data loader
    could not keep a GPU busy with them.
    """

    affine_prob: float = 0.5
    rotate_deg: float = 10.0
    zoom: float = 0.1
    translate: float = 0.05
    intensity_prob: float = 0.5
    gamma: float = 0.3
    brightness: float = 0.1
    noise_std: float = 0.01

    @classmethod
    def from_settings(cls, settings) -> MammogramAugmentation | None:
        """From a config section with the same field names and an ``enabled`` switch."""
        if not settings.enabled:
            return None
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
        # Every draw is made whether or not it is used, so one sample's randomness does not
        # depend on the probabilities of the steps before it.
        do_affine, do_intensity = rng.random(2) < (self.affine_prob, self.intensity_prob)
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
        scale = rng.uniform(1 - self.zoom, 1 + self.zoom)
        shift = rng.uniform(-self.translate, self.translate, 2)
        gamma = math.exp(rng.uniform(-self.gamma, self.gamma))
        brightness = rng.uniform(1 - self.brightness, 1 + self.brightness)
        if do_affine:
            height, width = image.shape
            matrix = cv2.getRotationMatrix2D((0.0, height / 2), angle, scale)
            matrix[:, 2] += shift * (width, height)
            warp = lambda pixels, interpolation: cv2.warpAffine(  # noqa: E731
                pixels, matrix, (width, height), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
            image = warp(image, cv2.INTER_LINEAR)
            mask = warp(mask, cv2.INTER_NEAREST) if mask is not None else None
        if do_intensity:
            image = np.power(np.clip(image, 0.0, 1.0), gamma) * brightness
            if self.noise_std > 0:
                image = image + rng.normal(0.0, self.noise_std, image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0).astype(np.float32), mask


class LabelledImages(Dataset):
    """Rows of a cache manifest as ``{"image": 1 x H x W float in [0, 1], "target": class or
    -1, "mask": 1 x H x W int64 of 0/1 (when masks are read), "index": row}``.

    A key is a row index, or ``(index, epoch)`` from an epoch sampler: then the sample is
    augmented with randomness seeded by (seed, epoch, index). Images are resized to ``size``
    when the cache holds another size (masks with nearest neighbours, so they stay binary).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        size: tuple[int, int],
        targets: np.ndarray | None = None,
        with_masks: bool = False,
        augmentation=None,
        seed: int = 0,
    ):
        self.paths = frame["path"].tolist()
        self.mask_paths = frame["mask_path"].fillna("").tolist() if "mask_path" in frame else [""] * len(frame)
        self.size = tuple(size)
        self.targets = np.full(len(frame), NO_CLASS) if targets is None else np.asarray(targets, dtype=np.int64)
        self.with_masks = with_masks
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def _resized(self, pixels: np.ndarray, interpolation: int) -> np.ndarray:
        if pixels.shape == self.size:
            return pixels
        return cv2.resize(pixels, (self.size[1], self.size[0]), interpolation=interpolation)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = self._resized(read_cached_image(self.paths[index]), cv2.INTER_AREA)
        if not self.with_masks:
            return image, None
        mask_path = self.mask_paths[index]
        if not mask_path:  # an image without an annotated ROI: all background
            return image, np.zeros(self.size, dtype=np.uint8)
        return image, self._resized(read_cached_mask(mask_path), cv2.INTER_NEAREST)

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if epoch is not None and self.augmentation is not None:
            image, mask = self.augmentation(image, mask, np.random.default_rng([self.seed, epoch, index]))
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None], "target": int(self.targets[index]), "index": index}
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))[None]
        return sample


class BalancedEpochSampler(EpochShuffle):
    """Draws, with replacement, as many samples per epoch as there are images, each group
    (class, or ROI presence) equally often; the draw depends only on (seed, epoch)."""

    def __init__(self, groups: np.ndarray, samples_per_step: int, seed: int = 0):
        super().__init__(len(groups), samples_per_step, seed)
        groups = np.asarray(groups)
        _, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[codes]
        self.probabilities = weights / weights.sum()

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        draw = rng.choice(self.num_images, size=len(self), replace=True, p=self.probabilities)
        epoch = self.epoch
        return iter([(int(index), epoch) for index in draw])
