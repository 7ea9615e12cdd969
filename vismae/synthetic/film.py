"""The look of a digitised screen-film mammogram (CBIS-DDSM): grainy, low contrast, with bright
unexposed film edges and a burned-in view label, both away from the breast so that a breast
crop (largest bright region) removes them."""

from __future__ import annotations

import cv2
import numpy as np

from vismae.synthetic.anatomy import smooth_noise

BASE_FOG = 0.07  # film base plus fog: the scanned background is dark grey, not black
FILM_RANGE = 0.8
EDGE = 0.95  # unexposed film scans nearly white


def scanned_film(image: np.ndarray, laterality: str, view: str, rng: np.random.Generator) -> np.ndarray:
    """A 16-bit scan of ``image`` (presentation brightness in [0, 1]) as film of the given view."""
    height, width = image.shape
    film = BASE_FOG + FILM_RANGE * image ** 1.2
    film += 0.015 * smooth_noise(rng, image.shape, 0.2 * width)  # uneven development
    film += 0.012 * rng.standard_normal(image.shape, dtype=np.float32)  # grain
    # Everything is placed on the side away from the chest wall (the right of a left breast).
    far_left = laterality == "R"
    strip = max(2, round(rng.uniform(0.015, 0.03) * width))
    columns = slice(0, strip) if far_left else slice(width - strip, width)
    film[:, columns] = EDGE + 0.01 * rng.standard_normal((height, strip))
    band = max(2, round(rng.uniform(0.012, 0.022) * height))
    columns = slice(0, round(0.42 * width)) if far_left else slice(round(0.58 * width), width)
    film[height - band:, columns] = EDGE
    _burn_label(film, f"{'LEFT' if laterality == 'L' else 'RIGHT'} {view}", far_left, rng)
    return np.round(np.clip(film, 0, 1) * 65535).astype(np.uint16)


def _burn_label(film: np.ndarray, text: str, far_left: bool, rng) -> None:
    """Print ``text`` near the top corner away from the chest wall, in a quarter of the width."""
    height, width = film.shape
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_width, text_height), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(0.25 * width / text_width, 0.035 * height / text_height)
    thickness = max(1, round(2 * scale))
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    margin = round(0.06 * width)
    x = margin if far_left else width - margin - text_width
    y = round(rng.uniform(0.03, 0.05) * height) + text_height
    ink = np.zeros(film.shape, np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(ink, text, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    np.maximum(film, ink * np.float32((EDGE + 0.04) / 255), out=film)
