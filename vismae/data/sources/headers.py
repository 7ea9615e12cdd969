"""DICOM headers without pixels: readers need a few attributes and must stay fast."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError


def read_header(path: Path, tags: list[str]):
    """The named attributes of a DICOM file (pixels skipped), or None when it is no DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError:
        return None


def text(header, keyword: str) -> str:
    """An attribute as stripped upper-case text; empty when absent."""
    value = header.get(keyword, "") if header is not None else ""
    return str(value or "").strip().upper()
