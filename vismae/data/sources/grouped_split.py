"""A seeded train/test split by patient for datasets that ship without one.

The ROI paper splits CDD-CESM 10:1 (train:test); we do the same by patients, so that no
patient is on both sides, and stratify by each patient's worst label so that the rare
malignant patients land on both sides.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

# Worst first: a patient with one malignant image is a malignant patient.
SEVERITY = ("malignant", "benign", "normal", "unknown")
TRAIN_PER_TEST = 10
log = logging.getLogger(__name__)


def worst_labels(patients, labels) -> np.ndarray:
    """Each image's patient's worst label (malignant > benign > normal > unknown)."""
    patients = np.asarray(patients, dtype=object)
    rank = np.array([SEVERITY.index(label) for label in labels])
    worst = {}
    for patient, value in zip(patients, rank):
        worst[patient] = min(value, worst.get(patient, value))
    return np.array([SEVERITY[worst[patient]] for patient in patients], dtype=object)


def patient_split(patients, labels, seed: int = 0, train_per_test: int = TRAIN_PER_TEST) -> np.ndarray:
    """'train' or 'test' for each image; one patient in ``train_per_test + 1`` goes to test."""
    patients = np.asarray(patients, dtype=object)
    n_patients = len(set(patients))
    if n_patients < 2:
        log.warning("only %d patient: every image goes to train, none to test", n_patients)
        return np.full(len(patients), "train", dtype=object)
    folds = train_per_test + 1
    placeholder = np.zeros(len(patients))
    if n_patients >= folds:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # A label with fewer patients than folds cannot reach every fold; that is the
            # "where possible" of stratification, not an error.
            warnings.simplefilter("ignore", UserWarning)
            _, test = next(splitter.split(placeholder, worst_labels(patients, labels), patients))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=1 / folds, random_state=seed)
        _, test = next(splitter.split(placeholder, groups=patients))
    split = np.full(len(patients), "train", dtype=object)
    split[test] = "test"
    return split
