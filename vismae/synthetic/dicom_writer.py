"""Valid DICOM files from a pixel array: file meta, UIDs, pixel module, optional compression.

`write_dicom` writes one file in a call, with any further attributes by keyword (tests and
benchmarks use it); the phantom formats build theirs from `new_dataset`, `set_pixels` and
`save`, the same steps it takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, UID, generate_uid

IMPLEMENTATION_CLASS_UID = "2.25.150773591860592135151311961227338296321"  # made-up, fixed


def uid_from_hex(hex_id: str) -> str:
    """A valid UID for a 128-bit hex id (the UUID-derived "2.25." form), reproducible."""
    return f"2.25.{int(hex_id, 16)}"


def new_dataset(sop_class: str, sop_instance: str, study: str, series: str) -> Dataset:
    """An image dataset with its file meta information, little-endian explicit VR."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = UID(study)
    ds.SeriesInstanceUID = UID(series)
    ds.InstanceNumber = 1
    ds.SeriesNumber = 1
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2") -> None:
    """Store an unsigned single-frame greyscale image (uint8 or uint16)."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8 or uint16 image, got {pixels.dtype} {pixels.shape}")
    if int(pixels.max(initial=0)) >= 2**bits_stored:
        raise ValueError(f"pixel values exceed BitsStored={bits_stored}")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def save(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> None:
    """Write ``ds`` as a DICOM file (preamble and file meta), compressing it if asked."""
    if transfer_syntax != ExplicitVRLittleEndian:
        # Lossless syntaxes only (RLE, JPEG 2000 lossless): decoded pixels equal the array stored.
        # Keep our reproducible SOP Instance UID (pydicom would make a random new one).
        ds.compress(transfer_syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = DigitalMammographyXRayImageStorageForPresentation,
    **attributes,
) -> Path:
    """Write ``pixels`` (stored values, uint8 or uint16; MONOCHROME1 ones already inverted) as
    one DICOM file with new UIDs; ``attributes`` are DICOM keywords set last, so they may
    override anything (``WindowCenter=2000``, ``PatientName="Doe^Jane"``, ``VOILUTSequence=[...]``).
    ``bits_stored`` defaults to the whole pixel type; ``transfer_syntax`` may be a lossless
    compressed one (RLE, JPEG 2000 lossless)."""
    unknown = [keyword for keyword in attributes if tag_for_keyword(keyword) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    path = Path(path)
    ds = new_dataset(sop_class, generate_uid(), generate_uid(), generate_uid())
    set_pixels(ds, pixels, bits_stored or pixels.dtype.itemsize * 8, photometric)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    save(ds, path, transfer_syntax)
    return path
