"""Decode a mammogram file to a float image in [0, 1], where 1 is bright (dense tissue).

DICOM follows the standard's grayscale pipeline: stored values -> Modality LUT (rescale) ->
VOI (VOI LUT Sequence, else the first window centre/width) -> presentation (MONOCHROME1 or
Presentation LUT Shape INVERSE are inverted). pydicom does the Modality and VOI steps; this
module adds what it leaves out: scaling the VOI output to [0, 1], the inversion, a percentile
window for files that carry none (scanned film such as CBIS-DDSM), and pixel padding.

PNG and JPEG (8- or 16-bit) are read with OpenCV and scaled by their type's maximum.

Error messages name the file, never a patient: identifying attributes are not read out.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

DICOM_SUFFIXES = (".dcm", ".dicom")
# Percentiles of the breast pixels that map to black and white when a file has no window.
PERCENTILE_WINDOW = (0.5, 99.5)
MAX_TABLE = 2**20


class DicomError(ValueError):
    """A DICOM file this pipeline cannot or should not turn into an image."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a .dcm/.dicom name or a file with the 'DICM' marker after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def read_image(path: str | os.PathLike, allow_for_processing: bool = False) -> np.ndarray:
    """Any supported mammogram file -> float32 image in [0, 1], 1 = bright."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if is_dicom(path):
        return read_dicom(path, allow_for_processing=allow_for_processing)
    return read_raster(path)


def read_raster(path: str | os.PathLike) -> np.ndarray:
    """PNG/JPEG/TIFF (8- or 16-bit, gray or colour) -> float32 gray image in [0, 1]."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image")
    if pixels.ndim == 3:
        # Colour-saved mammograms (e.g. JPEG exports) are gray in all channels.
        conversion = cv2.COLOR_BGRA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        pixels = cv2.cvtColor(pixels, conversion)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: pixel type {pixels.dtype}, expected 8- or 16-bit unsigned")
    return pixels.astype(np.float32) / np.iinfo(pixels.dtype).max


def read_dicom(path: str | os.PathLike, allow_for_processing: bool = False) -> np.ndarray:
    """A DICOM mammogram -> float32 image in [0, 1], 1 = bright (dense tissue)."""
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises several types for unreadable files
        raise DicomError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    _check_presentable(dataset, path, allow_for_processing)
    try:
        stored = dataset.pixel_array
    except Exception as error:  # missing decoder plugin, truncated or corrupt pixel data
        raise DicomError(f"{path}: cannot decode pixel data ({type(error).__name__}: {error})") from None
    if stored.ndim != 2:
        raise DicomError(f"{path}: pixel data has shape {stored.shape}, expected one 2-D frame")
    return dicom_to_display(stored, dataset, path)


def dicom_to_display(stored: np.ndarray, dataset: pydicom.Dataset, source="DICOM") -> np.ndarray:
    """Stored values of ``dataset`` -> float32 in [0, 1] through the grayscale pipeline."""
    invert = _is_inverted(dataset, source)
    padding = _padding_mask(stored, dataset)
    # Every step depends on the stored value alone, so run it once over each value between the
    # image's minimum and maximum (at most 65536 for 16 bits) and look the pixels up in that
    # table: the same result as on ten million pixels, many times faster.
    low, high = int(stored.min()), int(stored.max())
    if high - low > MAX_TABLE:
        raise DicomError(f"{source}: stored values span {low}..{high}, more than 20 bits")
    index = np.subtract(stored, low, dtype=np.int32)
    values = apply_modality_lut(np.arange(low, high + 1), dataset)
    if _has_voi_lut(dataset):
        table = _scaled_voi_lut(values, dataset)
    elif _has_window(dataset):
        table = _scaled_window(values, dataset)
    else:
        sample = index[::4, ::4]  # every 16th pixel is plenty for two percentiles
        if padding is not None:
            sample = sample[~padding[::4, ::4]]
        window_low, window_high = percentile_window(values[sample.ravel()], invert)
        table = np.clip((values - window_low) / (window_high - window_low), 0.0, 1.0)
    if invert:
        table = 1.0 - table
    image = table.astype(np.float32)[index]
    if padding is not None:
        # Padding is "no image here": keep it black like the air around the breast.
        image[padding] = 0.0
    return image


def _check_presentable(dataset: pydicom.Dataset, path, allow_for_processing: bool) -> None:
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: PhotometricInterpretation {photometric!r}, expected MONOCHROME1 or MONOCHROME2")
    intent = str(dataset.get("PresentationIntentType", "")).strip().upper()
    if intent == "FOR PROCESSING" and not allow_for_processing:
        raise DicomError(
            f"{path}: PresentationIntentType is FOR PROCESSING (raw detector data, not a "
            "mammogram for viewing); skipped unless for-processing images are allowed"
        )


def _is_inverted(dataset: pydicom.Dataset, source) -> bool:
    if "PresentationLUTSequence" in dataset:
        raise DicomError(f"{source}: an explicit Presentation LUT Sequence is not supported")
    shape = str(dataset.get("PresentationLUTShape", "")).strip().upper()
    # In MG/DX objects MONOCHROME1 comes with shape INVERSE: both say the same, invert once.
    return dataset.PhotometricInterpretation == "MONOCHROME1" or shape == "INVERSE"


def _has_voi_lut(dataset: pydicom.Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _has_window(dataset: pydicom.Dataset) -> bool:
    return dataset.get("WindowCenter") not in (None, "") and dataset.get("WindowWidth") not in (None, "")


def _scaled_voi_lut(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """First VOI LUT of the file, scaled by the LUT's own range to [0, 1]."""
    entries, first_mapped, _ = dataset.VOILUTSequence[0].LUTDescriptor
    entries = entries or 2**16
    # The LUT's actual extremes, not its nominal bit depth: vendors often declare 16-bit
    # entries and fill only 12 bits of them.
    table = apply_voi(np.arange(first_mapped, first_mapped + entries), dataset)
    low, high = float(table.min()), float(table.max())
    output = apply_voi(np.rint(values).astype(np.int64), dataset).astype(np.float64)
    return (output - low) / max(high - low, 1.0)


def _scaled_window(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """First window (LINEAR, LINEAR_EXACT or SIGMOID) of the file, scaled to [0, 1]."""
    # pydicom maps into the stored (or rescaled) value range; ask it for the two ends of
    # that range rather than re-deriving its rules for signedness, rescale and LUTs.
    low, high = apply_windowing(np.array([-np.inf, np.inf]), dataset)
    output = apply_windowing(values, dataset)
    return (output - low) / (high - low)


def percentile_window(values: np.ndarray, invert: bool = False,
                      percentiles: tuple[float, float] = PERCENTILE_WINDOW) -> tuple[float, float]:
    """(low, high) window over the breast pixels among ``values`` (for files with no window).

    The background is the extreme value that air takes (the minimum, or the maximum when the
    image is inverted); it is left out so the window fits the breast, not the air.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0, 1.0
    background = values.max() if invert else values.min()
    tissue = values[values != background]
    if tissue.size < 0.01 * values.size:  # next to no tissue: use everything
        tissue = values
    low, high = (float(v) for v in np.percentile(tissue, percentiles))
    return low, max(high, low + 1e-6)


def _padding_mask(stored: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray | None:
    """Pixels marked as padding by Pixel Padding Value (and Range Limit), or None."""
    value = dataset.get("PixelPaddingValue")
    if value is None:
        return None
    limit = dataset.get("PixelPaddingRangeLimit", value)
    low, high = sorted((int(value), int(limit)))
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None
