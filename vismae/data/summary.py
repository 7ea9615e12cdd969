"""The counts the papers report about a manifest, as one plain dict (JSON-ready).

Tables follow the ROI paper's layout: rows ``malignant``, ``benign`` and their ``total``
(the classification images, as its Tables 1-4 count them), then ``normal`` and ``unknown``
(kept for pretraining) and ``all``. Columns are splits, ROI presence or views, and ``total``.
A CDD-CESM manifest built with the paper split gives Table 3 (300 + 31 of each class) as
``by_split`` and Table 4 as ``by_roi``. ``image_kinds`` counts DM and CESM images (``unknown``
where the manifest does not say), so that a mix of the two shows before any model is trained.
"""

from __future__ import annotations

import pandas as pd

from vismae.data.manifest import SPLITS, VIEW_NAMES, image_kind_counts, view_names

CLASSES = ("malignant", "benign")  # the papers' row order
OTHERS = ("normal", "unknown")
ROWS = (*CLASSES, "total", *OTHERS, "all")


def _table(labels: pd.Series, columns: pd.Series, names) -> dict:
    """Counts of label x column value, with the papers' total rows and a total column."""
    counts = pd.crosstab(labels, columns)
    table = {}
    for row in ROWS:
        if row == "total":
            members = CLASSES
        elif row == "all":
            members = CLASSES + OTHERS
        else:
            members = (row,)
        present = [label for label in members if label in counts.index]
        cells = {name: int(counts.loc[present, name].sum()) if name in counts.columns else 0 for name in names}
        cells["total"] = sum(cells.values())
        table[row] = cells
    return table


def summarize(frame: pd.DataFrame) -> dict:
    """Images, patients and the split / ROI / view tables of a manifest frame."""
    roi = frame["has_roi"].map({True: "with_roi", False: "without_roi"})
    patients = frame.groupby("split")["patient_id"].nunique()
    return {
        "images": len(frame),
        "patients": int(frame["patient_id"].nunique()),
        "studies": int(frame["study_id"].nunique()),
        "datasets": {str(name): int(n) for name, n in frame["dataset"].value_counts().sort_index().items()},
        "image_kinds": image_kind_counts(frame),
        "patients_by_split": {split: int(patients.get(split, 0)) for split in SPLITS},
        "by_split": _table(frame["label"], frame["split"], SPLITS),
        "by_roi": _table(frame["label"], roi, ("with_roi", "without_roi")),
        "by_view": _table(frame["label"], view_names(frame), VIEW_NAMES),
    }
