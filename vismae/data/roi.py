"""ROI shapes from the manifest: draw them into a mask, move them into cache coordinates.

Shapes use continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``), so a box
``xmin=10, xmax=20`` covers pixels 10..19. An ellipse's ``theta`` (radians) turns its ``rx``
axis from +x towards +y, i.e. clockwise as the image is displayed (y down), as VGG Image
Annotator and OpenCV do. A ``point`` is a disk of its ``radius`` key, or else of the radius
the caller gives. A ``mask`` shape is an image file the size of the original image
whose nonzero pixels are the ROI (PNG/JPEG, or DICOM as CBIS-DDSM ships them).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from vismae.data.preprocess import Transform

DEFAULT_POINT_RADIUS = 20  # original pixels: a point annotation marks a small disk
# OpenCV draws with fixed-point coordinates: 4 fractional bits keep sub-pixel shapes in place.
SHIFT = 4
ONE = 1 << SHIFT
# A mask file may differ from its image by a few rows (CBIS-DDSM has such pairs); more than
# this is the wrong mask.
MASK_SIZE_TOLERANCE = 0.02


def _fixed(values) -> np.ndarray:
    """Continuous coordinates -> OpenCV fixed-point pixel-centre coordinates."""
    return np.rint((np.asarray(values, dtype=np.float64) - 0.5) * ONE).astype(np.int32)


def rasterize(shapes: list[dict], height: int, width: int, point_radius: float = DEFAULT_POINT_RADIUS) -> np.ndarray:
    """Union of ROI shapes as a uint8 mask (0/255) of the given size."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes:
        kind = shape.get("type")
        if kind == "box":
            # Every pixel the box touches: a thin or small box never vanishes.
            x0, y0 = max(0, math.floor(shape["xmin"])), max(0, math.floor(shape["ymin"]))
            x1, y1 = min(width, math.ceil(shape["xmax"])), min(height, math.ceil(shape["ymax"]))
            mask[y0:y1, x0:x1] = 255
        elif kind == "polygon":
            points = _fixed(shape["points"]).reshape(-1, 1, 2)
            cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=SHIFT)
        elif kind == "ellipse":
            _draw_ellipse(mask, shape["cx"], shape["cy"], shape["rx"], shape["ry"], shape.get("theta", 0.0))
        elif kind == "point":
            radius = shape.get("radius", point_radius)
            _draw_ellipse(mask, shape["cx"], shape["cy"], radius, radius, 0.0)
        elif kind == "mask":
            mask |= read_mask_file(shape["path"], height, width)
        else:
            raise ValueError(f"ROI shape type {kind!r}: expected box, polygon, ellipse, point or mask")
    return mask


def _draw_ellipse(mask: np.ndarray, cx, cy, rx, ry, theta) -> None:
    center = tuple(int(v) for v in _fixed([cx, cy]))
    # Radii are lengths, not positions: no half-pixel shift. At least one pixel so it shows.
    axes = tuple(max(ONE // 2, int(round(abs(r) * ONE))) for r in (rx, ry))
    cv2.ellipse(mask, center, axes, math.degrees(theta), 0, 360, 255, thickness=-1, lineType=cv2.LINE_8, shift=SHIFT)


def read_mask_file(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """A mask image file -> uint8 0/255 at (height, width); nonzero pixels are the ROI."""
    from vismae.data.dicom import is_dicom  # local: dicom.py pulls in pydicom

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ROI mask file not found")
    if is_dicom(path):
        import pydicom

        pixels = pydicom.dcmread(path).pixel_array
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError(f"{path}: OpenCV cannot decode this ROI mask")
    if pixels.ndim == 3:
        pixels = pixels.max(axis=2)
    binary = (pixels != 0).astype(np.uint8) * 255
    if binary.shape != (height, width):
        mismatch = max(abs(binary.shape[0] - height) / height, abs(binary.shape[1] - width) / width)
        if mismatch > MASK_SIZE_TOLERANCE:
            raise ValueError(
                f"{path}: ROI mask is {binary.shape[1]}x{binary.shape[0]} (WxH), its image is {width}x{height}"
            )
        binary = cv2.resize(binary, (width, height), interpolation=cv2.INTER_NEAREST)
    return binary


def transform_shapes(shapes: list[dict], transform: Transform, mask_path: str = "",
                     point_radius: float = DEFAULT_POINT_RADIUS) -> list[dict]:
    """Original-coordinate shapes -> cache coordinates, in the same order.

    Boxes stay boxes (clipped to the cached image), polygons move point by point, ellipses
    move their centre, scale their radii and mirror theta on a flip; points keep the radius
    they were drawn with, scaled, as a ``radius`` key. Mask shapes were drawn
    into the cached mask, so they become one shape pointing at it: the roi column keeps
    saying that the image has an ROI.
    """
    moved: list[dict] = []
    mask_added = False
    for shape in shapes:
        kind = shape["type"]
        if kind == "box":
            corners = transform.map_points([[shape["xmin"], shape["ymin"]], [shape["xmax"], shape["ymax"]]])
            low = np.clip(corners.min(axis=0), 0, [transform.out_width, transform.out_height])
            high = np.clip(corners.max(axis=0), 0, [transform.out_width, transform.out_height])
            moved.append({**shape, "xmin": _round(low[0]), "ymin": _round(low[1]),
                          "xmax": _round(high[0]), "ymax": _round(high[1])})
        elif kind == "polygon":
            points = transform.map_points(shape["points"])
            moved.append({**shape, "points": [[_round(x), _round(y)] for x, y in points]})
        elif kind in ("ellipse", "point"):
            (cx, cy), = transform.map_points([[shape["cx"], shape["cy"]]])
            entry = {**shape, "cx": _round(cx), "cy": _round(cy)}
            if kind == "ellipse":
                theta = float(shape.get("theta", 0.0))
                entry.update(rx=_round(shape["rx"] * transform.scale_x), ry=_round(shape["ry"] * transform.scale_y),
                             theta=_round(-theta if transform.flipped else theta, 6))
            else:
                scale = (transform.scale_x + transform.scale_y) / 2
                entry["radius"] = _round(shape.get("radius", point_radius) * scale)
            moved.append(entry)
        elif kind == "mask":
            if not mask_added:
                moved.append({"type": "mask", "path": str(mask_path)})
                mask_added = True
        else:
            raise ValueError(f"ROI shape type {kind!r}: expected box, polygon, ellipse, point or mask")
    return moved


def _round(value, digits: int = 2) -> float:
    return round(float(value), digits)
