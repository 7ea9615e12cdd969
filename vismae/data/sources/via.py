"""Regions of a VGG Image Annotator (VIA) CSV export as manifest ROI shapes.

VIA writes one row per region with the geometry as JSON in ``region_shape_attributes``;
an image without a region has one row whose attributes are ``{}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from vismae.data.sources.tables import SourceError, read_csv, where

REQUIRED = ("#filename", "region_shape_attributes")


def _numbers(attributes: dict, *keys: str) -> list[float]:
    missing = [key for key in keys if key not in attributes]
    if missing:
        raise ValueError(f"a {attributes['name']} region lacks {', '.join(missing)}")
    try:
        return [float(attributes[key]) for key in keys]
    except (TypeError, ValueError):
        raise ValueError(f"a {attributes['name']} region has a non-numeric {', '.join(keys)}") from None


def _points(attributes: dict) -> list[list[float]]:
    xs, ys = (attributes.get(key) for key in ("all_points_x", "all_points_y"))
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs:
        raise ValueError(f"a {attributes['name']} region needs all_points_x and all_points_y of equal length")
    return [[float(x), float(y)] for x, y in zip(xs, ys)]


def shape(attributes: dict) -> dict | None:
    """The manifest shape of one VIA region, or None for ``{}`` (no region)."""
    if not attributes:
        return None
    kind = attributes.get("name")
    if kind in ("polygon", "polyline"):
        # A polyline outlines a lesion as well as a polygon does; the manifest closes it.
        points = _points(attributes)
        if len(points) == 1:
            return {"type": "point", "cx": points[0][0], "cy": points[0][1]}
        return {"type": "polygon", "points": points}
    if kind == "ellipse":
        cx, cy, rx, ry = _numbers(attributes, "cx", "cy", "rx", "ry")
        theta = float(attributes.get("theta", 0.0) or 0.0)
        return {"type": "ellipse", "cx": cx, "cy": cy, "rx": rx, "ry": ry, "theta": theta}
    if kind == "circle":
        cx, cy, r = _numbers(attributes, "cx", "cy", "r")
        return {"type": "ellipse", "cx": cx, "cy": cy, "rx": r, "ry": r, "theta": 0.0}
    if kind == "point":
        cx, cy = _numbers(attributes, "cx", "cy")
        return {"type": "point", "cx": cx, "cy": cy}
    if kind == "rect":
        x, y, width, height = _numbers(attributes, "x", "y", "width", "height")
        return {"type": "box", "xmin": x, "ymin": y, "xmax": x + width, "ymax": y + height}
    raise ValueError(f"region shape {kind!r} is not one of polygon, polyline, ellipse, circle, point, rect")


def read_regions(path: Path, key=lambda filename: filename) -> dict[str, list[dict]]:
    """``key(filename)`` -> the file's shapes (an empty list for a ``{}`` row)."""
    table = read_csv(path, REQUIRED)
    regions: dict[str, list[dict]] = {}
    for index, record in enumerate(table.to_dict("records")):
        text = record["region_shape_attributes"].strip() or "{}"
        try:
            attributes = json.loads(text)
            if not isinstance(attributes, dict):
                raise ValueError("expected a JSON object")
            region = shape(attributes)
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            raise SourceError(f"{where(path, index, 'region_shape_attributes')}: {error}") from None
        shapes = regions.setdefault(key(record["#filename"]), [])
        if region is not None:
            shapes.append(region)
    return regions
