"""VGG Image Annotator (VIA) regions for drawn findings, as CDD-CESM's radiologists drew them.

Annotators traced masses with whatever tool was at hand: a polygon, an open polyline, an ellipse
or a circle fitted by eye. Calcifications were clicked as points or outlined as a group. The
shape kinds cycle, so every kind turns up even in a small phantom. Each region is fitted to the
finding's exact footprint (OpenCV's ellipse fit and enclosing circle).
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

from vismae.synthetic.lesions import DrawnLesion

MASS_SHAPES = ("polygon", "ellipse", "circle", "polyline")
CLUSTER_SHAPES = ("point", "polygon")
MAX_POINTS = 12  # the most calcifications an annotator clicks one by one
TRACE_TOLERANCE = 0.8  # pixels a traced outline may stray from the footprint's edge


class RegionStyles:
    """Hands out the next region shape kind for masses and for calcification groups."""

    def __init__(self) -> None:
        self._mass = itertools.cycle(MASS_SHAPES)
        self._cluster = itertools.cycle(CLUSTER_SHAPES)

    def regions(self, drawn: DrawnLesion) -> list[dict]:
        """VIA ``region_shape_attributes`` dicts outlining one finding."""
        lesion = drawn.lesion
        if lesion.kind == "lymph_node":
            return [_ellipse(drawn)]
        if lesion.kind == "calcifications":
            kind = "point" if lesion.shape == "coarse" else next(self._cluster)
            return _points(drawn) if kind == "point" else [_polygon(drawn)]
        outline = {"polygon": _polygon, "ellipse": _ellipse, "circle": _circle, "polyline": _polyline}
        return [outline[next(self._mass)](drawn)]


def _traced(drawn: DrawnLesion) -> np.ndarray:
    """The outline as a hand would click it: vertices where it turns, within a pixel of the edge."""
    return cv2.approxPolyDP(drawn.outline().astype(np.int32), TRACE_TOLERANCE, True)[:, 0, :]


def _polygon(drawn: DrawnLesion) -> dict:
    return _vertices("polygon", _traced(drawn))


def _polyline(drawn: DrawnLesion) -> dict:
    """An open trace of the outline (readers close it); it stops one vertex short of the start."""
    return _vertices("polyline", _traced(drawn)[:-1])


def _vertices(name: str, points: np.ndarray) -> dict:
    return {"name": name, "all_points_x": points[:, 0].tolist(), "all_points_y": points[:, 1].tolist()}


def _ellipse(drawn: DrawnLesion) -> dict:
    (cx, cy), (width, height), angle = cv2.fitEllipse(_dense_outline(drawn))
    # OpenCV's convention (first axis along `angle`, clockwise on screen) is VIA's as well.
    return {
        "name": "ellipse", "cx": round(cx), "cy": round(cy),
        "rx": round(width / 2, 3), "ry": round(height / 2, 3), "theta": round(math.radians(angle), 3),
    }


def _circle(drawn: DrawnLesion) -> dict:
    (cx, cy), radius = cv2.minEnclosingCircle(_dense_outline(drawn))
    return {"name": "circle", "cx": round(cx), "cy": round(cy), "r": round(radius, 3)}


def _points(drawn: DrawnLesion) -> list[dict]:
    biggest = np.argsort(-drawn.calcifications[:, 2], kind="stable")[:MAX_POINTS]
    return [
        {"name": "point", "cx": round(float(x)), "cy": round(float(y))}
        for x, y, _ in drawn.calcifications[np.sort(biggest)]
    ]


def _dense_outline(drawn: DrawnLesion) -> np.ndarray:
    """Every boundary pixel of the footprint (fits need more than a simplified contour's corners)."""
    contours, _ = cv2.findContours(drawn.footprint.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    largest = max(contours, key=cv2.contourArea)[:, 0, :]
    return (largest + np.array([drawn.x0, drawn.y0])).astype(np.float32)
