"""A breast without findings: outline by view, pectoral muscle, fat and fibroglandular texture, skin.

Drawn with the chest wall on the left image edge (a left breast as VinDr shows it); `render`
mirrors right breasts. Intensities are a presentation image in [0, 1]: air 0, fat dark grey,
fibroglandular tissue and muscle bright. Every length is a fraction of the image size, so a
phantom looks the same at 128 or 2048 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FAT = 0.34
GLAND = 0.76
MUSCLE = 0.74
SKIN = 0.10  # the skin line's extra brightness over the thin tissue just inside it
# How much fibroglandular tissue each ACR density category holds (a shift of the threshold).
DENSITY_BIAS = {"A": -1.4, "B": -0.6, "C": 0.1, "D": 0.8}


@dataclass
class Anatomy:
    tissue: np.ndarray  # float32 HxW presentation intensities in [0, 1]
    glandular: np.ndarray  # float32 HxW fibroglandular fraction (contrast uptake follows it)
    breast: np.ndarray  # bool HxW inside the skin, muscle included
    pectoral: np.ndarray  # bool HxW pectoral muscle (MLO only)
    room: np.ndarray  # float32 HxW distance to the skin or the muscle: where a lesion fits
    nipple: tuple[float, float]  # (x, y)
    extent: float  # chest wall to nipple in pixels: the breast's own length scale

    def flipped(self) -> Anatomy:
        width = self.tissue.shape[1]
        return Anatomy(
            tissue=self.tissue[:, ::-1].copy(),
            glandular=self.glandular[:, ::-1].copy(),
            breast=self.breast[:, ::-1].copy(),
            pectoral=self.pectoral[:, ::-1].copy(),
            room=self.room[:, ::-1].copy(),
            nipple=(width - 1 - self.nipple[0], self.nipple[1]),
            extent=self.extent,
        )


def render_anatomy(height: int, width: int, view: str, density: str, rng: np.random.Generator) -> Anatomy:
    """A breast of the given ACR density seen in ``view`` ("CC" or "MLO"), chest wall at x = 0."""
    rows = np.arange(height, dtype=np.float32)
    columns = np.arange(width, dtype=np.float32)
    edge = _cc_edge(rows, height, width, rng) if view == "CC" else _mlo_edge(rows, height, width, rng)
    edge *= 1 + 0.015 * smooth_noise(rng, (height, 1), 0.08 * height)[:, 0]  # a natural, uneven outline
    breast = columns[None, :] < edge[:, None]
    muscle_edge = _pectoral_edge(rows, height, width, rng) if view == "MLO" else np.zeros_like(rows)
    pectoral = (columns[None, :] < muscle_edge[:, None]) & breast
    nipple_y = int(np.argmax(edge))
    nipple = (float(edge[nipple_y]), float(nipple_y))

    # Everything smooth is computed on every other pixel and resized: a quarter of the work.
    # Distances are to the skin only: the image border at the chest wall is not skin.
    coarse = breast[::2, ::2]
    to_skin = _distance_inside(coarse) * np.float32(2)
    room = _distance_inside(coarse & ~pectoral[::2, ::2]) * np.float32(2)
    glandular = _glandular(rng, coarse, to_skin, nipple, density, width)
    tissue = FAT + (GLAND - FAT) * glandular
    if view == "MLO":
        soft = max(1.0, 0.004 * width)  # the muscle's border is a little blurred
        muscle = np.clip((muscle_edge[::2, None] - columns[None, ::2]) / soft + 0.5, 0, 1) * coarse
        muscle_level = MUSCLE + 0.03 * smooth_noise(rng, coarse.shape, 0.025 * width)
        tissue = tissue * (1 - muscle) + muscle_level * muscle
    # A compressed breast thins toward the skin, so the periphery is darker than the centre.
    tissue *= 1 - 0.7 * np.exp(to_skin * np.float32(-1 / (0.05 * width)))

    def full(field: np.ndarray) -> np.ndarray:
        return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)

    tissue = full(tissue) + np.float32(SKIN) * _skin_line(breast, max(1, round(0.004 * width)))
    return Anatomy(
        tissue=np.where(breast, tissue, np.float32(0)),
        glandular=np.where(breast, full(glandular), np.float32(0)),
        breast=breast,
        pectoral=pectoral,
        room=np.where(breast & ~pectoral, full(room), np.float32(0)),
        nipple=nipple,
        extent=nipple[0],
    )


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, stretch: float = 1.0
) -> np.ndarray:
    """Correlated Gaussian noise (zero mean, about unit variance) with blur ``sigma`` pixels.

    Drawn on a grid coarse enough that the blur spans a cell or two, then resized: the same look
    at any image size for a fraction of the cost. ``stretch`` > 1 elongates it along x.
    """
    height, width = shape
    step_y = max(1, round(sigma / 1.5))
    step_x = max(1, round(stretch * sigma / 1.5))
    small = rng.standard_normal((height // step_y + 2, width // step_x + 2), dtype=np.float32)
    blur_x, blur_y = max(0.5, stretch * sigma / step_x), max(0.5, sigma / step_y)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=blur_x, sigmaY=blur_y)
    small = (small - small.mean()) / (small.std() + 1e-6)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Distance in pixels from each pixel of ``mask`` to the nearest pixel outside it."""
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_3)


def _skin_line(breast: np.ndarray, width: int) -> np.ndarray:
    """The band of ``width`` pixels just inside the breast outline (not at the image border)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    inner = cv2.erode(breast.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    return (breast & (inner == 0)).astype(np.float32)


def _cc_edge(rows, height, width, rng) -> np.ndarray:
    """CC: a half super-ellipse against the chest wall, nipple near mid-height."""
    reach = rng.uniform(0.62, 0.82) * width
    centre = rng.uniform(0.46, 0.54) * height
    half_height = rng.uniform(0.38, 0.46) * height
    power = rng.uniform(2.0, 2.6)
    t = np.clip(np.abs(rows - centre) / half_height, 0, 1)
    return (reach * (1 - t**power) ** (1 / power)).astype(np.float32)


def _mlo_edge(rows, height, width, rng) -> np.ndarray:
    """MLO: the axilla runs off the top edge; the breast bulges below and ends at the fold."""
    reach = rng.uniform(0.64, 0.84) * width
    top = rng.uniform(0.36, 0.46) * width
    bottom = rng.uniform(0.86, 0.96) * height
    peak = rng.uniform(0.55, 0.66)
    t = rows / bottom
    rising = top + (reach - top) * np.sin(0.5 * np.pi * np.clip(t / peak, 0, 1)) ** 0.8
    falling = reach * np.sqrt(np.clip(1 - ((t - peak) / (1 - peak)) ** 2, 0, 1))
    return np.where(t <= peak, rising, falling).astype(np.float32)


def _pectoral_edge(rows, height, width, rng) -> np.ndarray:
    """The pectoral muscle's border per row: a triangle in the top corner at the chest wall."""
    base = rng.uniform(0.24, 0.34) * width
    depth = rng.uniform(0.42, 0.62) * height
    curve = rng.uniform(0.8, 1.2)
    return (base * np.clip(1 - rows / depth, 0, 1) ** curve).astype(np.float32)


def _glandular(rng, breast, to_skin, nipple, density, width) -> np.ndarray:
    """Fibroglandular fraction on the half-resolution grid of ``breast``: patchy, streaked toward
    the nipple, central, thinning to fat at the edges. Lengths are in full-size pixels."""
    shape = breast.shape
    field = (
        0.65 * smooth_noise(rng, shape, 0.03 * width)
        + 0.35 * smooth_noise(rng, shape, 0.009 * width)
        + 0.35 * smooth_noise(rng, shape, 0.004 * width, stretch=5.0)  # ducts and ligaments
    )
    nipple_x, nipple_y = nipple
    half_height = max(1.0, float(breast[:, int(0.2 * nipple_x)].sum()))  # in full-size pixels
    # A separable Gaussian envelope around the glandular centre, behind the nipple.
    rows = np.arange(0, 2 * shape[0], 2, dtype=np.float32)
    columns = np.arange(0, 2 * shape[1], 2, dtype=np.float32)
    across = np.exp(-(((rows - nipple_y) / (0.9 * half_height)) ** 2))
    along = np.exp(-(((columns - 0.5 * nipple_x) / (0.6 * nipple_x)) ** 2))
    envelope = across[:, None] * along[None, :] * np.clip(to_skin * np.float32(1 / (0.08 * width)), 0, 1)
    gland = 1 / (1 + np.exp(np.float32(-2.5) * (field + np.float32(DENSITY_BIAS[density]))))
    return np.where(breast, gland * envelope, np.float32(0))
