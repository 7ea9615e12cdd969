"""Images -> breasts -> exams: mean of views, max of breasts, counts of what each rests on."""

import pandas as pd
import pytest

from vismae.exam_levels import breasts, exam_ids, exams, level_table


def images() -> pd.DataFrame:
    rows = [
        # exam s1: both breasts, all four views
        ("a", "p1", "s1", "L", "CC", 0.2, 0),
        ("b", "p1", "s1", "L", "MLO", 0.4, 0),
        ("c", "p1", "s1", "R", "CC", 0.9, 1),
        ("d", "p1", "s1", "R", "MLO", 0.5, 0),
        # exam s2 misses its right MLO and has no left breast at all
        ("e", "p2", "s2", "R", "CC", 0.7, 1),
        # no study id: the patient stands for the exam
        ("f", "p3", "", "L", "CC", 0.1, 0),
        ("g", "p3", "", "L", "MLO", 0.3, 0),
    ]
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "study_id", "laterality", "view", "probability", "target"])


def test_a_breast_is_the_mean_of_its_views_and_says_how_many():
    table = breasts(images()).set_index(["exam_id", "laterality"])
    assert table.loc[("s1", "L"), "probability"] == pytest.approx(0.3)
    assert table.loc[("s1", "R"), "probability"] == pytest.approx(0.7)
    assert table.loc[("s1", "R"), "target"] == 1  # one malignant view makes the breast malignant
    assert table.loc[("s2", "R"), ["n_views", "views"]].tolist() == [1, "CC"]
    assert table.loc[("s1", "L"), "views"] == "CC+MLO"
    assert table.loc[("p3", "L"), "probability"] == pytest.approx(0.2)


def test_an_exam_is_the_max_of_its_breasts_even_with_views_missing():
    table = exams(images()).set_index("exam_id")
    assert table.loc["s1", "probability"] == pytest.approx(0.7)  # max of the breast means 0.3 and 0.7, not of the images
    assert table.loc["s1", ["n_breasts", "n_views", "breasts", "target"]].tolist() == [2, 4, "L+R", 1]
    assert table.loc["s2", ["probability", "n_breasts", "n_views", "breasts"]].tolist() == [0.7, 1, 1, "R"]
    assert table.loc["p3", "patient_id"] == "p3"
    assert len(table) == 3


def test_other_score_columns_aggregate_alike_and_targets_are_optional():
    frame = images().drop(columns="target").assign(other=lambda f: 1 - f["probability"])
    table = exams(frame, scores=("probability", "other")).set_index("exam_id")
    assert "target" not in table
    assert table.loc["s1", "other"] == pytest.approx(0.7)  # max over breasts of mean(1 - p): left 0.7, right 0.3


def test_exam_ids_fall_back_to_the_patient_and_levels_are_named():
    assert exam_ids(images()).tolist()[-2:] == ["p3", "p3"]
    assert len(level_table(images(), "image")) == 7
    with pytest.raises(ValueError, match="unknown level"):
        level_table(images(), "patient")
    with pytest.raises(ValueError, match="lacks columns"):
        breasts(images().drop(columns="study_id"))
