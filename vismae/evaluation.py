"""Evaluation beyond the image: metrics of images, breasts and exams, operating points,
the RSNA challenge's probabilistic F1 and calibration, each with a patient-level interval.

Per level (``vismae.exam_levels``: breast = mean of its views, exam = max of its breasts):

* the classification metrics of ``vismae.metrics`` at the level's decision threshold, which
  is chosen on validation predictions aggregated to that level, by the run's rule;
* ``sensitivity_at_90_specificity`` and ``specificity_at_90_sensitivity``: read off this set's
  own ROC curve (the best operating point meeting the constraint; no interpolation), i.e. what
  the ranking allows, not what a threshold chosen beforehand achieves;
* ``pf1``: the RSNA Screening Mammography challenge's probabilistic F1, precision and recall
  with the probabilities as soft counts (true positives: sum of p over cancers; false
  positives: sum of p over the rest); ``pf1_best`` the best F1 of probabilities binarized at
  one threshold (swept over every score; optimistic, as the threshold is chosen on the data
  judged), with ``pf1_best_threshold``; ``pf1_at_val_threshold`` binarized at the threshold
  that was best on validation, where one was fitted;
* ``ece`` (``vismae.calibration``, 10 equal-width bins) and ``brier``, and the same after
  temperature scaling fitted on validation (``*_temperature_scaled``).

Intervals resample patients (``vismae.metrics.bootstrap_ci``), as every interval of the project.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vismae.calibration import (
    BINNING,
    DEFAULT_BINS,
    apply_temperature,
    brier_score,
    expected_calibration_error,
    reliability_bins,
    temperature_fit,
)
from vismae.exam_levels import LEVELS, level_table
from vismae.metrics import bootstrap_ci, choose_threshold, metrics_with_ci

OPERATING_POINT = 0.90  # the fixed specificity (or sensitivity) of the operating points
FITTED_RULES = ("youden", "sensitivity")  # the threshold rules fitted on validation (vismae.metrics.choose_threshold)
# The metrics of ``vismae.metrics`` that depend on a decision threshold.
THRESHOLD_METRICS = ("sensitivity", "specificity", "f1", "f_sens_spec", "accuracy", "threshold")
NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# Operating points read off the ROC curve.


def _roc_points(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tpr, fpr) for "score >= threshold is positive" at every distinct score,
    descending, after the point (0, 0) of threshold +inf."""
    order = np.argsort(-score, kind="stable")
    score, y_true = score[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the last index of each distinct score
    tp = np.cumsum(y_true)[last]
    fp = (last + 1) - tp
    positives, negatives = y_true.sum(), len(y_true) - y_true.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / positives]
        fpr = np.r_[0.0, fp / negatives]
    return np.r_[np.inf, score[last]], tpr, fpr


def _both_classes(y_true: np.ndarray) -> bool:
    return 0 < y_true.sum() < len(y_true)


def _sensitivity_at(tpr: np.ndarray, fpr: np.ndarray, specificity: float) -> float:
    """The highest sensitivity among thresholds whose specificity reaches ``specificity``."""
    return float(tpr[1 - fpr >= specificity - 1e-12].max())


def _specificity_at(tpr: np.ndarray, fpr: np.ndarray, sensitivity: float) -> float:
    """The highest specificity among thresholds whose sensitivity reaches ``sensitivity``."""
    return float((1 - fpr[tpr >= sensitivity - 1e-12]).max())


# ---------------------------------------------------------------------------------------------
# Probabilistic F1.


def probabilistic_f1(y_true, probability, beta: float = 1.0) -> float:
    """The RSNA challenge's pF-beta: soft true positives (the probabilities of the cancers) and
    soft false positives (those of the rest) give precision and recall; 0 where either is 0,
    NaN without any positive."""
    y_true = np.asarray(y_true, dtype=float)
    probability = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    positives = y_true.sum()
    if positives == 0:
        return NAN
    soft_tp = float((probability * y_true).sum())
    soft_fp = float((probability * (1 - y_true)).sum())
    if soft_tp == 0:
        return 0.0
    precision, recall = soft_tp / (soft_tp + soft_fp), soft_tp / positives
    return float((1 + beta**2) * precision * recall / (beta**2 * precision + recall))


def best_binarized_pf1(y_true, probability) -> tuple[float, float]:
    """(best pF1 of the probabilities binarized at one threshold, that threshold): binarized,
    pF1 is F1. Every distinct score is tried; on ties the highest threshold wins. (NaN, NaN)
    without any positive."""
    y_true, probability = np.asarray(y_true, dtype=float), np.asarray(probability, dtype=float)
    if y_true.sum() == 0:
        return NAN, NAN
    return _best_f1(y_true, *_roc_points(y_true, probability))


def _best_f1(y_true: np.ndarray, thresholds: np.ndarray, tpr: np.ndarray, fpr: np.ndarray) -> tuple[float, float]:
    positives = y_true.sum()
    tp = tpr * positives
    fp = fpr * (len(y_true) - positives) if positives < len(y_true) else np.zeros_like(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * tp / (tp + fp + positives), 0.0)
    f1[0] = -np.inf  # threshold +inf predicts nothing: no usable threshold
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def binarized_pf1(y_true, probability, threshold: float) -> float:
    """pF1 of the probabilities binarized at ``threshold`` (score >= threshold is 1)."""
    return probabilistic_f1(y_true, (np.asarray(probability, dtype=float) >= threshold).astype(float))


# ---------------------------------------------------------------------------------------------
# One level's report.


def _point_name(what: str, at: str) -> str:
    return f"{what}_at_{round(100 * OPERATING_POINT)}_{at}"


def level_numbers(y_true, probability, scaled=None, pf1_threshold: float | None = None, bins: int = DEFAULT_BINS) -> dict:
    """The numbers of one level that ``vismae.metrics`` does not compute, as plain floats:
    operating points, pF1 (soft, best binarized, at the validation threshold), ECE and Brier,
    and ECE and Brier of the temperature-scaled probabilities ``scaled`` where given."""
    y_true, probability = np.asarray(y_true, dtype=float), np.asarray(probability, dtype=float)
    sensitivity = specificity = best = NAN
    if y_true.sum() > 0:  # one ROC curve for all three (this runs once per bootstrap resample)
        thresholds, tpr, fpr = _roc_points(y_true, probability)
        best = _best_f1(y_true, thresholds, tpr, fpr)[0]
        if _both_classes(y_true):
            sensitivity = _sensitivity_at(tpr, fpr, OPERATING_POINT)
            specificity = _specificity_at(tpr, fpr, OPERATING_POINT)
    numbers = {
        _point_name("sensitivity", "specificity"): sensitivity,
        _point_name("specificity", "sensitivity"): specificity,
        "pf1": probabilistic_f1(y_true, probability),
        "pf1_best": best,
        "ece": expected_calibration_error(y_true, probability, bins),
        "brier": brier_score(y_true, probability),
    }
    if pf1_threshold is not None:
        numbers["pf1_at_val_threshold"] = binarized_pf1(y_true, probability, pf1_threshold)
    if scaled is not None:
        scaled = np.asarray(scaled, dtype=float)
        numbers["ece_temperature_scaled"] = expected_calibration_error(y_true, scaled, bins)
        numbers["brier_temperature_scaled"] = brier_score(y_true, scaled)
    return numbers


def level_report(table: pd.DataFrame, threshold: float, n_boot: int, seed: int = 0,
                 pf1_threshold: float | None = None, bins: int = DEFAULT_BINS) -> dict:
    """One level's metrics with patient-level 95 % intervals, from a table with ``target``,
    ``probability``, ``patient_id`` and, after temperature scaling, ``probability_scaled``."""
    y_true = table["target"].to_numpy(dtype=int)
    probability = table["probability"].to_numpy(dtype=float)
    patients = table["patient_id"].to_numpy()
    scaled = table["probability_scaled"].to_numpy(dtype=float) if "probability_scaled" in table else None
    report = metrics_with_ci(y_true, probability, patients, threshold, n_boot, seed)
    arrays = (y_true, probability) if scaled is None else (y_true, probability, scaled)

    def numbers(y, p, s=None):
        return level_numbers(y, p, s, pf1_threshold, bins)

    report.update(bootstrap_ci(numbers, arrays, patients, n_boot=n_boot, seed=seed))
    report["pf1_best_threshold"] = _none_if_nan(best_binarized_pf1(y_true, probability)[1])
    report["reliability"] = _records(reliability_bins(y_true, probability, bins))
    if scaled is not None:
        report["reliability_temperature_scaled"] = _records(reliability_bins(y_true, scaled, bins))
    return report


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _records(table: pd.DataFrame) -> list[dict]:
    """Table rows as dicts, an empty bin's undefined means as None (JSON has no NaN)."""
    return [
        {key: _none_if_nan(value) if isinstance(value, float) else value for key, value in row.items()}
        for row in table.to_dict("records")
    ]


# ---------------------------------------------------------------------------------------------
# What is fitted on validation, and the report of a labelled set.


def labelled_images(images: pd.DataFrame) -> pd.DataFrame:
    """The rows with a 0/1 ``target`` (rows of other labels, -1, are not judged)."""
    return images[images["target"].isin((0, 1))].reset_index(drop=True)


def fit_on_validation(val_images: pd.DataFrame, image_threshold: float, rule: str = "youden",
                      target_sensitivity: float = 0.9) -> dict:
    """From validation images (``image_id, patient_id, study_id, laterality, view, target,
    probability``): each level's decision threshold (the image one given, the breast and exam
    ones chosen by ``rule`` on the aggregated predictions), the best-pF1 threshold of each
    level, and the temperature. Plain numbers, saved with a model so that predictions on other
    data are judged exactly as the run's test set was."""
    val = labelled_images(val_images)
    thresholds, pf1_thresholds = {"image": float(image_threshold)}, {}
    notes = {}
    for level in LEVELS:
        table = level_table(val, level)
        y_true, probability = table["target"].to_numpy(dtype=int), table["probability"].to_numpy(dtype=float)
        if level != "image":
            if rule not in FITTED_RULES:  # a fixed threshold (or the default of a one-class validation set)
                thresholds[level] = float(image_threshold)
                notes[level] = f"threshold rule {rule!r} fits nothing; the image threshold is used"
            elif _both_classes(y_true):
                thresholds[level] = choose_threshold(y_true, probability, rule, target_sensitivity)
            else:
                thresholds[level] = float(image_threshold)
                notes[level] = "the validation rows hold one class at this level; the image threshold is used"
        pf1_thresholds[level] = best_binarized_pf1(y_true, probability)[1] if y_true.any() else None
    fitted = {
        "thresholds": thresholds,
        "threshold_rule": rule,
        "pf1_thresholds": pf1_thresholds,
        "temperature": temperature_fit(val["target"].to_numpy(dtype=int), val["probability"].to_numpy(dtype=float)),
        "chosen_on": "val",
    }
    if rule == "sensitivity":
        fitted["target_sensitivity"] = target_sensitivity
    if notes:
        fitted["notes"] = notes
    return fitted


def evaluate_levels(images: pd.DataFrame, fitted: dict, n_boot: int, seed: int = 0, bins: int = DEFAULT_BINS) -> dict:
    """Each level's ``level_report`` of the labelled ``images`` under what ``fit_on_validation``
    fitted; ``{level: report}``, plus ``calibration`` (the bins and the temperature used)."""
    images = labelled_images(images)
    if images.empty:
        raise ValueError("no image with a benign/malignant target to evaluate")
    temperature = (fitted.get("temperature") or {}).get("temperature")
    scores = ["probability"]
    if temperature is not None:
        images = images.assign(probability_scaled=apply_temperature(images["probability"], temperature))
        scores.append("probability_scaled")
    thresholds = fitted.get("thresholds")
    result = {}
    for level in LEVELS:
        table = level_table(images, level, scores)
        pf1_threshold = (fitted.get("pf1_thresholds") or {}).get(level)
        if thresholds is None:
            # No one threshold decides this level: only the threshold-free metrics are reported.
            report = level_report(table, 0.5, n_boot, seed, pf1_threshold, bins)
            for name in THRESHOLD_METRICS:
                report.pop(name, None)
            report["threshold_note"] = fitted.get("note", "no single decision threshold; threshold metrics left out")
        else:
            report = level_report(table, thresholds[level], n_boot, seed, pf1_threshold, bins)
            report["threshold_chosen_on"] = fitted.get("chosen_on", "val")
        result[level] = report
    result["calibration"] = {"bins": bins, "binning": BINNING, "temperature": temperature}
    return result


def with_exam_columns(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """A predictions table (image_id, patient_id, view, laterality, target, probability ...)
    with the ``study_id`` of its manifest ``rows``, joined by image_id."""
    studies = rows.drop_duplicates("image_id").set_index("image_id")["study_id"]
    return table.assign(study_id=studies.reindex(table["image_id"]).fillna("").to_numpy())
