"""How far a classifier's probabilities can be taken at their word: reliability bins, the
expected calibration error, the Brier score, and temperature scaling fitted on validation.

The probability judged is the malignancy probability itself (not the confidence of the
predicted class): a screening reader acts on "how likely is cancer". The expected calibration
error (ECE) bins it into ``bins`` equal-width bins over [0, 1] (the last bin closed at 1) and
averages |observed malignant share - mean probability| over the bins, weighted by their images.

Temperature scaling (Guo et al., 2017) divides the logit by one number T fitted by minimizing
the negative log-likelihood on validation predictions, so the ranking (and AUC) is unchanged.
A two-class softmax probability is the sigmoid of the logit difference, so the logit is
recovered exactly from the probability: log(p / (1 - p)).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit

DEFAULT_BINS = 10
BINNING = "equal-width bins over [0, 1], weighted by their images"
# Probabilities are clipped this far from 0 and 1 before taking logits: a float32 softmax can
# round to exactly 1.0, whose logit is infinite.
EPSILON = 1e-7


def _inputs(y_true, probability) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float)
    probability = np.asarray(probability, dtype=float)
    if y_true.shape != probability.shape or y_true.ndim != 1:
        raise ValueError(f"targets and probabilities must be 1-D and of equal length, got {y_true.shape} and {probability.shape}")
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("targets must be 0 or 1")
    if len(probability) and (np.nanmin(probability) < 0 or np.nanmax(probability) > 1 or np.isnan(probability).any()):
        raise ValueError("probabilities must lie in [0, 1]")
    return y_true, probability


def _bin_index(probability: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((probability * bins).astype(int), bins - 1)


def reliability_bins(y_true, probability, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row per bin: ``low, high, images, mean_probability, observed_rate`` (NaN where the
    bin is empty): the points of a reliability diagram."""
    y_true, probability = _inputs(y_true, probability)
    index = _bin_index(probability, bins)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(index, weights=probability, minlength=bins) / count
        observed = np.bincount(index, weights=y_true, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {"low": edges[:-1], "high": edges[1:], "images": count.astype(int), "mean_probability": mean, "observed_rate": observed}
    )


def expected_calibration_error(y_true, probability, bins: int = DEFAULT_BINS) -> float:
    """Sum over bins of (images in bin / all images) x |observed rate - mean probability|;
    NaN without images."""
    y_true, probability = _inputs(y_true, probability)
    if len(y_true) == 0:
        return float("nan")
    index = _bin_index(probability, bins)
    gap = np.bincount(index, weights=y_true - probability, minlength=bins)  # per bin: count x (observed - mean)
    return float(np.abs(gap).sum() / len(y_true))


def brier_score(y_true, probability) -> float:
    """Mean squared difference between probability and outcome; NaN without images."""
    y_true, probability = _inputs(y_true, probability)
    return float(np.mean((probability - y_true) ** 2)) if len(y_true) else float("nan")


def logits_of(probability) -> np.ndarray:
    """The logit difference of a two-class softmax from its positive-class probability."""
    return logit(np.clip(np.asarray(probability, dtype=float), EPSILON, 1 - EPSILON))


def apply_temperature(probability, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    return expit(logits_of(probability) / temperature)


def fit_temperature(y_true, probability) -> float:
    """The temperature minimizing the negative log-likelihood of ``probability`` (validation
    predictions) against ``y_true``, found by scipy on log T so that T stays positive."""
    y_true, probability = _inputs(y_true, probability)
    if len(np.unique(y_true)) < 2:
        raise ValueError("fitting a temperature needs both classes among the validation images")
    logits = logits_of(probability)
    sign = 2 * y_true - 1  # NLL of a sigmoid: log(1 + exp(-sign x z / T))

    def nll(log_t: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -sign * logits / math.exp(log_t[0]))))

    result = minimize(nll, x0=np.zeros(1), method="L-BFGS-B", bounds=[(math.log(1e-2), math.log(1e2))])
    return float(math.exp(result.x[0]))


def temperature_fit(y_true, probability) -> dict:
    """``fit_temperature`` with what it rests on, or why it was not fitted, for a report."""
    y_true, probability = _inputs(y_true, probability)
    fitted = {"method": "temperature scaling: logits / T, T minimizing validation NLL (scipy L-BFGS-B on log T)",
              "fitted_on": "val", "n": int(len(y_true)), "positives": int(y_true.sum())}  # fmt: skip
    try:
        fitted["temperature"] = fit_temperature(y_true, probability)
    except ValueError as error:
        fitted.update(temperature=None, note=str(error))
    return fitted


def plot_reliability(curves: dict[str, tuple], path: str | Path, bins: int = DEFAULT_BINS, title: str = "") -> Path:
    """A reliability diagram PNG: one line per ``name: (y_true, probability)``, the diagonal of
    perfect calibration, and each curve's ECE in its legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vismae.io import atomic_path

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for name, (y_true, probability) in curves.items():
        table = reliability_bins(y_true, probability, bins)
        table = table[table["images"] > 0]
        ece = expected_calibration_error(y_true, probability, bins)
        axis.plot(table["mean_probability"], table["observed_rate"], marker="o", label=f"{name} (ECE {ece:.3f})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed malignant share",
             title=title or f"reliability, {bins} equal-width bins")  # fmt: skip
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return path
