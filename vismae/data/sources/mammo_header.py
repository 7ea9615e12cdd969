"""What a DICOM header says about a file: a screening mammogram to keep, or why not.

Kept: modality MG, one frame, FOR PRESENTATION (FOR PROCESSING only when allowed), a
cranio-caudal or medio-lateral oblique view of the left or right breast. The view comes from
ViewPosition, else from the View Code Sequence (SNOMED CT or the older SNOMED-RT codes, else
the code meaning); laterality from ImageLaterality, else Laterality. Any other view, and a
view with a modifier (spot compression, magnification, rolled ...) other than implant
displaced, is left out: the models are trained on the four standard screening views.

A file whose header ends before any pixel data (cut short, damaged) is left out here;
pixel data that is itself damaged is found later, by ``prepare``.

:func:`inspect` runs in worker processes, so this module imports nothing heavy. Reasons name
the kind of problem and a non-identifying value at most (``view ML``, ``modality CT``); never
a patient attribute, nor an exception's message, which can quote header bytes.
"""

from __future__ import annotations

import os
import re

import pydicom
from pydicom.errors import InvalidDicomError

# The attributes read. Parsing is not restricted to them (pydicom's specific_tags): on
# mammography headers that measured slower, not faster (docs/benchmarks.md).
TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
    "PresentationIntentType", "NumberOfFrames", "ViewPosition", "ViewCodeSequence",
    "ImageLaterality", "Laterality",
]
# SNOMED CT and SNOMED-RT codes of DICOM's mammography views (CID 4014).
VIEW_CODES = {"399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO"}
VIEW_MEANINGS = {"craniocaudal": "CC", "mediolateraloblique": "MLO"}
KEPT_VIEWS = ("CC", "MLO")
KEPT_MODIFIERS = ("implantdisplaced",)  # the standard screening views of a breast with an implant
LATERALITIES = ("L", "R")
FOR_PROCESSING_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)
NOT_DICOM = "not a DICOM file"


def inspect(path: str, allow_for_processing: bool = False) -> tuple[str, dict | None, str | None]:
    """``(path, fields, None)`` for a mammogram to keep, else ``(path, None, reason)``.

    ``fields`` holds the raw ids (PatientID, StudyInstanceUID, SOPInstanceUID), view and
    laterality; the caller turns the ids into pseudonyms.
    """
    try:
        with open(path, "rb") as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True)
            # Parsing stops at the pixel data; a damaged or truncated file ends before it.
            has_pixels = handle.tell() < os.fstat(handle.fileno()).st_size
    except InvalidDicomError:
        return path, None, NOT_DICOM
    except OSError as error:
        return path, None, f"cannot read the file ({type(error).__name__})"
    except Exception as error:  # pydicom raises many types on a damaged header
        return path, None, f"unreadable DICOM header ({type(error).__name__})"
    try:
        # pydicom converts values on first access, so a damaged value raises only here.
        fields, reason = classify(header, allow_for_processing, has_pixels)
    except Exception as error:
        return path, None, f"unreadable DICOM header ({type(error).__name__})"
    return path, fields, reason


def _text(dataset, keyword: str) -> str:
    value = dataset.get(keyword, "") if dataset is not None else ""
    return str(value or "").strip()


def _squeezed(meaning: str) -> str:
    return re.sub(r"[\s_\-]+", "", meaning).lower()


def _first_item(dataset, keyword: str):
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _coded_view(code) -> str:
    """CC or MLO for their codes or meanings, else the code meaning (or value) itself."""
    value, meaning = _text(code, "CodeValue"), _text(code, "CodeMeaning")
    if value in VIEW_CODES:
        return VIEW_CODES[value]
    return VIEW_MEANINGS.get(_squeezed(meaning), meaning or value)


def view_of(header) -> tuple[str, list[str]]:
    """The view (ViewPosition, else coded) and the meanings of its modifiers."""
    code = _first_item(header, "ViewCodeSequence")
    view = _text(header, "ViewPosition").upper()
    if not view and code is not None:
        view = _coded_view(code)
    modifiers = []
    for modifier in (code.get("ViewModifierCodeSequence") or []) if code is not None else []:
        modifiers.append(_text(modifier, "CodeMeaning") or _text(modifier, "CodeValue") or "unnamed")
    return view, modifiers


def classify(header, allow_for_processing: bool = False, has_pixels: bool = True) -> tuple[dict | None, str | None]:
    """``(fields, None)`` for a mammogram to keep, else ``(None, reason)``."""
    modality = _text(header, "Modality").upper()
    if modality and modality != "MG":
        return None, f"modality {modality}"
    if not has_pixels:
        return None, "no pixel data (file truncated or damaged, or not an image)"
    if not modality:
        return None, "no modality"
    frames = int(header.get("NumberOfFrames") or 1)
    if frames > 1:
        return None, "multi-frame image (tomosynthesis or a series)"
    sop_class = _text(header, "SOPClassUID") or _text(getattr(header, "file_meta", None), "MediaStorageSOPClassUID")
    intent = _text(header, "PresentationIntentType").upper()
    if (intent == "FOR PROCESSING" or sop_class in FOR_PROCESSING_CLASSES) and not allow_for_processing:
        return None, "FOR PROCESSING (raw detector data)"
    view, modifiers = view_of(header)
    if not view:
        return None, "no view (ViewPosition, View Code Sequence)"
    if view not in KEPT_VIEWS:
        return None, f"view {view}"
    unusual = [m for m in modifiers if _squeezed(m) not in KEPT_MODIFIERS]
    if unusual:
        return None, f"view {view} with {', '.join(unusual)}"
    laterality = _text(header, "ImageLaterality").upper() or _text(header, "Laterality").upper()
    if laterality not in LATERALITIES:
        return None, f"laterality {laterality}" if laterality else "no laterality (ImageLaterality, Laterality)"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
        if not _text(header, keyword):
            return None, f"no {keyword}"
    return {
        "patient": _text(header, "PatientID"),
        "study": _text(header, "StudyInstanceUID"),
        "instance": _text(header, "SOPInstanceUID"),
        "view": view,
        "laterality": laterality,
    }, None
