"""Crop to the breast, flip it to the left edge, CLAHE, resize and pad to the working size.

Every geometric step is recorded in a :class:`Transform`, which moves points (ROI shapes,
predicted boxes) and masks exactly as the pixels moved, and maps them back again.

Coordinates are continuous pixel coordinates: x to the right, y down, pixel ``i`` covering
``[i, i + 1)``. In them a crop is a shift, a flip is ``x -> width - x`` and a resize is a
scale, with no half-pixel terms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

# The breast is found on a copy this long on its longer side: plenty for a bounding box,
# and the morphology costs next to nothing.
DETECTION_SIDE = 512
# Opening kernel as a fraction of the short side of the detection copy: erases bright
# strips and text thinner than this (film borders, burned-in labels) but not the breast.
OPENING_FRACTION = 0.03
# When the two halves of the crop hold nearly equal mass, trust the laterality column.
FLIP_MARGIN = 0.05


@dataclass(frozen=True)
class Preprocessing:
    """Settings that decide the cached pixels. ``size`` is (height, width)."""

    size: tuple[int, int]
    bits: int = 16
    clahe_clip: float = 2.0  # 0 turns CLAHE off
    clahe_tiles: int = 8

    def __post_init__(self):
        height, width = self.size
        if height < 8 or width < 8:
            raise ValueError(f"size {height}x{width}: expected at least 8 pixels a side")
        if self.bits not in (8, 16):
            raise ValueError(f"bits {self.bits}: expected 8 or 16")
        if self.clahe_clip < 0 or self.clahe_tiles < 1:
            raise ValueError(f"CLAHE clip {self.clahe_clip} and tiles {self.clahe_tiles}: expected clip >= 0, tiles >= 1")

    @property
    def dtype(self) -> type:
        return np.uint8 if self.bits == 8 else np.uint16


def parse_size(text: str) -> tuple[int, int]:
    """'384' -> (384, 384); '512x416' -> (512, 416), meaning height x width."""
    parts = str(text).lower().split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers, default=0) <= 0:
        raise ValueError(f"size {text!r}: expected N or HxW with positive integers, e.g. 384 or 512x416")
    return (numbers[0], numbers[-1])


@dataclass(frozen=True)
class Transform:
    """Original image -> cached image: crop box, horizontal flip, scale, pad (right/bottom)."""

    source_height: int
    source_width: int
    crop_x0: int
    crop_y0: int
    crop_x1: int
    crop_y1: int
    flipped: bool
    scale_x: float  # resized width / crop width
    scale_y: float  # resized height / crop height
    out_height: int
    out_width: int

    @property
    def crop_width(self) -> int:
        return self.crop_x1 - self.crop_x0

    @property
    def crop_height(self) -> int:
        return self.crop_y1 - self.crop_y0

    @property
    def resized_size(self) -> tuple[int, int]:
        """(width, height) of the image content before padding, as cv2.resize wants it."""
        return (round(self.crop_width * self.scale_x), round(self.crop_height * self.scale_y))

    def map_points(self, points) -> np.ndarray:
        """Original (x, y) points, shape (N, 2) -> cached image coordinates."""
        xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        x = xy[:, 0] - self.crop_x0
        y = xy[:, 1] - self.crop_y0
        if self.flipped:
            x = self.crop_width - x
        return np.stack([x * self.scale_x, y * self.scale_y], axis=1)

    def unmap_points(self, points) -> np.ndarray:
        """Cached image (x, y) points -> original coordinates (to report predictions)."""
        xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        x = xy[:, 0] / self.scale_x
        y = xy[:, 1] / self.scale_y
        if self.flipped:
            x = self.crop_width - x
        return np.stack([x + self.crop_x0, y + self.crop_y0], axis=1)

    def crop_and_flip(self, array: np.ndarray) -> np.ndarray:
        cropped = array[self.crop_y0 : self.crop_y1, self.crop_x0 : self.crop_x1]
        return cropped[:, ::-1] if self.flipped else cropped

    def resize_and_pad(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        resized = cv2.resize(np.ascontiguousarray(array), self.resized_size, interpolation=interpolation)
        out = np.zeros((self.out_height, self.out_width), dtype=array.dtype)
        out[: resized.shape[0], : resized.shape[1]] = resized
        return out

    def apply_to_image(self, image: np.ndarray) -> np.ndarray:
        """Move an original-size image as the cached pixels were moved (no intensity steps)."""
        return self.resize_and_pad(self.crop_and_flip(image), _interpolation(self.scale_x))

    def apply_to_mask(self, mask: np.ndarray) -> np.ndarray:
        """Move an original-size binary mask to the cache; uint8 0/255 out."""
        return resize_mask(self.crop_and_flip(mask), self)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Transform":
        fields = {field.name: field.type for field in dataclasses.fields(cls)}
        kinds = {"int": int, "float": float, "bool": _as_bool}
        return cls(**{name: kinds[kind](values[name]) for name, kind in fields.items()})


def _as_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1")


def _interpolation(scale: float) -> int:
    # Area averaging is the anti-aliased choice when shrinking; it blurs when enlarging.
    return cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR


def resize_mask(mask: np.ndarray, transform: Transform) -> np.ndarray:
    """Resize a binary mask so that its outline is exact and small lesions survive.

    A pixel is in the mask when at least half its area was (area averaging, then a majority
    threshold). A lesion too small to win any majority is kept as the pixels it touches.
    """
    coverage = transform.resize_and_pad((mask > 0).astype(np.float32), cv2.INTER_AREA)
    majority = coverage >= 0.5
    touched = (coverage > 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(touched, connectivity=8)
    surviving = np.unique(labels[majority])
    vanished = np.setdiff1d(np.arange(1, count), surviving)
    kept = majority | np.isin(labels, vanished)
    return kept.astype(np.uint8) * 255


def breast_region(image: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Bounding box (x0, y0, x1, y1) and mask of the breast in a [0, 1] image.

    A triangle threshold (made for a histogram with one tall peak, the air, and a long tail:
    unlike Otsu it does not split dense from fatty tissue and crop the fatty margin away), a
    morphological opening that erases thin bright strips along the film edge and text, then
    the largest connected component: burned-in labels and markers are smaller than the
    breast. The mask is dilated a little so the faint skin line stays in.
    """
    height, width = image.shape
    factor = min(1.0, DETECTION_SIDE / max(height, width))
    small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))), interpolation=cv2.INTER_AREA)
    small = np.clip(small * 255, 0, 255).astype(np.uint8)
    _, binary = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_TRIANGLE)
    side = max(3, round(OPENING_FRACTION * min(small.shape)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:  # nothing brighter than the rest: keep the whole image
        return (0, 0, width, height), np.ones((height, width), dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    box = (
        max(0, math.floor(x / factor)),
        max(0, math.floor(y / factor)),
        min(width, math.ceil((x + w) / factor)),
        min(height, math.ceil((y + h) / factor)),
    )
    component = cv2.dilate((labels == largest).astype(np.uint8), kernel)
    mask = cv2.resize(component, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return box, mask


def breast_on_right(image: np.ndarray, laterality: str) -> bool:
    """True when the right half of a cropped breast image holds more of the breast.

    The pixels decide; the laterality column only breaks a near tie (some files carry the
    wrong laterality, and some scanners store R breasts already mirrored).
    """
    half = image.shape[1] // 2
    left = float(image[:, :half].sum())
    right = float(image[:, image.shape[1] - half :].sum())
    if abs(left - right) <= FLIP_MARGIN * (left + right):
        return laterality == "R"
    return right > left


def apply_clahe(pixels: np.ndarray, settings: Preprocessing) -> np.ndarray:
    """OpenCV's CLAHE on the 8- or 16-bit image.

    At 16 bits OpenCV counts 65536 bins and spreads the clipped counts over all of them, so
    the same clip limit enhances somewhat more than at 8 bits; the bit depth is therefore
    one of the cache's settings, not just its precision.
    """
    if settings.clahe_clip <= 0:
        return pixels
    tiles = (settings.clahe_tiles, settings.clahe_tiles)
    return cv2.createCLAHE(clipLimit=settings.clahe_clip, tileGridSize=tiles).apply(pixels)


def to_integer(image: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] float -> full-range uint8 or uint16."""
    top = np.iinfo(dtype).max
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)


def preprocess(image: np.ndarray, laterality: str, settings: Preprocessing) -> tuple[np.ndarray, Transform]:
    """A [0, 1] float mammogram -> (cached pixels, the transform that produced them)."""
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"image of shape {image.shape}: expected a 2-D gray image")
    (x0, y0, x1, y1), breast = breast_region(image)
    cropped = image[y0:y1, x0:x1]
    flipped = breast_on_right(cropped * breast[y0:y1, x0:x1], laterality)
    out_height, out_width = settings.size
    scale = min(out_height / (y1 - y0), out_width / (x1 - x0))
    # Each axis keeps its own exact ratio after rounding to whole pixels.
    resized_w = min(out_width, max(1, round((x1 - x0) * scale)))
    resized_h = min(out_height, max(1, round((y1 - y0) * scale)))
    transform = Transform(
        source_height=image.shape[0],
        source_width=image.shape[1],
        crop_x0=x0,
        crop_y0=y0,
        crop_x1=x1,
        crop_y1=y1,
        flipped=flipped,
        scale_x=resized_w / (x1 - x0),
        scale_y=resized_h / (y1 - y0),
        out_height=out_height,
        out_width=out_width,
    )
    integer = to_integer(transform.crop_and_flip(image), settings.dtype)
    # Blank after CLAHE what lies outside the breast (a label left inside the crop box) and
    # what was black: CLAHE turns black air into a faint grey in tiles that are mostly air.
    keep = transform.crop_and_flip(breast) & (integer > 0)
    pixels = np.where(keep, apply_clahe(integer, settings), 0).astype(settings.dtype)
    return transform.resize_and_pad(pixels, _interpolation(scale)), transform
