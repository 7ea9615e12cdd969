"""Findings drawn into one view of a breast: masses, calcifications and lymph nodes.

Their look follows the label the way radiologists read it: malignant masses are irregular or
spiculated with ill-defined margins and take up contrast strongly, malignant calcifications are
fine and clustered; benign masses are round or oval with sharp margins, benign calcifications
coarse and scattered. Each finding is drawn on a small patch four times finer and averaged down
(anti-aliasing), and keeps its footprint, the region an annotator outlines, so that boxes,
polygons and masks match the pixels exactly.

Shapes come from the lesion's own seed, so the CC and the MLO view of a breast show the same
finding (turned a little in the oblique view) at the same distance from the chest wall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from vismae.synthetic.anatomy import Anatomy, smooth_noise
from vismae.synthetic.cohort import VIEWS, Lesion

SUPERSAMPLE = 4
SHIFT = 4  # OpenCV draws at 1/16 pixel precision with coordinates in fixed point
REFERENCE_WIDTH = 416  # calcification sizes are given for an image this wide
# Brightness a finding adds over the tissue it overlaps (attenuation adds up along the beam).
# By malignancy: high density is a sign of malignancy, here exaggerated so that a cancer stands
# out of dense tissue even in a 64 px image (where it saturates, it masks what lies beneath).
MASS_DENSITY = {False: 0.26, True: 0.8}
CALCIFICATION_DENSITY = 0.8
# Contrast uptake in a subtracted CESM image: cancers enhance strongly, benign findings mildly.
MASS_UPTAKE = {False: 0.16, True: 0.5}
CLUSTER_DENSITY = 0.07  # the faint density around a malignant cluster
CLUSTER_UPTAKE = 0.28  # and its non-mass enhancement
MLO_TURN = 0.6  # radians: the oblique view sees a finding turned


@dataclass
class DrawnLesion:
    """A finding as drawn in one image; geometry in image pixels, (x, y) at pixel centres."""

    lesion: Lesion
    x0: int  # the patch's top-left corner in the image
    y0: int
    density: np.ndarray  # float32 patch: brightness added to the mammogram
    uptake: np.ndarray  # float32 patch: enhancement in a subtracted (CESM) image
    footprint: np.ndarray  # bool patch: what an annotator outlines
    calcifications: np.ndarray  # (K, 3): x, y, radius of each calcification; (0, 3) if none

    def slices(self) -> tuple[slice, slice]:
        height, width = self.footprint.shape
        return slice(self.y0, self.y0 + height), slice(self.x0, self.x0 + width)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The footprint as a bool image of ``shape``."""
        mask = np.zeros(shape, bool)
        mask[self.slices()] = self.footprint
        return mask

    def box(self) -> tuple[int, int, int, int]:
        """(xmin, ymin, xmax, ymax): the first and last footprint pixel on each axis."""
        rows, columns = np.nonzero(self.footprint)
        return (
            self.x0 + int(columns.min()),
            self.y0 + int(rows.min()),
            self.x0 + int(columns.max()),
            self.y0 + int(rows.max()),
        )

    def outline(self) -> np.ndarray:
        """The footprint's outer contour, (N, 2) integer x, y in image pixels."""
        contours, _ = cv2.findContours(
            self.footprint.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        largest = max(contours, key=cv2.contourArea)[:, 0, :]
        return largest + np.array([self.x0, self.y0])

    def flipped(self, width: int) -> DrawnLesion:
        """The same finding in the left-right mirrored image of ``width`` pixels."""
        calcifications = self.calcifications.copy()
        calcifications[:, 0] = width - 1 - calcifications[:, 0]
        return replace(
            self,
            x0=width - self.x0 - self.footprint.shape[1],
            density=self.density[:, ::-1].copy(),
            uptake=self.uptake[:, ::-1].copy(),
            footprint=self.footprint[:, ::-1].copy(),
            calcifications=calcifications,
        )


def draw_lesion(anatomy: Anatomy, lesion: Lesion, view: str) -> DrawnLesion | None:
    """Draw ``lesion`` as seen in ``view`` of a breast with its chest wall at x = 0.

    Returns None where the view cannot show it (an axillary lymph node in a CC view).
    """
    rng = np.random.default_rng(lesion.seed)  # the same shape in both views
    radius = max(2.0, lesion.diameter * anatomy.extent / 2)
    turn = rng.uniform(0, 2 * math.pi) + (MLO_TURN if view == "MLO" else 0.0)
    scale = max(0.6, anatomy.tissue.shape[1] / REFERENCE_WIDTH)
    if lesion.kind == "lymph_node":
        if view != "MLO":
            return None
        centre = _place_in_axilla(anatomy, radius, rng)
        drawn = _mass(lesion, centre, radius, turn, rng, hilum=True)
    else:
        centre = _place(anatomy, lesion, view, radius)
        if lesion.kind == "mass":
            drawn = _mass(lesion, centre, radius, turn, rng)
            if lesion.with_calcifications:
                calcifications = _fine_cluster(rng, centre, 0.7 * radius, turn, scale)
                drawn = _add_calcifications(drawn, calcifications)
        elif lesion.shape == "fine":
            drawn = _cluster(lesion, _fine_cluster(rng, centre, radius, turn, scale), radius)
        else:
            drawn = _cluster(lesion, _coarse_calcifications(rng, centre, radius, scale), radius)
    return _clip_to_image(drawn, anatomy.tissue.shape)


# -- where a finding sits ---------------------------------------------------------------------


def _place(anatomy: Anatomy, lesion: Lesion, view: str, radius: float) -> tuple[float, float]:
    """At ``lesion.depth`` of the way to the nipple, across the breast by the view's offset."""
    x = float(np.clip(lesion.depth * anatomy.extent, radius, anatomy.tissue.shape[1] - 1 - radius))
    column = anatomy.room[:, int(round(x))]
    inside = np.flatnonzero(column > 0)
    if len(inside) == 0:  # a breast too small for the finding: put it behind the nipple
        return float(anatomy.extent / 2), anatomy.nipple[1]
    middle, half = (inside[0] + inside[-1]) / 2, (inside[-1] - inside[0]) / 2
    offset = lesion.offset[VIEWS.index(view)]
    for shrink in (1.0, 0.6, 0.3, 0.0):  # move toward the axis until the finding fits
        y = middle + shrink * 0.6 * offset * half
        if column[int(round(y))] >= 1.2 * radius:
            return x, float(y)
    return x, float(np.argmax(column))


def _place_in_axilla(anatomy: Anatomy, radius: float, rng) -> tuple[float, float]:
    """Just in front of the upper pectoral muscle, where axillary lymph nodes show on an MLO."""
    muscle_rows = np.flatnonzero(anatomy.pectoral.any(axis=1))
    y = float(muscle_rows[-1] * rng.uniform(0.15, 0.35)) if len(muscle_rows) else 2 * radius
    muscle_edge = float(anatomy.pectoral[int(y)].sum())
    return muscle_edge + 2.0 * radius, max(y, 1.5 * radius)


# -- masses -----------------------------------------------------------------------------------


def _mass(lesion: Lesion, centre, radius: float, turn: float, rng, hilum: bool = False) -> DrawnLesion:
    spiculated = lesion.shape == "spiculated"
    half = int(math.ceil(radius * (2.5 if spiculated else 1.5))) + 3
    x0, y0 = int(round(centre[0])) - half, int(round(centre[1])) - half
    local = (centre[0] - x0, centre[1] - y0)
    size = 2 * half + 1

    angles = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    radii = radius * _radial_profile(lesion.shape, angles, rng)
    body = _fill_polygons([_polar_points(local, radii, angles + turn)], size)
    footprint = body >= 0.5
    # Circumscribed margins are sharp; malignant ones fade into the tissue around them.
    margin = radius * (rng.uniform(0.10, 0.16) if lesion.malignant else rng.uniform(0.03, 0.05))
    soft = cv2.GaussianBlur(body, (0, 0), max(0.5, margin))

    ys, xs = np.indices((size, size), dtype=np.float32)
    dome = np.clip(1 - ((xs - local[0]) ** 2 + (ys - local[1]) ** 2) / radius**2, 0, 1)
    level = MASS_DENSITY[lesion.malignant] * rng.uniform(0.9, 1.1)
    density = level * soft * (0.8 + 0.2 * dome)
    if lesion.malignant:  # a cancer's inside is mottled
        density *= 1 + 0.12 * smooth_noise(rng, (size, size), max(1.0, radius / 4))
    uptake = MASS_UPTAKE[lesion.malignant] * cv2.GaussianBlur(body, (0, 0), max(0.5, 0.15 * radius))
    if spiculated:
        spicules = _fill_polygons(_spicules(local, radius, radii, angles, turn, rng), size)
        spicules = cv2.GaussianBlur(spicules, (0, 0), 0.6)
        density += 0.6 * level * spicules * (1 - soft)
        uptake += 0.3 * MASS_UPTAKE[True] * spicules * (1 - soft)
    if hilum:  # a lymph node's fatty hilum: a dark notch on one side
        notch = (local[0] + 0.45 * radius * math.cos(turn), local[1] + 0.45 * radius * math.sin(turn))
        around = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        fat = _fill_polygons([_polar_points(notch, np.full(48, 0.4 * radius), around)], size)
        density -= 0.7 * level * fat * body
    no_calcifications = np.zeros((0, 3), np.float32)
    return DrawnLesion(lesion, x0, y0, density.astype(np.float32), uptake.astype(np.float32), footprint,
                       no_calcifications)


def _radial_profile(shape: str, angles: np.ndarray, rng) -> np.ndarray:
    """Outline radius per angle, about 1 on average."""
    if shape in ("round", "oval"):
        ratio = rng.uniform(0.9, 1.0) if shape == "round" else rng.uniform(0.55, 0.75)
        ellipse = ratio / np.sqrt((ratio * np.cos(angles)) ** 2 + np.sin(angles) ** 2)
        return ellipse / math.sqrt(ratio)
    # Irregular and spiculated masses: lobulated, several harmonics of random phase.
    strength = 0.16 if shape == "irregular" else 0.08
    profile = np.ones_like(angles)
    for harmonic in range(2, 8):
        amplitude = strength * rng.uniform(0.4, 1.0) / math.sqrt(harmonic - 1)
        profile += amplitude * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
    return np.clip(profile, 0.45, None)


def _spicules(local, radius, radii, angles, turn, rng) -> list[np.ndarray]:
    """Thin tapering spikes radiating from the mass outline."""
    spikes = []
    for _ in range(int(rng.integers(9, 16))):
        k = int(rng.integers(len(angles)))
        angle, base = angles[k] + turn, 0.92 * radii[k]
        width = rng.uniform(0.05, 0.09) * radius
        length = base + radius * rng.uniform(0.5, 1.4)
        normal = np.array([-math.sin(angle), math.cos(angle)])
        root = np.array(local) + base * np.array([math.cos(angle), math.sin(angle)])
        tip = np.array(local) + length * np.array([math.cos(angle), math.sin(angle)])
        spikes.append(np.stack([root + width * normal, tip, root - width * normal]))
    return spikes


# -- calcifications ---------------------------------------------------------------------------


def _fine_cluster(rng, centre, radius: float, turn: float, scale: float) -> np.ndarray:
    """Fine pleomorphic calcifications: a tight cluster, partly lined up along branches."""
    count = int(rng.integers(18, 34))
    scattered = rng.normal(0, 0.4 * radius, (count // 2, 2))
    branches = []
    for _ in range(count - count // 2):
        direction = turn + rng.choice((0.0, 0.7, -0.6))
        step = rng.uniform(-0.9, 0.9) * radius
        branches.append([step * math.cos(direction), step * math.sin(direction)])
    branches = np.array(branches) + rng.normal(0, 0.05 * radius, (len(branches), 2))
    offsets = np.concatenate([scattered, branches])
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= np.minimum(1, radius / np.maximum(norms, 1e-6))  # keep them inside the cluster
    sizes = rng.uniform(0.7, 1.3, count) * scale
    return np.column_stack([offsets + np.array(centre), sizes]).astype(np.float32)


def _coarse_calcifications(rng, centre, radius: float, scale: float) -> np.ndarray:
    """Coarse benign calcifications: a few large ones, scattered."""
    count = int(rng.integers(2, 5))
    angles = rng.uniform(0, 2 * math.pi, count)
    distances = radius * np.sqrt(rng.uniform(0, 1, count))
    offsets = np.column_stack([distances * np.cos(angles), distances * np.sin(angles)])
    sizes = rng.uniform(1.8, 3.2, count) * scale
    return np.column_stack([offsets + np.array(centre), sizes]).astype(np.float32)


def _cluster(lesion: Lesion, calcifications: np.ndarray, radius: float) -> DrawnLesion:
    """Calcifications drawn on their own, the footprint their convex hull with a margin."""
    pad = 0.15 * radius + 1.5
    centre = calcifications[:, :2].mean(axis=0)
    spread = np.abs(calcifications[:, :2] - centre).max() + calcifications[:, 2].max() + pad
    half = int(math.ceil(spread)) + 2
    x0, y0 = int(round(centre[0])) - half, int(round(centre[1])) - half
    size = 2 * half + 1
    nothing = np.zeros((size, size), np.float32)
    drawn = DrawnLesion(lesion, x0, y0, density=nothing, uptake=nothing.copy(), footprint=nothing > 0,
                        calcifications=np.zeros((0, 3), np.float32))
    drawn = _add_calcifications(drawn, calcifications)

    around = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    ring = np.column_stack([np.cos(around), np.sin(around)])
    points = (calcifications[:, None, :2] + (calcifications[:, None, 2:] + pad) * ring[None]).reshape(-1, 2)
    hull = cv2.convexHull((points - [x0, y0]).astype(np.float32)).round().astype(np.int32)
    footprint = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(footprint, hull, 1)
    if lesion.malignant:
        # A malignant cluster sits in faintly denser tissue, and enhances around it (non-mass
        # enhancement); this also keeps it visible once the image is shrunk for training.
        cloud = cv2.GaussianBlur(footprint.astype(np.float32), (0, 0), 0.35 * radius + 0.5)
        drawn.density += CLUSTER_DENSITY * cloud
        drawn.uptake += CLUSTER_UPTAKE * cloud
    drawn.footprint = footprint.astype(bool)
    return drawn


def _add_calcifications(drawn: DrawnLesion, calcifications: np.ndarray) -> DrawnLesion:
    size = drawn.footprint.shape[0]
    canvas = np.zeros((size * SUPERSAMPLE, size * SUPERSAMPLE), np.uint8)
    coarse = drawn.lesion.shape == "coarse"
    centres = _to_canvas(calcifications[:, :2] - [drawn.x0, drawn.y0])
    for index, (centre, radius) in enumerate(zip(centres, calcifications[:, 2])):
        _disc(canvas, centre, radius, 255)
        if coarse and index % 2 == 1:  # some coarse calcifications have a lucent centre
            _disc(canvas, centre, 0.5 * radius, 0)
    coverage = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return replace(
        drawn,
        density=drawn.density + CALCIFICATION_DENSITY * coverage,
        calcifications=np.concatenate([drawn.calcifications, calcifications]),
    )


# -- drawing helpers --------------------------------------------------------------------------


def _polar_points(centre, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.column_stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)])


def _to_canvas(points: np.ndarray) -> np.ndarray:
    """Patch pixel-centre coordinates to the supersampled canvas, in fixed point (SHIFT bits)."""
    return np.round((points * SUPERSAMPLE + (SUPERSAMPLE - 1) / 2) * 2**SHIFT).astype(np.int32)


def _disc(canvas: np.ndarray, centre: np.ndarray, radius: float, value: int) -> None:
    """A filled disc of ``radius`` patch pixels around a canvas point from `_to_canvas`."""
    cv2.circle(canvas, (int(centre[0]), int(centre[1])), int(radius * SUPERSAMPLE * 2**SHIFT), value, -1,
               cv2.LINE_8, SHIFT)


def _fill_polygons(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Fraction of each patch pixel the polygons cover (float32 0..1)."""
    canvas = np.zeros((size * SUPERSAMPLE, size * SUPERSAMPLE), np.uint8)
    cv2.fillPoly(canvas, [_to_canvas(polygon) for polygon in polygons], 255, cv2.LINE_8, SHIFT)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _clip_to_image(drawn: DrawnLesion, shape: tuple[int, int]) -> DrawnLesion:
    """Cut the patch to the image (a finding at the chest wall may reach past the edge)."""
    size_y, size_x = drawn.footprint.shape
    top, left = max(0, -drawn.y0), max(0, -drawn.x0)
    bottom = min(size_y, shape[0] - drawn.y0)
    right = min(size_x, shape[1] - drawn.x0)
    if (top, left, bottom, right) == (0, 0, size_y, size_x):
        return drawn
    window = (slice(top, bottom), slice(left, right))
    return replace(
        drawn,
        x0=drawn.x0 + left,
        y0=drawn.y0 + top,
        density=drawn.density[window].copy(),
        uptake=drawn.uptake[window].copy(),
        footprint=drawn.footprint[window].copy(),
    )
