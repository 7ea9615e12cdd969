"""One view of one breast: anatomy plus findings, mirrored for right breasts.

A `Scene` holds what every format needs: the mammogram, a contrast-enhanced (subtracted)
version of it, and the findings with their exact geometry. Noise, bit depth and file format
are the writers' business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vismae.synthetic.anatomy import Anatomy, render_anatomy, smooth_noise
from vismae.synthetic.cohort import SIDES, VIEWS, Breast, Patient
from vismae.synthetic.lesions import DrawnLesion, draw_lesion

KNEE = 0.86  # brightness above which dense tissue saturates smoothly instead of clipping


@dataclass
class Scene:
    laterality: str
    view: str
    anatomy: Anatomy  # in the image's own orientation
    lesions: list[DrawnLesion]
    enhancement: float  # background parenchymal enhancement of this breast, 0..1

    @property
    def shape(self) -> tuple[int, int]:
        return self.anatomy.tissue.shape

    def mammogram(self) -> np.ndarray:
        """The presentation image, float32 in [0, 1] (bright = dense), without noise."""
        image = self.anatomy.tissue.copy()
        for lesion in self.lesions:
            image[lesion.slices()] += lesion.density
        return _saturate(image)

    def subtracted(self, rng: np.random.Generator) -> np.ndarray:
        """A recombined CESM image in [0, 1]: flat grey breast, enhancing glandular tissue and findings."""
        height, width = self.shape
        texture = 0.03 * smooth_noise(rng, (height, width), 0.02 * width)
        image = self.anatomy.breast * (0.36 + texture) + 0.22 * self.enhancement * self.anatomy.glandular
        for lesion in self.lesions:
            image[lesion.slices()] += lesion.uptake
        return _saturate(np.where(self.anatomy.breast, image, np.float32(0.04)).astype(np.float32))

    def annotated(self) -> list[DrawnLesion]:
        return [lesion for lesion in self.lesions if lesion.lesion.annotated]


def render_view(patient: Patient, breast: Breast, view: str, size: tuple[int, int], seed: int) -> Scene:
    """Draw ``view`` of ``breast``; the same arguments always give the same pixels."""
    height, width = size
    rng = image_rng(seed, patient, breast.laterality, view)
    anatomy = render_anatomy(height, width, view, patient.density, rng)
    drawn = [draw_lesion(anatomy, lesion, view) for lesion in breast.lesions]
    lesions = [lesion for lesion in drawn if lesion is not None]
    if breast.laterality == "R":  # drawn as a left breast, then mirrored: chest wall on the right
        anatomy = anatomy.flipped()
        lesions = [lesion.flipped(width) for lesion in lesions]
    # Background enhancement is a property of the breast, the same in both views.
    enhancement = np.random.default_rng([seed, patient.index, SIDES.index(breast.laterality)]).uniform(0.1, 1)
    return Scene(breast.laterality, view, anatomy, lesions, float(enhancement))


def image_rng(seed: int, patient: Patient, laterality: str, view: str, stream: int = 0):
    """The random stream of one image, independent of the order images are made in.

    Stream 0 draws the breast; writers take other streams for noise and format details.
    """
    return np.random.default_rng([seed, patient.index, SIDES.index(laterality), VIEWS.index(view), stream])


def add_noise(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Quantum noise, stronger where more photons were absorbed; result clipped to [0, 1]."""
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + amount * np.sqrt(image + 0.05) * noise, 0, 1)


def _saturate(image: np.ndarray) -> np.ndarray:
    """Compress values above the knee smoothly toward 1 (in place) and clip to [0, 1]."""
    image = np.maximum(image, 0, out=image).astype(np.float32, copy=False)
    over = image > KNEE
    image[over] = KNEE + (1 - KNEE) * np.tanh((image[over] - KNEE) / (1 - KNEE))
    return image
