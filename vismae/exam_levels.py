"""From images to breasts to exams: how one probability per image becomes one per breast and
one per screening exam.

A breast is the images of one exam and one side: its probability is the mean of its views'
(CC and MLO see the same tissue from two angles; neither is trusted over the other). An exam is
its breasts: its probability is the highest of theirs (a woman is recalled when either breast
looks malignant). A truth, where there is one, follows the same roles: a breast is positive when
any of its images is, an exam when any of its breasts is.

An exam is the manifest's ``study_id``; a row without one counts as its patient's only exam.
Every aggregated row says how many views it rests on, so an exam missing a view still gets an
answer and a reader can see that it did.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

LEVELS = ("image", "breast", "exam")
# The columns an images table needs; ``target`` and further score columns are optional.
IMAGE_COLUMNS = ("image_id", "patient_id", "study_id", "laterality", "view")


def exam_ids(images: pd.DataFrame) -> pd.Series:
    """Each image's exam: its ``study_id``, or its ``patient_id`` where the study is not known."""
    study = images["study_id"].fillna("").astype(str)
    return study.where(study.str.strip() != "", images["patient_id"].astype(str))


def _check(images: pd.DataFrame, scores: Sequence[str]) -> None:
    missing = [column for column in (*IMAGE_COLUMNS, *scores) if column not in images.columns]
    if missing:
        raise ValueError(f"the images table lacks columns {missing}; it needs {list(IMAGE_COLUMNS)} and the scores {list(scores)}")


def _joined(frame: pd.DataFrame, keys: list[str], column: str) -> pd.Series:
    """Per group of ``keys``: the distinct values of ``column``, sorted, joined by "+"."""
    distinct = frame[keys + [column]].astype({column: str}).drop_duplicates().sort_values(column)
    return distinct.groupby(keys, sort=True)[column].agg("+".join)


def breasts(images: pd.DataFrame, scores: Sequence[str] = ("probability",)) -> pd.DataFrame:
    """One row per exam and side: ``exam_id, patient_id, laterality``, each score column
    averaged over the side's views, ``n_views``, ``views`` (``CC+MLO``) and ``target`` (the
    highest of its images') when the images have one."""
    _check(images, scores)
    frame = images.assign(exam_id=exam_ids(images))
    grouped = frame.groupby(["exam_id", "laterality"], sort=True)
    table = grouped.agg(
        patient_id=("patient_id", "first"),
        **{score: (score, "mean") for score in scores},
        n_views=("image_id", "size"),
    )
    table["views"] = _joined(frame, ["exam_id", "laterality"], "view")
    if "target" in frame.columns:
        table["target"] = grouped["target"].max()
    return table.reset_index()[_columns(["exam_id", "patient_id", "laterality"], scores, table, ["n_views", "views"])]


def exams(images: pd.DataFrame, scores: Sequence[str] = ("probability",)) -> pd.DataFrame:
    """One row per exam: each score column the highest of its breasts' (means of views),
    ``n_breasts``, ``n_views``, ``breasts`` (``L+R``) and ``target`` when the images have one."""
    sides = breasts(images, scores)
    grouped = sides.groupby("exam_id", sort=True)
    table = grouped.agg(
        patient_id=("patient_id", "first"),
        **{score: (score, "max") for score in scores},
        n_breasts=("laterality", "size"),
        n_views=("n_views", "sum"),
    )
    table["breasts"] = _joined(sides, ["exam_id"], "laterality")
    if "target" in sides.columns:
        table["target"] = grouped["target"].max()
    return table.reset_index()[_columns(["exam_id", "patient_id"], scores, table, ["n_breasts", "n_views", "breasts"])]


def _columns(keys: list[str], scores: Sequence[str], table: pd.DataFrame, counts: list[str]) -> list[str]:
    return keys + list(scores) + counts + (["target"] if "target" in table.columns else [])


def level_table(images: pd.DataFrame, level: str, scores: Sequence[str] = ("probability",)) -> pd.DataFrame:
    """The images table itself, or its breasts or exams."""
    if level == "image":
        _check(images, scores)
        return images.reset_index(drop=True)
    if level == "breast":
        return breasts(images, scores)
    if level == "exam":
        return exams(images, scores)
    raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
