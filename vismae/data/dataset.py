"""Torch datasets over prepared caches.

Pretraining reads every cached image of the chosen manifests and splits, labelled or not.
Its randomness (the epoch's order, each sample's augmentation) is a pure function of
(seed, epoch, index), so a run gives the same batches on one process or many and after a
resume, whichever worker loads which sample.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from vismae.data.manifest import read_manifest

log = logging.getLogger(__name__)
SHOWN = 3  # file names quoted in a warning about many files


def read_cached_image(path: str | os.PathLike) -> np.ndarray:
    """A cached 8- or 16-bit grayscale PNG as float32 H x W in [0, 1]; ValueError if unreadable."""
    pixels = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"{path}: cannot decode the cached image")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: cached images must be 8- or 16-bit, got {pixels.dtype}")
    return pixels.astype(np.float32) / np.iinfo(pixels.dtype).max


def manifest_image_paths(manifests: list[str], splits: list[str]) -> list[str]:
    """Image paths of the manifests' rows in ``splits``, in manifest order, without repeats."""
    frames = [read_manifest(path) for path in manifests]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame["split"].isin(splits)]
    paths = list(dict.fromkeys(frame["path"]))  # a cache listed twice is read once
    if not paths:
        raise ValueError(f"no images in splits {', '.join(splits)} of {', '.join(map(str, manifests))}")
    return paths


def check_image_sizes(paths: list[str], size: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(readable paths, unreadable paths), reading only the PNG headers. An image of another
    size is a configuration mistake, not a bad file, and stops the run."""
    readable, unreadable, wrong = [], [], []
    height, width = size
    for path in paths:
        try:
            with Image.open(path) as image:
                image_width, image_height = image.size
        except (OSError, UnidentifiedImageError):
            unreadable.append(path)
            continue
        if (image_height, image_width) != (height, width):
            wrong.append((path, image_height, image_width))
        readable.append(path)
    if wrong:
        path, image_height, image_width = wrong[0]
        raise ValueError(
            f"{path}: image is {image_height}x{image_width} (height x width), data.size is {height}x{width}; "
            f"{len(wrong)} of {len(paths)} cached images have another size. Set data.size to the cache's "
            "size or prepare the cache at this size."
        )
    if unreadable:
        shown = ", ".join(unreadable[:SHOWN])
        log.warning("skipping %d of %d cached images that cannot be opened (first: %s)", len(unreadable), len(paths), shown)
    return readable, unreadable


@dataclass
class Augmentation:
    """Light, mammogram-safe augmentation. No horizontal flip: prepared breasts all touch the
    left edge, and a model should not learn to expect otherwise. (MONAI would do this too, but
    importing it costs seconds in every worker for two numpy lines.)"""

    vflip_prob: float = 0.0
    intensity_jitter: float = 0.0

    @property
    def active(self) -> bool:
        return self.vflip_prob > 0 or self.intensity_jitter > 0

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.vflip_prob > 0 and rng.random() < self.vflip_prob:
            image = image[::-1]
        if self.intensity_jitter > 0:
            gamma = float(np.exp(rng.uniform(-self.intensity_jitter, self.intensity_jitter)))
            image = np.power(image, gamma)
        return np.ascontiguousarray(image)


class PretrainImages(Dataset):
    """Cached images as ``{"image": 1 x H x W float in [0, 1], "index", "corrupt"}``.

    A key is an index, or ``(index, epoch)`` from ``EpochShuffle``: then the sample is augmented
    with a generator seeded by (seed, epoch, index). A file that fails to decode is reported
    and replaced by the next readable image (``corrupt`` is True), so that a batch keeps its
    size and one bad file does not stop a long run.
    """

    def __init__(self, paths: list[str], size: tuple[int, int], augmentation: Augmentation | None = None, seed: int = 0):
        self.paths = list(paths)
        self.size = tuple(size)
        self.augmentation = augmentation or Augmentation()
        self.seed = seed
        self.skipped: list[str] = []  # unreadable files left out when the dataset was built

    @classmethod
    def from_manifests(cls, manifests: list[str], splits: list[str], size, augmentation=None, seed: int = 0):
        """Every readable image of the manifests; ``skipped`` lists the unreadable ones."""
        readable, unreadable = check_image_sizes(manifest_image_paths(manifests, splits), tuple(size))
        if not readable:
            raise ValueError(f"none of the {len(unreadable)} cached images of {', '.join(map(str, manifests))} can be opened")
        dataset = cls(readable, size, augmentation, seed)
        dataset.skipped = unreadable
        return dataset

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        image = read_cached_image(self.paths[index])
        if image.shape != self.size:
            raise ValueError(f"{self.paths[index]}: image is {image.shape}, expected {self.size}")
        return image

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        image, corrupt = self._load_or_substitute(index)
        if epoch is not None and self.augmentation.active:
            image = self.augmentation(image, np.random.default_rng([self.seed, epoch, index]))
        return {"image": torch.from_numpy(image).unsqueeze(0), "index": index, "corrupt": corrupt}

    def _load_or_substitute(self, index: int) -> tuple[np.ndarray, bool]:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            try:
                return self.load(candidate), offset > 0
            except ValueError as error:
                log.warning("corrupt cached image replaced by another: %s", error)
        raise ValueError("no cached image can be decoded")


class EpochShuffle(Sampler):
    """A permutation of the dataset that depends only on (seed, epoch), cut to a whole number of
    optimizer steps, yielding ``(index, epoch)`` keys.

    Accelerate shards the batches of this one global order across processes (process r takes
    batch r of every ``processes`` consecutive batches), so N processes x batch B see exactly the
    samples that one process with batch N x B sees.
    """

    def __init__(self, num_images: int, samples_per_step: int, seed: int = 0):
        if num_images < samples_per_step:
            raise ValueError(
                f"the dataset has {num_images} images, fewer than one optimizer step takes "
                f"({samples_per_step} = batch size x processes x gradient accumulation)"
            )
        self.num_images = num_images
        self.samples_per_step = samples_per_step
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_images // self.samples_per_step * self.samples_per_step

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_images)[: len(self)]
        epoch = self.epoch
        return iter([(int(index), epoch) for index in order])
