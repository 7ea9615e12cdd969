"""Paired comparisons of several runs' scores on the images they were all scored on.

Two models scored on the same test images are compared paired: one patient bootstrap resamples
the images of every run together, and each resample computes every run's score, the mean over
each arm's runs, and the differences of those means. What the runs share (which patients happen
to be hard) cancels out of a difference; what differs between a side's runs (seeds) stays in it,
because each resample averages over the runs that exist. The same bootstrap gives the interval
of one arm's mean score, which says whether it is distinguishable from chance
(``vismae.metrics.at_chance``).

Only metrics computed from scores, not from a threshold, are compared: ROC AUC and PR AUC for
classifiers (columns target, probability), and the segmentation metrics (per-image counts tp,
fp, fn, dice, precision, recall). Every table has image_id and patient_id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from vismae.metrics import bootstrap_ci, summarize_segmentation

# Metrics a paired comparison exists for, per task.
PAIRED_METRICS = {"classify": ("roc_auc", "pr_auc"), "segment": ("dice", "precision", "recall", "dice_pooled",
                                                                  "precision_pooled", "recall_pooled")}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Scores of several runs on the same images, fast enough to recompute a thousand times.


def roc_aucs(target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` (runs x images) against ``target``, by the rank-sum
    (Mann-Whitney) formula with tied scores ranked by their mean: sklearn's values, one call
    for all runs. NaN when ``target`` holds one class."""
    positives = target == 1
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    if n_positive == 0 or n_negative == 0:
        return np.full(len(scores), np.nan)
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positives].sum(axis=1) - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def pr_aucs(target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each row of ``scores`` (sklearn's definition: tied scores form one
    threshold), one call for all runs. NaN when ``target`` holds no positive."""
    n_positive = int((target == 1).sum())
    if n_positive == 0:
        return np.full(len(scores), np.nan)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    true_positives = np.cumsum(target[order] == 1, axis=1)
    # A threshold's precision counts every image tied at it: only the last of a tie counts.
    ends = np.ones_like(ranked, dtype=bool)
    ends[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    at_ends = np.where(ends, true_positives, 0)
    before = np.zeros_like(at_ends)
    before[:, 1:] = np.maximum.accumulate(at_ends, axis=1)[:, :-1]
    gained = np.where(ends, true_positives - before, 0)
    precision = true_positives / np.arange(1, scores.shape[1] + 1)
    return (gained * precision).sum(axis=1) / n_positive


def run_scorer(task: str, metric: str, tables: Sequence[pd.DataFrame]) -> Callable[[np.ndarray], np.ndarray]:
    """A function of image positions (a resample) returning each run's ``metric`` on them."""
    if task == "classify":
        target = tables[0]["target"].to_numpy()
        scores = np.stack([table["probability"].to_numpy(dtype=float) for table in tables])
        per_runs = roc_aucs if metric == "roc_auc" else pr_aucs
        return lambda rows: per_runs(target[rows], scores[:, rows])
    counts = [table[["tp", "fp", "fn", "dice", "precision", "recall"]].reset_index(drop=True) for table in tables]
    return lambda rows: np.array([summarize_segmentation(table.iloc[rows])[metric] for table in counts])


def aligned(groups: Sequence[Sequence[pd.DataFrame]]) -> tuple[list[list[pd.DataFrame]], pd.DataFrame]:
    """Every table reduced to the images all of them scored, in one order, and those images'
    ids and patients."""
    common = None
    for table in (table for group in groups for table in group):
        ids = pd.Index(table["image_id"])
        common = ids if common is None else common.intersection(ids, sort=False)
    order = sorted(common)
    reindexed = [[table.drop_duplicates("image_id").set_index("image_id").loc[order].reset_index() for table in group]
                 for group in groups]  # fmt: skip
    return reindexed, reindexed[0][0][["image_id", "patient_id"]]


# ---------------------------------------------------------------------------------------------
# The comparison.


def compare_points(task: str, metric: str, arms: dict[str, Sequence[pd.DataFrame]], differences: dict[str, tuple[str, str]],
                   n_boot: int = 1000, seed: int = 0) -> dict:  # fmt: skip
    """Mean ``metric`` over each arm's runs, and each named difference of two arms' means, with
    patient-bootstrap 95 % intervals from one set of resamples.

    ``arms``: name -> the runs' scored predictions; ``differences``: name -> (arm, arm minus
    which). Returns ``{name: {value, low, high, ...}}`` for arms and differences, plus
    ``images``, ``patients`` and ``runs`` (per arm). Empty when an arm has no runs or the arms
    share no scored image."""
    names = list(arms)
    if not names or any(len(arms[name]) == 0 for name in names):
        return {}
    tables, rows = aligned([arms[name] for name in names])
    if rows.empty:
        return {}
    scorers = {name: run_scorer(task, metric, group) for name, group in zip(names, tables)}

    def statistic(positions: np.ndarray) -> dict:
        means = {name: float(np.mean(scorer(positions))) for name, scorer in scorers.items()}
        return {**means, **{name: means[a] - means[b] for name, (a, b) in differences.items()}}

    result = bootstrap_ci(statistic, (np.arange(len(rows)),), rows["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
    result.update(images=len(rows), patients=int(rows["patient_id"].nunique()), runs={name: len(arms[name]) for name in names})
    if task == "classify":
        target = tables[0][0]["target"]
        counts = {"n_positive": int((target == 1).sum()), "n_negative": int((target != 1).sum())}
        for name in names:
            result[name].update(counts)  # what vismae.metrics.chance_level reads for PR AUC
    return result
