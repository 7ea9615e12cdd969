"""Patient-grouped splits: train/val/test, k folds, nested label fractions, and the 10:1
train/test draw of dataset readers.

Everything here works on patients, never on single images: all rows of a patient land on the
same side, so a patient's other views never leak into validation or test. Patients are
stratified by their most severe label (malignant > benign > normal > unknown): a patient with
one malignant breast counts as malignant however many normal views they have.

Patients are sorted by id before the seeded shuffle, so a result depends only on the seed and
the set of patients, never on the order of the manifest's rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from vismae.data.manifest import SEVERITY, SPLITS, validate, write_manifest
from vismae.io import write_json

DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
LABEL_FRACTIONS = (0.05, 0.10, 0.25, 0.50, 0.80, 1.0)  # VIS-MAE's label-efficiency grid
SPLITS_FILE = "splits.json"
TRAIN_PER_TEST = 10  # the ROI paper's CDD-CESM split, train:test
log = logging.getLogger(__name__)


# --- strata and dealing -----------------------------------------------------------------


def most_severe_labels(patients, labels) -> pd.Series:
    """Each patient's most severe label, indexed by sorted patient id."""
    patients = pd.Series(np.asarray(patients, dtype=object), name="patient_id")
    labels = np.asarray(labels, dtype=object)
    rank = pd.Series(labels).map({label: i for i, label in enumerate(SEVERITY)})
    if rank.isna().any():
        unknown = sorted({str(label) for label in labels[rank.isna().to_numpy()]})
        raise ValueError(f"unknown labels {unknown}; expected some of {', '.join(SEVERITY)}")
    return rank.groupby(patients).min().sort_index().map(dict(enumerate(SEVERITY)))


def patient_strata(frame: pd.DataFrame, stratify: str | None = "label") -> pd.Series:
    """Each patient's stratum, indexed by sorted patient id.

    ``stratify="label"`` gives the patient's most severe label; ``None`` puts every patient
    in one stratum (plain grouped shuffling).
    """
    patients = frame["patient_id"]
    if stratify is None:
        return pd.Series("all", index=pd.Index(sorted(patients.unique()), name="patient_id"))
    if stratify != "label":
        raise ValueError(f"stratify must be 'label' or None, got {stratify!r}")
    return most_severe_labels(patients, frame["label"])


def _shuffled_strata(frame: pd.DataFrame, seed: int | list[int], stratify: str | None) -> list[np.ndarray]:
    """One seeded random order of patients per stratum, most severe stratum first."""
    strata = patient_strata(frame, stratify)
    order = SEVERITY if stratify == "label" else ("all",)
    rng = np.random.default_rng(seed)
    return [
        rng.permutation(strata.index[strata == stratum].to_numpy())
        for stratum in order
        if (strata == stratum).any()
    ]


def _deal(strata: list[np.ndarray], shares: dict[str, float]) -> dict[str, str]:
    """Deal patients, stratum after stratum, each to the part furthest below its share so far.

    With equal shares this is round-robin dealing. The running counts never stray far from
    the ideal, so each part's size, and its mix of strata, stays within a patient or two of
    the shares. (scikit-learn's StratifiedKFold refuses or warns when every stratum is
    smaller than k; this rule handles splits and folds alike and never fails.)
    """
    names = [name for name, share in shares.items() if share > 0]
    weights = np.array([shares[name] for name in names])
    counts = np.zeros(len(names))
    assigned: dict[str, str] = {}
    dealt = 0
    for patients in strata:
        for patient in patients:
            dealt += 1
            # Rounded so that float noise (1 - 0.2 - 0.1 != 0.7) cannot flip a tie.
            part = int(np.argmax(np.round(weights * dealt - counts, 9)))
            counts[part] += 1
            assigned[patient] = names[part]
    return assigned


def _with_splits(frame: pd.DataFrame, rows: np.ndarray, parts: dict[str, str]) -> pd.DataFrame:
    out = frame.copy()
    column = out.columns.get_loc("split")
    out.iloc[rows, column] = [parts[patient] for patient in out["patient_id"].to_numpy()[rows]]
    return out


def _checked(frame: pd.DataFrame) -> pd.DataFrame:
    validate(frame)
    if frame.empty:
        raise ValueError("the manifest has no rows to split")
    return frame


# --- train / val / test ------------------------------------------------------------------


def _check_split_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = [name for name in fractions if name not in SPLITS]
    if unknown:
        raise ValueError(f"split fractions name unknown splits {unknown}; expected {', '.join(SPLITS)}")
    bad = {name: share for name, share in fractions.items() if not 0 <= share <= 1}
    if bad:
        raise ValueError(f"split fractions must lie in [0, 1], got {bad}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        terms = " + ".join(f"{name} {share:g}" for name, share in fractions.items())
        raise ValueError(f"split fractions must add up to 1, got {terms} = {total:g}")
    if fractions.get("train", 0) <= 0:
        raise ValueError("the train fraction must be above 0")
    return dict(fractions)


def assign_split(
    frame: pd.DataFrame,
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    stratify: str | None = "label",
) -> pd.DataFrame:
    """A copy of ``frame`` with every row's ``split`` set, patient-grouped and stratified.

    ``fractions`` are shares of patients, e.g. ``{"train": .8, "val": .1, "test": .1}``.
    """
    shares = _check_split_fractions(fractions)
    frame = _checked(frame)
    parts = _deal(_shuffled_strata(frame, seed, stratify), shares)
    return _with_splits(frame, np.arange(len(frame)), parts)


def carve_validation(
    frame: pd.DataFrame, fraction: float, seed: int = 0, stratify: str | None = "label"
) -> pd.DataFrame:
    """Move a patient-grouped, stratified ``fraction`` of the training patients into val.

    Rows already in val or test stay where they are.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must lie in [0, 1), got {fraction:g}")
    frame = _checked(frame)
    rows = np.flatnonzero(frame["split"].to_numpy() == "train")
    if len(rows) == 0:
        raise ValueError("the manifest has no training rows to carve a validation split from")
    train = frame.iloc[rows]
    parts = _deal(_shuffled_strata(train, seed, stratify), {"train": 1 - fraction, "val": fraction})
    return _with_splits(frame, rows, parts)


def train_test_by_patient(patients, labels, seed: int = 0, train_per_test: int = TRAIN_PER_TEST) -> np.ndarray:
    """'train' or 'test' for each image of a dataset that ships without a split: one patient
    in ``train_per_test + 1`` goes to test, stratified by the patients' most severe labels.

    Dataset readers draw this split, as the ROI paper splits CDD-CESM 10:1. It stays with
    scikit-learn's StratifiedGroupKFold (test is the first of ``train_per_test + 1`` folds)
    rather than the dealing rule above because every manifest read so far carries its
    assignment: dealing would move patients between train and test (34 of the demo's 200
    CDD-CESM patients).
    """
    patients = np.asarray(patients, dtype=object)
    n_patients = len(set(patients))
    if n_patients < 2:
        log.warning("only %d patient: every image goes to train, none to test", n_patients)
        return np.full(len(patients), "train", dtype=object)
    folds = train_per_test + 1
    placeholder = np.zeros(len(patients))
    if n_patients >= folds:
        strata = pd.Series(patients).map(most_severe_labels(patients, labels)).to_numpy(dtype=object)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # A label with fewer patients than folds cannot reach every fold; that is the
            # "where possible" of stratification, not an error.
            warnings.simplefilter("ignore", UserWarning)
            _, test = next(splitter.split(placeholder, strata, patients))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=1 / folds, random_state=seed)
        _, test = next(splitter.split(placeholder, groups=patients))
    split = np.full(len(patients), "train", dtype=object)
    split[test] = "test"
    return split


# --- k folds -----------------------------------------------------------------------------


def assign_folds(frame: pd.DataFrame, k: int, seed: int = 0, stratify: str | None = "label") -> pd.Series:
    """Each row's fold (0 .. k-1) over the non-test rows; test rows get -1."""
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    frame = _checked(frame)
    rows = np.flatnonzero(frame["split"].to_numpy() != "test")
    pool = frame.iloc[rows]
    n_patients = pool["patient_id"].nunique()
    if n_patients < k:
        raise ValueError(
            f"{k} folds need at least {k} patients outside the test split; there are {n_patients}"
        )
    parts = _deal(_shuffled_strata(pool, seed, stratify), {str(i): 1 / k for i in range(k)})
    folds = np.full(len(frame), -1)
    folds[rows] = [int(parts[patient]) for patient in pool["patient_id"]]
    return pd.Series(folds, index=frame.index, name="fold")


def kfold(frame: pd.DataFrame, k: int, seed: int = 0, stratify: str | None = "label") -> list[pd.DataFrame]:
    """k manifests; in the i-th, fold i's patients are val and the other non-test rows train.

    Every non-test patient is in exactly one fold's validation. Test rows travel unchanged, so
    each fold is a complete manifest that training reads like any other.
    """
    folds = assign_folds(frame, k, seed, stratify).to_numpy()
    manifests = []
    for fold in range(k):
        out = frame.copy()
        out.loc[folds >= 0, "split"] = np.where(folds[folds >= 0] == fold, "val", "train")
        manifests.append(out)
    return manifests


# --- label fractions ---------------------------------------------------------------------


def _check_label_fractions(fractions) -> list[float]:
    fractions = sorted({float(f) for f in fractions})
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ValueError(f"label fractions must lie in (0, 1], got {bad or 'none'}")
    return fractions


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); half up is easier to predict.
    return math.floor(value + 0.5)


def label_fractions(
    frame: pd.DataFrame,
    fractions=LABEL_FRACTIONS,
    seed: int = 0,
    stratify: str | None = "label",
    shrink=("train",),
) -> dict[float, pd.DataFrame]:
    """Nested, stratified, patient-grouped subsets of the rows of the ``shrink`` splits (the
    training rows by default), one per fraction.

    Each stratum's patients of each shrinking split get one seeded order, and fraction f keeps
    the first ``round(f * n)`` of them (at least one), so a larger fraction always contains a
    smaller one's patients and every class keeps its share. Each value is a manifest: the kept
    rows of the shrinking splits plus every row of the others, unchanged.

    ``shrink=("train", "val")`` draws validation patients the same way, with an order of their
    own, so that a fraction of the labels means a fraction of those that train and of those that
    choose the epoch and threshold. The training draw is the same whatever ``shrink`` holds.
    """
    fractions = _check_label_fractions(fractions)
    unknown = sorted(set(shrink) - set(SPLITS))
    if unknown or "train" not in shrink:
        raise ValueError(f"label fractions shrink train and optionally val or test, got {list(shrink)}")
    frame = _checked(frame)
    split = frame["split"].to_numpy()
    if not (split == "train").any():
        raise ValueError("the manifest has no training rows to draw label fractions from")
    # Training keeps the seed itself (the draws of sweeps made before validation shrank); each
    # other split its own stream.
    strata = {
        name: _shuffled_strata(frame.iloc[np.flatnonzero(split == name)], seed if name == "train" else [seed, SPLITS.index(name)], stratify)
        for name in SPLITS
        if name in shrink and (split == name).any()
    }
    patient = frame["patient_id"].to_numpy()
    subsets = {}
    for fraction in fractions:
        keep = ~np.isin(split, list(strata))
        for name, orders in strata.items():
            kept = [order[: min(len(order), max(1, _round_half_up(fraction * len(order))))] for order in orders]
            keep |= (split == name) & np.isin(patient, np.concatenate(kept))
        subsets[fraction] = frame.iloc[np.flatnonzero(keep)].copy()
    return subsets


# --- summaries and files -----------------------------------------------------------------


def split_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Patients and images per split, and images per label: the table a summary prints."""
    by_split = frame.groupby("split", sort=False)
    table = pd.DataFrame(
        {"patients": by_split["patient_id"].nunique(), "images": by_split.size()}
    )
    labels = pd.crosstab(frame["split"], frame["label"]).reindex(columns=SEVERITY, fill_value=0)
    table = table.join(labels).reindex([s for s in SPLITS if s in table.index])
    return table.fillna(0).astype(int)


def fraction_name(fraction: float) -> str:
    return f"fraction_{fraction:g}"


def _counts_json(frame: pd.DataFrame) -> dict:
    return {split: {k: int(v) for k, v in row.items()} for split, row in split_counts(frame).iterrows()}


def _previous_manifests(out_dir: Path) -> list[str]:
    record = out_dir / SPLITS_FILE
    if not record.is_file():
        return []
    return list(json.loads(record.read_text()).get("manifests", []))


def save_splits(
    out_dir: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    seed: int,
    folds: list[pd.DataFrame] = (),
    fractions: dict[float, pd.DataFrame] | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``manifest.csv``, ``fold_{i}/manifest.csv``, ``fraction_{f}/manifest.csv`` and
    ``splits.json`` (seed, settings, counts, the files written) under ``out_dir``.

    Refuses to replace an earlier result unless ``overwrite``; when overwriting, manifests the
    earlier run wrote that this one does not are removed, so the folder tells one story.
    """
    out_dir = Path(out_dir)
    if (out_dir / SPLITS_FILE).exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds splits ({SPLITS_FILE}); pass overwrite to replace them")
    targets = {"manifest.csv": frame}
    targets.update({f"fold_{i}/manifest.csv": fold for i, fold in enumerate(folds)})
    targets.update({f"{fraction_name(f)}/manifest.csv": sub for f, sub in (fractions or {}).items()})

    for stale in set(_previous_manifests(out_dir)) - set(targets):
        path = out_dir / stale
        path.unlink(missing_ok=True)
        if path.parent != out_dir and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
    for relative, manifest in targets.items():
        write_manifest(manifest, out_dir / relative)

    record = {
        "seed": seed,
        **(settings or {}),
        "folds": len(folds),
        "label_fractions": sorted(fractions) if fractions else [],
        "counts": _counts_json(frame),
        "fold_validation_patients": [
            int(fold.loc[fold["split"] == "val", "patient_id"].nunique()) for fold in folds
        ],
        "fraction_training_patients": {
            f"{f:g}": int(sub.loc[sub["split"] == "train", "patient_id"].nunique())
            for f, sub in sorted((fractions or {}).items())
        },
        "manifests": list(targets),
    }
    return write_json(out_dir / SPLITS_FILE, record)
