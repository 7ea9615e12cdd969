"""How the (made-up) mammography units of a VinDr phantom store their images.

Real screening archives mix vendors, and each vendor stores pixels its own way. Every
variation a DICOM reader must get right appears here: MONOCHROME1 and MONOCHROME2, 12 to 16
stored bits, a rescale slope and intercept, one or several VOI windows, LINEAR and SIGMOID
VOI functions, a VOI LUT Sequence, and JPEG 2000 compression. Whatever the variant, a reader
that applies modality LUT, VOI and presentation in order gets back the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless

# Stored values use this share of the bit range, like detectors that never reach zero or full scale.
STORED_RANGE = (0.03, 0.92)
# Presentation brightness the default window spans: everything but the air.
WINDOW_SPAN = (0.02, 1.0)
# Further windows a unit may offer besides its default, as (low, high) presentation brightness.
EXTRA_WINDOWS = (((0.25, 1.0), "HARDER"), ((0.0, 1.0), "SOFTER"))


@dataclass(frozen=True)
class DetectorProfile:
    manufacturer: str
    model: str
    photometric: str
    bits_stored: int
    slope: float
    intercept: float
    windows: int  # VOI window centre/width pairs stored
    voi_function: str  # VOILUTFunction
    voi_lut: bool  # also store a VOI LUT Sequence (it takes precedence over the windows)
    presentation_lut_shape: str | None
    transfer_syntax: UID
    size_factor: tuple[float, float] = (1.0, 1.0)  # rows, columns relative to the phantom size

    def image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(2 * round(n * f / 2) for n, f in zip(size, self.size_factor))


PROFILES = (
    DetectorProfile("Phantom Imaging", "PM-100", "MONOCHROME2", 12, 1.0, 0.0, 1, "LINEAR", False,
                    "IDENTITY", ExplicitVRLittleEndian),
    DetectorProfile("Phantom Imaging", "PM-200", "MONOCHROME1", 14, 1.0, 0.0, 3, "LINEAR", False,
                    "INVERSE", JPEG2000Lossless),
    DetectorProfile("Example Medical", "EX-3", "MONOCHROME2", 16, 0.5, 100.0, 2, "SIGMOID", False,
                    None, ExplicitVRLittleEndian, size_factor=(1.018, 0.929)),
    DetectorProfile("Example Medical", "EX-4", "MONOCHROME2", 13, 1.0, 0.0, 1, "LINEAR", True,
                    "IDENTITY", ExplicitVRLittleEndian),
    DetectorProfile("Sample Systems", "SS-5", "MONOCHROME1", 15, 1.0, -1000.0, 1, "SIGMOID", False,
                    None, ExplicitVRLittleEndian),
)


def modality_value(profile: DetectorProfile, brightness):
    """The modality value (after rescale) a unit stores for a presentation brightness in [0, 1].

    MONOCHROME1 stores dense tissue as low values, so its mapping runs the other way.
    """
    top = 2**profile.bits_stored - 1
    low, high = (round(fraction * top) for fraction in STORED_RANGE)
    if profile.photometric == "MONOCHROME1":
        stored = high - brightness * (high - low)
    else:
        stored = low + brightness * (high - low)
    return profile.slope * stored + profile.intercept


def windows(profile: DetectorProfile) -> list[tuple[float, float, str]]:
    """The unit's VOI windows as (centre, width, explanation), the default first."""
    spans = [(WINDOW_SPAN, "NORMAL"), *EXTRA_WINDOWS][: profile.windows]
    result = []
    for (start, stop), name in spans:
        first, last = modality_value(profile, start), modality_value(profile, stop)
        result.append((round((first + last) / 2, 1), round(abs(last - first), 1), name))
    return result


def encode(image: np.ndarray, profile: DetectorProfile, ds: Dataset) -> np.ndarray:
    """Stored values for a presentation ``image`` in [0, 1]; sets the matching rescale and VOI
    attributes on ``ds``."""
    stored = (modality_value(profile, image) - profile.intercept) / profile.slope
    ds.RescaleSlope = f"{profile.slope:g}"
    ds.RescaleIntercept = f"{profile.intercept:g}"
    ds.RescaleType = "US"
    centres, widths, names = zip(*windows(profile))
    ds.WindowCenter = list(centres) if len(centres) > 1 else centres[0]
    ds.WindowWidth = list(widths) if len(widths) > 1 else widths[0]
    ds.WindowCenterWidthExplanation = list(names) if len(names) > 1 else names[0]
    ds.VOILUTFunction = profile.voi_function
    if profile.voi_lut:
        first, last = round(modality_value(profile, 0)), round(modality_value(profile, 1))
        ds.VOILUTSequence = [_voi_lut_item(first, last)]
    if profile.presentation_lut_shape:
        ds.PresentationLUTShape = profile.presentation_lut_shape
    return np.round(stored).astype(np.uint16)


def _voi_lut_item(first: int, last: int) -> Dataset:
    """A 16-bit VOI LUT over modality values ``first``..``last``: a gentle S curve, monotone.

    It rises with the modality value whatever the photometric interpretation, as VOI output
    keeps the stored polarity (MONOCHROME1 is inverted afterwards, at presentation).
    """
    low, high = sorted((first, last))
    position = np.linspace(0, 1, high - low + 1)
    curve = 0.5 - 0.5 * np.cos(np.pi * position) * 0.6 + (position - 0.5) * 0.4
    item = Dataset()
    item.LUTDescriptor = [len(position), low, 16]
    item.LUTExplanation = "PHANTOM S-CURVE"
    # LUT Data as OW: a US value list cannot hold more than 32767 entries in explicit VR.
    item.add_new(0x00283006, "OW", np.round(curve * 65535).astype("<u2").tobytes())
    return item
