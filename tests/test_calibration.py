"""Reliability bins, ECE, Brier score and temperature scaling of malignancy probabilities."""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from vismae.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    temperature_fit,
)


def test_ece_on_a_hand_example():
    # Bin [0.1, 0.2): two images at 0.15, one malignant: observed 0.5, gap 0.35.
    # Bin [0.9, 1.0]: two images at 0.95 and 1.0 (1.0 belongs to the last bin), both malignant: gap 0.025.
    y = np.array([0, 1, 1, 1])
    p = np.array([0.15, 0.15, 0.95, 1.0])
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.5 * 0.35 + 0.5 * 0.025)
    bins = reliability_bins(y, p, bins=10)
    assert bins["images"].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins.loc[9, "mean_probability"] == pytest.approx(0.975) and bins.loc[9, "observed_rate"] == 1.0
    assert np.isnan(bins.loc[0, "observed_rate"])
    assert brier_score(y, p) == pytest.approx((0.15**2 + 0.85**2 + 0.05**2 + 0) / 4)


def test_a_perfectly_calibrated_model_has_ece_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01


def test_temperature_scaling_recovers_the_temperature_that_spoiled_the_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 50_000)
    y = (rng.random(logits.size) < expit(logits)).astype(int)
    overconfident = expit(2.5 * logits)  # the true logits times 2.5: a temperature of 2.5 undoes it
    temperature = fit_temperature(y, overconfident)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert expected_calibration_error(y, apply_temperature(overconfident, temperature)) < expected_calibration_error(y, overconfident) / 3
    # The ranking, hence the AUC, is unchanged (up to probabilities within 1e-7 of 0 or 1, which tie).
    assert roc_auc_score(y, apply_temperature(overconfident, temperature)) == pytest.approx(roc_auc_score(y, overconfident), abs=1e-4)


def test_a_one_class_validation_set_fits_no_temperature():
    fitted = temperature_fit(np.zeros(5), np.full(5, 0.3))
    assert fitted["temperature"] is None and "both classes" in fitted["note"]
    with pytest.raises(ValueError, match="lie in"):
        expected_calibration_error([0, 1], [0.2, 1.2])


def test_the_reliability_plot_is_a_png(tmp_path):
    rng = np.random.default_rng(2)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    path = plot_reliability({"model": (y, p)}, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
