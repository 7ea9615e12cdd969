"""Metrics for classification and segmentation, with patient-level bootstrap intervals.

Classification reports both papers' numbers: sensitivity, specificity, F1 and accuracy at a
threshold, and ROC AUC and PR AUC, i.e. average precision (VIS-MAE). The ROI-aware paper's
"F-score" is not F1: it is the harmonic mean of sensitivity and specificity (2 Se Sp / (Se + Sp)
reproduces all eight of its published cells, binary F1 does not), reported as ``f_sens_spec``.
Segmentation reports Dice, precision and recall per image and pooled over all pixels.

A value that is undefined on the data at hand (a rate with an empty denominator, an AUC with
one class present) is NaN: never an exception, never a made-up 0 or 1. The one convention is
segmentation's: an empty prediction on an empty mask is a perfect answer (Dice 1).

Intervals resample patients, not images: a patient's views are correlated, so resampling
images would pretend there is more evidence than there is. Every interval says what it rests
on: the positives and negatives of the data and the number of resamples in which the metric
was undefined (a resample that drew no positive patient has no sensitivity). Where more than
5 % of the resamples were undefined the interval describes only the lucky resamples, and
reports print it as unreliable instead of as numbers (``interval_problem``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

CLASSIFICATION_METRICS = ("sensitivity", "specificity", "f1", "f_sens_spec", "accuracy", "roc_auc", "pr_auc")
NAN = float("nan")
# Above this share of undefined resamples an interval is reported as unreliable, not as numbers.
UNRELIABLE_UNDEFINED_SHARE = 0.05


# --- classification ----------------------------------------------------------------------


def _binary_inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1 or y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true and y_score must be 1-D and of equal length, got shapes {y_true.shape} and {y_score.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    values = set(np.unique(y_true).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"y_true must hold 0 (negative) and 1 (positive) only, found {sorted(values)}")
    bad = int((~np.isfinite(y_score)).sum())
    if bad:
        raise ValueError(f"y_score holds {bad} non-finite values (NaN or infinity)")
    return y_true.astype(int), y_score


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out if out.ndim else float(out)


def f_sens_spec(sensitivity, specificity):
    """The harmonic mean of sensitivity and specificity, 2 Se Sp / (Se + Sp): the ROI-aware
    paper's "F-score". NaN where either rate is undefined; 0 where both are 0."""
    sensitivity = np.asarray(sensitivity, dtype=float)
    specificity = np.asarray(specificity, dtype=float)
    out = np.where(sensitivity + specificity == 0, 0.0, _ratio(2 * sensitivity * specificity, sensitivity + specificity))
    out = np.where(np.isnan(sensitivity) | np.isnan(specificity), np.nan, out)
    return out if out.ndim else float(out)


def classification_metrics(y_true, y_score, threshold: float = 0.5) -> dict:
    """Sensitivity, specificity, F1, the harmonic mean of sensitivity and specificity
    (``f_sens_spec``), accuracy (score >= threshold is positive), ROC AUC, PR AUC.

    Also returns what they were computed on: n, positives, negatives, threshold and the
    confusion counts.
    """
    y_true, y_score = _binary_inputs(y_true, y_score)
    y_pred = (y_score >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    positives, negatives = tp + fn, tn + fp
    sensitivity, specificity = _ratio(tp, positives), _ratio(tn, negatives)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": float(f1_score(y_true, y_pred, zero_division=np.nan)),
        "f_sens_spec": f_sens_spec(sensitivity, specificity),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "roc_auc": float(roc_auc_score(y_true, y_score)) if positives and negatives else NAN,
        "pr_auc": float(average_precision_score(y_true, y_score)) if positives else NAN,
        "n": len(y_true),
        "positives": positives,
        "negatives": negatives,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def choose_threshold(y_true, y_score, rule: str = "youden", target: float = 0.9) -> float:
    """A decision threshold from the ROC curve of validation data (never test data).

    ``youden``: the threshold maximizing sensitivity + specificity - 1 (the highest one on
    ties). ``sensitivity``: the highest threshold whose sensitivity reaches ``target``, i.e.
    the most specific operating point that finds the wanted share of positives.
    Predictions are positive where score >= threshold, as in ``classification_metrics``.
    """
    y_true, y_score = _binary_inputs(y_true, y_score)
    if y_true.min() == y_true.max():
        raise ValueError(f"choosing a threshold needs both classes; all {len(y_true)} samples are {y_true[0]}")
    fpr, tpr, thresholds = roc_curve(y_true, y_score, drop_intermediate=False)
    # The curve starts at +inf (nothing called positive), which is no usable threshold.
    usable = np.isfinite(thresholds)
    if rule == "youden":
        youden = np.where(usable, tpr - fpr, -np.inf)
        return float(thresholds[int(np.argmax(youden))])
    if rule == "sensitivity":
        if not 0 < target <= 1:
            raise ValueError(f"the target sensitivity must lie in (0, 1], got {target:g}")
        reaching = np.flatnonzero(usable & (tpr >= target - 1e-12))
        return float(thresholds[reaching[0]])
    raise ValueError(f"unknown threshold rule {rule!r}; expected 'youden' or 'sensitivity'")


# --- segmentation ------------------------------------------------------------------------


def _binary_mask(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating) and not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError(f"{name} holds values other than 0 and 1; threshold probabilities first")
    return mask != 0  # 0/1 and 0/255 masks alike


def _pixel_counts(pred_mask, true_mask) -> tuple[int, int, int]:
    pred = _binary_mask(pred_mask, "pred_mask")
    true = _binary_mask(true_mask, "true_mask")
    if pred.shape != true.shape:
        raise ValueError(f"prediction and mask differ in shape: {pred.shape} vs {true.shape}")
    tp = int(np.count_nonzero(pred & true))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(true)) - tp


def _dice_from_counts(tp, fp, fn):
    """Dice = 2 TP / (2 TP + FP + FN) = 2|P and T| / (|P| + |T|); 1 where both masks are empty.

    The project's one Dice, per image and pooled alike. Both masks empty: nothing to find and
    nothing found, counted as perfect, the convention of MONAI's compute_dice with
    ignore_empty=False (a test checks the two agree image by image). MONAI is not called:
    its compute_dice needs the masks, while pooled Dice and its bootstrap work from the pixel
    counts a predictions table keeps; it computes in float32, which would change the reported
    numbers in their last digits; and its count-based F1 gives NaN, not 1, on empty pairs.
    """
    denominator = 2 * np.asarray(tp) + fp + fn
    return np.where(denominator == 0, 1.0, _ratio(2 * np.asarray(tp), denominator))


def per_image_segmentation(preds, targets) -> pd.DataFrame:
    """One row per image: tp, fp, fn pixels, Dice, precision and recall.

    Empty prediction and empty mask: all three are 1. Otherwise a rate whose denominator is
    empty is NaN: precision when nothing was predicted (the missed lesion shows in recall
    and Dice), recall when the mask is empty (the false alarm shows in precision and Dice).
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} masks")
    counts = np.array([_pixel_counts(pred, true) for pred, true in zip(preds, targets)], dtype=np.int64)
    tp, fp, fn = counts.reshape(-1, 3).T
    both_empty = (tp + fp + fn) == 0
    return pd.DataFrame(
        {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "dice": _dice_from_counts(tp, fp, fn),
            "precision": np.where(both_empty, 1.0, _ratio(tp, tp + fp)),
            "recall": np.where(both_empty, 1.0, _ratio(tp, tp + fn)),
        }
    )


def summarize_segmentation(table: pd.DataFrame) -> dict:
    """Mean per-image Dice, precision and recall (undefined ones left out of the mean) and the
    same three pooled over all pixels of all images, from a table of per-image counts: the
    one ``per_image_segmentation`` returns, or a segmenter's predictions table."""
    tp, fp, fn = (float(table[name].sum()) for name in ("tp", "fp", "fn"))
    return {
        "dice": float(table["dice"].mean()),
        "precision": float(table["precision"].mean()),
        "recall": float(table["recall"].mean()),
        "dice_pooled": float(_dice_from_counts(tp, fp, fn)),
        "precision_pooled": float(_ratio(tp, tp + fp)),
        "recall_pooled": float(_ratio(tp, tp + fn)),
    }


# --- patient-level bootstrap -------------------------------------------------------------


def _group_codes(groups, n_rows: int) -> tuple[np.ndarray, int]:
    groups = np.asarray(groups)
    if len(groups) != n_rows:
        raise ValueError(f"groups has {len(groups)} entries for {n_rows} rows")
    codes, uniques = pd.factorize(groups)
    if (codes < 0).any():
        raise ValueError("groups holds missing patient ids")
    return codes, len(uniques)


def _patient_resamples(n_groups: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """For each resample, which patients are drawn (with replacement, as many as there are)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n_groups, size=n_groups)


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Percentile interval over the defined resamples, and how many were undefined."""
    samples = np.asarray(samples, dtype=float)
    defined = samples[~np.isnan(samples)]
    if len(defined) == 0:
        return NAN, NAN, len(samples)
    low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), int(len(samples) - len(defined))


def _summaries(value, samples: dict[str, list], alpha: float, n_boot: int, **counts: int) -> dict:
    """Each metric's value and interval, with what the interval rests on: ``undefined`` (the
    resamples where the metric had no value; ``skipped`` is the same count under its former
    name, for readers of older files), ``n_boot`` and the ``counts`` given (the positives and
    negatives of a classification)."""
    out = {}
    for name, values in samples.items():
        low, high, undefined = _interval(np.array(values), alpha)
        out[name] = {"value": float(value[name]), "low": low, "high": high, "undefined": undefined,
                     "skipped": undefined, "n_boot": n_boot, **counts}  # fmt: skip
    return out


def undefined_share(entry: Mapping) -> float | None:
    """The share of an interval's resamples in which its metric was undefined; None when the
    entry does not say (a file written before the count was kept)."""
    undefined = entry.get("undefined", entry.get("skipped"))
    n_boot = entry.get("n_boot")
    if undefined is None or not n_boot:
        return None
    return float(undefined) / float(n_boot)


def interval_problem(entry: Mapping) -> str | None:
    """Why an interval must not be shown as numbers, or None when it may.

    An interval over the resamples where the metric was defined speaks only for those: with
    one positive patient, the 37 % of resamples that miss it have no sensitivity and the rest
    all say 1.0, an interval of "1.000-1.000" that claims a certainty the data do not hold.
    Above ``UNRELIABLE_UNDEFINED_SHARE`` undefined resamples the interval is unreliable.
    """
    share = undefined_share(entry)
    if share is None or share <= UNRELIABLE_UNDEFINED_SHARE:
        return None
    reason = f"undefined in {100 * share:.0f} % of {int(entry['n_boot'])} resamples"
    if entry.get("n_positive") is not None and entry.get("n_negative") is not None:
        reason += f"; {_counted(entry['n_positive'], 'positive')}, {_counted(entry['n_negative'], 'negative')}"
    return reason


def chance_level(metric: str, entry: Mapping | None = None) -> float | None:
    """What a score that ignores the image reaches on ``metric``: ROC AUC 0.5, PR AUC (average
    precision) the share of positives (from ``entry``'s counts). None for the metrics at a
    threshold, whose chance value depends on the threshold, and where the counts are unknown."""
    if metric == "roc_auc":
        return 0.5
    if metric == "pr_auc" and entry and entry.get("n_positive") is not None and entry.get("n_negative") is not None:
        total = float(entry["n_positive"]) + float(entry["n_negative"])
        return float(entry["n_positive"]) / total if total else None
    return None


def at_chance(entry: Mapping, metric: str) -> bool | None:
    """Whether a score is not shown better than chance: its 95 % interval reaches down to the
    chance level (or its interval is unreliable). None where the metric has no chance level."""
    chance = chance_level(metric, entry)
    if chance is None:
        return None
    if interval_problem(entry) or entry.get("low") is None or np.isnan(entry["low"]):
        return True
    return bool(entry["low"] <= chance)


def _counted(number, noun: str) -> str:
    return f"{int(number)} {noun}" + ("" if int(number) == 1 else "s")


def value_with_interval(entry: Mapping, digits: int = 3) -> str:
    """``0.930 [0.880, 0.960]``, or the value and why its interval is not shown:
    ``1.000 [interval unreliable: undefined in 37 % of 1000 resamples; 1 positive, 29 negatives]``."""
    problem = interval_problem(entry)
    value = f"{entry['value']:.{digits}f}"
    if problem:
        return f"{value} [interval unreliable: {problem}]"
    return f"{value} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def bootstrap_ci(
    metric_fn: Callable,
    data,
    groups,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Percentile (1 - alpha) interval of a metric, resampling patients with replacement.

    ``data`` is a DataFrame (``metric_fn(frame)``; ``groups`` may name a column) or a tuple
    of equal-length arrays (``metric_fn(*arrays)``). Each resample draws as many patients as
    there are and takes all their rows. ``metric_fn`` returns a number or a dict of numbers;
    the result is ``{"value", "low", "high", "undefined", "skipped", "n_boot"}`` or a dict of
    those. Resamples where a metric is NaN, or where ``metric_fn`` raises ValueError, are left
    out of the interval and counted (``undefined``); ``value`` is the metric on the data itself.
    """
    is_frame = isinstance(data, pd.DataFrame)
    if is_frame:
        n_rows = len(data)
        if isinstance(groups, str):
            groups = data[groups]
    else:
        arrays = [np.asarray(a) for a in data]
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise ValueError(f"the arrays differ in length: {sorted(lengths)}")
        n_rows = lengths.pop()
    codes, n_groups = _group_codes(groups, n_rows)

    def evaluate(rows):
        return metric_fn(data.iloc[rows]) if is_frame else metric_fn(*(a[rows] for a in arrays))

    # Rows sorted by patient, so a resample's rows are a few vectorized gathers.
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes

    point = evaluate(np.arange(n_rows))
    single = not isinstance(point, Mapping)
    point = {"metric": point} if single else point
    names = [name for name, value in point.items() if isinstance(value, (int, float, np.number))]
    samples: dict[str, list] = {name: [] for name in names}
    for picks in _patient_resamples(n_groups, n_boot, seed):
        picked_sizes = sizes[picks]
        offsets = np.repeat(starts[picks] - (np.cumsum(picked_sizes) - picked_sizes), picked_sizes)
        rows = order[np.arange(picked_sizes.sum()) + offsets]
        try:
            result = evaluate(rows)
        except ValueError:
            result = {}
        result = {"metric": result} if single and not isinstance(result, Mapping) else result
        for name in names:
            samples[name].append(result.get(name, NAN))
    summaries = _summaries(point, samples, alpha, n_boot)
    return summaries["metric"] if single else summaries


def _batched_rates(counts: np.ndarray, tallies: np.ndarray) -> dict[str, np.ndarray]:
    """Threshold metrics for many resamples at once from per-patient confusion tallies."""
    tp, fp, fn, tn = (counts @ tallies).T
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "f_sens_spec": f_sens_spec(sensitivity, specificity),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def _batched_aucs(counts: np.ndarray, positives: sparse.csr_matrix, negatives: sparse.csr_matrix):
    """ROC AUC and average precision for many resamples at once.

    ``positives``/``negatives`` count each patient's images per score level (levels sorted
    by descending score, ties sharing a level). A resample is a weighting of patients, so its
    per-level counts are one matrix product; the curves are cumulative sums over levels. The
    formulas are scikit-learn's (trapezoidal ROC AUC, step-wise average precision); calling
    it once per resample would cost ~100x more.
    """
    pos = np.asarray(positives.T @ counts.T)  # (levels, resamples)
    neg = np.asarray(negatives.T @ counts.T)
    tp = np.cumsum(pos, axis=0)
    fp = np.cumsum(neg, axis=0)
    total_pos, total_neg = tp[-1], fp[-1]
    # Each negative is outranked by the positives scored above it; a tied positive counts half.
    roc_auc = _ratio((neg * (tp - pos / 2)).sum(axis=0), total_pos * total_neg)
    precision = np.nan_to_num(_ratio(tp, tp + fp))  # 0/0 only at levels with no weight
    pr_auc = _ratio((pos * precision).sum(axis=0), total_pos)
    return roc_auc, pr_auc


def metrics_with_ci(
    y_true,
    y_score,
    patient_ids,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """``classification_metrics`` with patient-level bootstrap intervals, vectorized.

    Returns ``{metric: {"value", "low", "high", "undefined", "skipped", "n_boot", "n_positive",
    "n_negative"}}`` for each of ``CLASSIFICATION_METRICS``, plus n, positives, negatives,
    patients, threshold, alpha and n_boot. Same resamples, hence the same intervals, as
    ``bootstrap_ci(classification_metrics, ...)`` with the same seed.
    """
    y_true, y_score = _binary_inputs(y_true, y_score)
    point = classification_metrics(y_true, y_score, threshold)
    codes, n_groups = _group_codes(patient_ids, len(y_true))

    # Per patient: how many of its images are tp, fp, fn, tn at the threshold.
    positive, predicted = y_true == 1, y_score >= threshold
    outcomes = (positive & predicted, ~positive & predicted, positive & ~predicted, ~positive & ~predicted)
    tallies = np.stack([np.bincount(codes, weights=o, minlength=n_groups) for o in outcomes], axis=1)
    _, level = np.unique(-y_score, return_inverse=True)
    shape = (n_groups, level.max() + 1)
    positives = sparse.csr_matrix((y_true.astype(float), (codes, level)), shape=shape)
    negatives = sparse.csr_matrix((1.0 - y_true, (codes, level)), shape=shape)

    samples: dict[str, list] = {name: [] for name in CLASSIFICATION_METRICS}
    # Resamples in batches bound the (levels x batch) arrays to a few tens of megabytes.
    batch = max(1, 2**21 // shape[1])
    resamples = _patient_resamples(n_groups, n_boot, seed)
    for start in range(0, n_boot, batch):
        picks = np.stack([next(resamples) for _ in range(min(batch, n_boot - start))])
        flat = (picks + n_groups * np.arange(len(picks))[:, None]).ravel()
        counts = np.bincount(flat, minlength=picks.size).reshape(len(picks), n_groups).astype(float)
        rates = _batched_rates(counts, tallies)
        rates["roc_auc"], rates["pr_auc"] = _batched_aucs(counts, positives, negatives)
        for name in CLASSIFICATION_METRICS:
            samples[name].extend(rates[name])

    counts = {"n_positive": point["positives"], "n_negative": point["negatives"]}
    result = _summaries(point, samples, alpha, n_boot, **counts)
    result.update(
        n=point["n"], positives=point["positives"], negatives=point["negatives"], patients=n_groups,
        threshold=float(threshold), alpha=alpha, n_boot=n_boot,
    )  # fmt: skip
    return result


# --- folds -------------------------------------------------------------------------------


def summarize_folds(fold_metrics: Sequence[Mapping]) -> dict:
    """Mean, standard deviation (n - 1), min and max of each numeric metric across folds.

    Accepts plain metric dicts or ``metrics_with_ci`` results (their point values are used).
    ``n`` counts the folds where the metric was defined; NaN folds are left out.
    """
    if not fold_metrics:
        raise ValueError("no folds to summarize")
    rows = [
        {
            name: value["value"] if isinstance(value, Mapping) else value
            for name, value in metrics.items()
            if isinstance(value, (int, float, np.number)) or (isinstance(value, Mapping) and "value" in value)
        }
        for metrics in fold_metrics
    ]
    table = pd.DataFrame(rows, dtype=float)
    stats = table.agg(["mean", "std", "min", "max", "count"])
    return {
        name: {
            "mean": float(stats.at["mean", name]),
            "std": float(stats.at["std", name]),
            "min": float(stats.at["min", name]),
            "max": float(stats.at["max", name]),
            "n": int(stats.at["count", name]),
        }
        for name in table.columns
    }
