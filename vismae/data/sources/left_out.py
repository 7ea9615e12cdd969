"""What a reader left out, and why: a CSV beside the manifest and one summary line.

Readers that sift a whole download (a folder of clinical DICOMs, RSNA's extra views) do not
stop at a file they cannot use: they name it in the report with a short reason and count the
reasons in the summary they log. Reasons never carry a header value that could identify a
patient, only the kind of problem (``view ML``, ``modality CT``, ``not a DICOM file``).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from vismae.io import atomic_path

COLUMNS = ["path", "reason"]


def report_beside(manifest: Path) -> Path:
    """``manifests/x.csv`` -> ``manifests/x_left_out.csv``."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}_left_out.csv")


def write_report(path: Path, left_out: list[tuple[str, str]]) -> Path:
    """One ``path, reason`` row per left-out file (written even when empty, so that a rerun
    never leaves an earlier run's report behind)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(left_out)
    return Path(path)


def count_reasons(left_out: list[tuple[str, str]]) -> str:
    """``3 view ML, 1 not a DICOM file`` (most frequent first), or ``nothing``. A reason's
    detail after ``": "`` (such as the other file of a duplicate) is in the report only."""
    counts = Counter(reason.split(": ", 1)[0] for _, reason in left_out)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common()) or "nothing"
