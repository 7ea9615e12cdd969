"""The ROI paper's selection and split of CDD-CESM (its Tables 3 and 4): as many benign as
malignant images (331 of each), split 10:1 so that train and test hold the same number of each
class (300 and 31), normal images left out.

The paper does not say how it split, nor whether by patient. Here the split is always by
patient, because a manifest never lets a patient sit on both sides (its images are
correlated; splitting them would leak). The test split takes whole patients, in a seeded
random order, until it holds exactly ``ceil(n / 11)`` images of each class (31 of 331): a
small subset-sum over the patients' (malignant, benign) image counts. When no set of whole
patients adds up to exactly that (small or oddly shaped data), it takes the reachable counts
closest to it and says so; the grouping is never given up for the counts.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

CLASSES = ("malignant", "benign")
TRAIN_PER_TEST = 10  # the paper's "10:1"; 331 images of a class give 31 test images
MAX_TABLE = 200_000_000  # cells (bytes) of the subset-sum table; CDD-CESM needs under a million
log = logging.getLogger(__name__)


def held_out_per_class(images_per_class: int, train_per_test: int = TRAIN_PER_TEST) -> int:
    """The test images of each class: one in ``train_per_test + 1``, rounded up (331 -> 31,
    the paper's Table 3)."""
    return math.ceil(images_per_class / (train_per_test + 1))


def balanced_selection(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The benign and malignant rows, the larger class cut at random (seeded) to the smaller's
    size; normal and unknown rows left out. Rows keep their order."""
    rows = frame[frame["label"].isin(CLASSES)]
    counts = {label: int((rows["label"] == label).sum()) for label in CLASSES}
    if min(counts.values()) == 0:
        raise ValueError(f"the paper's selection needs malignant and benign images; found {counts}")
    left_out = len(frame) - len(rows)
    if left_out:
        log.info("paper split: left out %d normal or unlabelled images (the paper uses benign and malignant only)", left_out)
    keep = min(counts.values())
    larger = max(counts, key=counts.get)
    if counts[larger] > keep:
        rng = np.random.default_rng(seed)
        candidates = np.flatnonzero((rows["label"] == larger).to_numpy())
        dropped = rng.choice(candidates, size=counts[larger] - keep, replace=False)
        log.info("paper split: kept %d of %d %s images at random (seed %d) to match the %d %s ones",
                 keep, counts[larger], larger, seed, keep, [c for c in CLASSES if c != larger][0])  # fmt: skip
        rows = rows.drop(rows.index[dropped])
    return rows


def _reachable(counts: np.ndarray, cap: int) -> np.ndarray:
    """``reach[k, m, b]``: whether some patients among ``k..`` (in this order) hold exactly m
    malignant and b benign images, for m, b up to ``cap``."""
    reach = np.zeros((len(counts) + 1, cap + 1, cap + 1), dtype=bool)
    reach[len(counts), 0, 0] = True
    for k in range(len(counts) - 1, -1, -1):
        m, b = counts[k]
        reach[k] = reach[k + 1]
        if m <= cap and b <= cap:
            reach[k, m:, b:] |= reach[k + 1, : cap + 1 - m, : cap + 1 - b]
    return reach


def _closest(reachable: np.ndarray, target: int) -> tuple[int, int]:
    """The reachable (malignant, benign) counts nearest ``(target, target)``: smallest total
    miss, then the smaller of the two misses, then the fewer images."""
    m, b = np.nonzero(reachable)
    miss = np.abs(m - target) + np.abs(b - target)
    order = np.lexsort((m + b, np.maximum(np.abs(m - target), np.abs(b - target)), miss))
    return int(m[order[0]]), int(b[order[0]])


def balanced_patient_split(frame: pd.DataFrame, test_per_class: int, seed: int = 0) -> np.ndarray:
    """'train' or 'test' per row of ``frame`` (benign and malignant rows): whole patients go to
    test until it holds ``test_per_class`` images of each class, exactly where the patients'
    image counts allow, else as near as they allow (with a warning)."""
    labels = frame["label"].to_numpy()
    patients = frame["patient_id"].to_numpy(dtype=object)
    order = pd.unique(patients)
    order = order[np.random.default_rng(seed).permutation(len(order))]
    per_patient = (
        pd.DataFrame({"patient": patients, "malignant": labels == "malignant", "benign": labels == "benign"})
        .groupby("patient")[list(CLASSES)].sum().loc[order].to_numpy(dtype=int)
    )  # fmt: skip
    # Room above the target, so that when it is out of reach the nearest counts can lie above it.
    cap = test_per_class + int(per_patient.max(initial=0))
    if (len(order) + 1) * (cap + 1) ** 2 > MAX_TABLE:
        raise ValueError(
            f"the paper split is sized for CDD-CESM (331 images of each class); {len(order)} patients and "
            f"{test_per_class} test images of each class would need a table of {(len(order) + 1) * (cap + 1) ** 2:,} cells"
        )
    reach = _reachable(per_patient, cap)
    goal = (test_per_class, test_per_class)
    if not reach[0][goal]:
        goal = _closest(reach[0], test_per_class)
        log.warning(
            "paper split: no set of whole patients holds exactly %d malignant and %d benign images; the test "
            "split holds %d malignant and %d benign, the nearest the patients allow (a patient is never split "
            "between train and test)", test_per_class, test_per_class, *goal,
        )  # fmt: skip
    # Walk the shuffled patients, taking each one that still leaves the rest of the goal reachable.
    remaining, chosen = np.array(goal), []
    for k, patient in enumerate(order):
        after = remaining - per_patient[k]
        if (after >= 0).all() and reach[k + 1][tuple(after)]:
            chosen.append(patient)
            remaining = after
    assert not remaining.any(), "the walk follows reachable states only"
    return np.where(pd.Series(patients).isin(chosen).to_numpy(), "test", "train").astype(object)


def paper_split(frame: pd.DataFrame, seed: int = 0, train_per_test: int = TRAIN_PER_TEST) -> pd.DataFrame:
    """``frame`` cut to the paper's balanced selection, with its ``split`` column set: Table 3's
    300 + 31 images of each class for CDD-CESM's 331 + 331."""
    rows = balanced_selection(frame, seed).copy()
    per_class = int((rows["label"] == CLASSES[0]).sum())
    rows["split"] = balanced_patient_split(rows, held_out_per_class(per_class, train_per_test), seed)
    test = rows[rows["split"] == "test"]
    log.info(
        "paper split: %d malignant and %d benign images; test %d malignant and %d benign of %d patients",
        per_class, per_class, (test["label"] == "malignant").sum(), (test["label"] == "benign").sum(),
        test["patient_id"].nunique(),
    )  # fmt: skip
    return rows.reset_index(drop=True)
