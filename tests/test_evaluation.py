"""Operating points, probabilistic F1 and level reports with patient-level intervals."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_curve

from vismae.evaluation import (
    best_binarized_pf1,
    binarized_pf1,
    evaluate_levels,
    fit_on_validation,
    level_numbers,
    probabilistic_f1,
)


def scored(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.random(n) * 0.6 + 0.3 * y, 2)  # rounded: many ties


def test_operating_points_match_the_roc_curve():
    y, s = scored()
    fpr, tpr, _ = roc_curve(y, s)
    numbers = level_numbers(y, s)
    assert numbers["sensitivity_at_90_specificity"] == pytest.approx(tpr[fpr <= 0.1].max())
    assert numbers["specificity_at_90_sensitivity"] == pytest.approx((1 - fpr[tpr >= 0.9]).max())
    one_class = level_numbers(np.ones(4), [0.1, 0.2, 0.3, 0.4])
    assert np.isnan(one_class["sensitivity_at_90_specificity"]) and np.isnan(one_class["specificity_at_90_sensitivity"])


def test_probabilistic_f1_on_a_hand_example():
    # soft TP = 0.8 + 0.6 = 1.4, soft FP = 0.2 + 0.4 = 0.6, 2 positives:
    # precision 1.4 / 2.0 = 0.7, recall 1.4 / 2 = 0.7, pF1 0.7
    assert probabilistic_f1([1, 1, 0, 0], [0.8, 0.6, 0.2, 0.4]) == pytest.approx(0.7)
    assert probabilistic_f1([1, 0], [0.0, 0.5]) == 0.0
    assert np.isnan(probabilistic_f1([0, 0], [0.1, 0.2]))
    # Binarized probabilities make pF1 the ordinary F1.
    y, s = scored()
    assert binarized_pf1(y, s, 0.5) == pytest.approx(f1_score(y, s >= 0.5))


def test_the_best_binarized_pf1_is_the_best_f1_over_every_threshold():
    y, s = scored(seed=3)
    best, threshold = best_binarized_pf1(y, s)
    brute = max(f1_score(y, s >= t) for t in np.unique(s))
    assert best == pytest.approx(brute)
    assert f1_score(y, s >= threshold) == pytest.approx(best)


def images(n_patients=60, seed=0):
    """Four views per patient, one exam each; cancers in one breast of a third of them."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        sick_side = "L" if patient % 3 == 0 else None
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                target = int(side == sick_side)
                rows.append((f"p{patient}{side}{view}", f"p{patient}", f"s{patient}", side, view, target,
                             float(np.clip(0.25 + 0.35 * target + rng.normal(0, 0.2), 0, 1))))  # fmt: skip
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "study_id", "laterality", "view", "target", "probability"])


def test_validation_fits_a_threshold_per_level_and_a_temperature():
    fitted = fit_on_validation(images(), image_threshold=0.4)
    assert fitted["thresholds"]["image"] == 0.4
    assert set(fitted["thresholds"]) == {"image", "breast", "exam"}
    assert fitted["temperature"]["temperature"] > 0 and fitted["temperature"]["fitted_on"] == "val"
    fixed = fit_on_validation(images(), image_threshold=0.4, rule="fixed")
    assert fixed["thresholds"] == {"image": 0.4, "breast": 0.4, "exam": 0.4}


def test_each_level_reports_metrics_with_patient_intervals():
    val, test = images(seed=0), images(seed=1)
    fitted = fit_on_validation(val, image_threshold=0.4)
    report = evaluate_levels(test, fitted, n_boot=200, seed=0)
    assert report["image"]["n"] == 240 and report["breast"]["n"] == 120 and report["exam"]["n"] == 60
    for level in ("image", "breast", "exam"):
        for name in ("roc_auc", "sensitivity_at_90_specificity", "specificity_at_90_sensitivity", "pf1", "pf1_best",
                     "pf1_at_val_threshold", "ece", "brier", "ece_temperature_scaled"):  # fmt: skip
            entry = report[level][name]
            assert entry["low"] <= entry["value"] <= entry["high"], (level, name)
            assert entry["n_boot"] == 200
        assert report[level]["patients"] == 60
    # The numbers are those of the aggregated tables: the exam's ECE is that of the max of breast means.
    exams = test.assign(breast=test["probability"]).groupby(["study_id", "laterality"]).agg(p=("probability", "mean"), t=("target", "max"))
    exams = exams.groupby(level=0).max()
    assert report["exam"]["ece"]["value"] == pytest.approx(level_numbers(exams["t"], exams["p"])["ece"])
    assert report["calibration"]["bins"] == 10


def test_without_thresholds_only_the_threshold_free_metrics_are_reported():
    report = evaluate_levels(images(), {"thresholds": None, "note": "per-model thresholds"}, n_boot=20)
    assert "sensitivity" not in report["breast"] and "roc_auc" in report["breast"]
    assert report["exam"]["threshold_note"] == "per-model thresholds"
    with pytest.raises(ValueError, match="no image with a benign/malignant target"):
        evaluate_levels(images().assign(target=-1), {"thresholds": None}, n_boot=5)
