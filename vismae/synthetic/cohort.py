"""Who is in a phantom: patients, their breasts' labels and BI-RADS, and the lesions to draw.

Everything here is decided before a pixel is drawn, from the seed alone. Counts are assigned by
quota (largest remainder) and then shuffled, so that a 4-patient phantom already holds every
label and ROI combination a test needs while a 50-patient one holds the proportions asked for.
Lesion patterns cycle through fixed lists for the same reason: a small phantom still shows
every kind of finding (a calcification cluster, a mass with calcifications, a lymph node...).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

SIDES = ("R", "L")
VIEWS = ("CC", "MLO")
DENSITIES = ("A", "B", "C", "D")
DENSITY_WEIGHTS = (0.08, 0.32, 0.45, 0.15)


@dataclass(frozen=True)
class CohortProfile:
    """The label mix of a dataset and how often a breast of each label carries an annotated ROI."""

    label_mix: Mapping[str, float]
    roi_rate: Mapping[str, float]
    abnormal_only: bool = False  # case series (CBIS-DDSM): only breasts with a finding are imaged
    bilateral_rate: float = 0.15  # abnormal_only: share of patients with both breasts abnormal
    test_fraction: float = 0.2


# Screening datasets (VinDr-Mammo, CDD-CESM): the ROI rates follow VinDr, where an annotated box
# nearly decides the label; the malignant share is raised so that a small phantom can be learned.
SCREENING = CohortProfile(
    label_mix={"malignant": 0.30, "benign": 0.35, "normal": 0.35},
    roi_rate={"malignant": 0.95, "benign": 0.25, "normal": 0.0},
)
# A case series of biopsied findings (CBIS-DDSM): every imaged breast has an outlined lesion.
CASE_SERIES = CohortProfile(
    label_mix={"malignant": 0.45, "benign": 0.55},
    roi_rate={"malignant": 1.0, "benign": 1.0},
    abnormal_only=True,
)

# The findings of malignant and of annotated benign breasts, taken in turn.
MALIGNANT_PATTERNS = ("mass", "calcifications", "mass_and_calcifications", "mass", "mass_with_calcifications")
BENIGN_PATTERNS = ("mass", "coarse_calcifications", "mass")
# Benign breasts without an ROI: some hold coarse calcifications nobody boxed, the rest nothing.
UNANNOTATED_BENIGN_PATTERNS = ("coarse_calcifications", "none", "none", "coarse_calcifications", "none")
LYMPH_NODE_EVERY = 3  # every third annotated benign breast also shows an axillary lymph node
# Finding diameters, as fractions of the chest-wall-to-nipple distance: about twice the size of a
# typical screen-detected finding, so that at the 64-128 px of a CPU demo a mass spans several
# 4-pixel patches and a small model learns it in minutes (at life size it is a few pixels wide).
DIAMETERS = {
    "malignant mass": (0.18, 0.28),
    "benign mass": (0.14, 0.24),
    "fine calcifications": (0.16, 0.26),
    "coarse calcifications": (0.28, 0.48),
    "lymph node": (0.10, 0.14),
}


@dataclass(frozen=True)
class Lesion:
    """One finding of a breast, drawn in both of its views from the same shape seed."""

    kind: str  # "mass", "calcifications" or "lymph_node"
    shape: str  # mass: round/oval/irregular/spiculated; calcifications: fine/coarse; lymph_node: oval
    malignant: bool
    diameter: float  # fraction of the breast's chest-wall-to-nipple distance
    depth: float  # position along that distance: 0 against the chest wall, 1 at the nipple
    offset: tuple[float, float]  # across the breast, -1..1, in the CC and in the MLO view
    annotated: bool
    birads: int | None  # the finding's own BI-RADS (None where readers give none, lymph nodes)
    seed: int
    with_calcifications: bool = False  # a mass holding fine calcifications


@dataclass(frozen=True)
class Breast:
    laterality: str
    label: str  # "normal", "benign" or "malignant"
    birads: int
    lesions: tuple[Lesion, ...]

    @property
    def has_roi(self) -> bool:
        return any(lesion.annotated for lesion in self.lesions)


@dataclass(frozen=True)
class Patient:
    index: int  # 0-based position in the cohort; also the seed stream of its images
    age: int
    density: str  # ACR density A-D, the same for both breasts
    split: str  # "train" or "test"
    breasts: Mapping[str, Breast]  # by laterality; a case series may image one side only


def quota(rng: np.random.Generator, weights: Mapping, n: int) -> list:
    """``n`` items apportioned to ``weights`` by largest remainder, in random order."""
    keys = [key for key, weight in weights.items() if weight > 0]
    total = sum(weights[key] for key in keys)
    exact = [n * weights[key] / total for key in keys]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(keys)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    items = [key for key, count in zip(keys, counts) for _ in range(count)]
    return [items[i] for i in rng.permutation(len(items))]


def sample_cohort(n_patients: int, seed: int, profile: CohortProfile = SCREENING) -> list[Patient]:
    """Draw ``n_patients`` patients; the same seed and profile always give the same cohort."""
    if n_patients < 1:
        raise ValueError(f"a phantom needs at least one patient, got n_patients={n_patients}")
    rng = np.random.default_rng([seed, 0xC0407])
    sides = _sides_per_patient(rng, n_patients, profile)
    n_breasts = sum(len(s) for s in sides)
    labels = quota(rng, profile.label_mix, n_breasts)
    with_roi = _roi_quota(rng, labels, profile)
    splits = quota(rng, {"test": profile.test_fraction, "train": 1 - profile.test_fraction}, n_patients)
    if "train" not in splits:  # a single patient belongs to training
        splits[0] = "train"

    findings = _Findings(rng)
    patients, breast_number = [], 0
    for index in range(n_patients):
        breasts = {}
        for side in sides[index]:
            label, annotated = labels[breast_number], with_roi[breast_number]
            breast_number += 1
            birads = _birads(rng, label, annotated)
            lesions = findings.of_breast(label, birads, annotated)
            breasts[side] = Breast(laterality=side, label=label, birads=birads, lesions=lesions)
        patients.append(
            Patient(
                index=index,
                age=int(rng.integers(38, 78)),
                density=str(rng.choice(DENSITIES, p=DENSITY_WEIGHTS)),
                split=splits[index],
                breasts=breasts,
            )
        )
    return patients


def _sides_per_patient(rng, n_patients: int, profile: CohortProfile) -> list[tuple[str, ...]]:
    if not profile.abnormal_only:
        return [SIDES] * n_patients
    bilateral = quota(rng, {True: profile.bilateral_rate, False: 1 - profile.bilateral_rate}, n_patients)
    return [SIDES if both else (str(rng.choice(SIDES)),) for both in bilateral]


def _roi_quota(rng, labels: list[str], profile: CohortProfile) -> list[bool]:
    """Which breasts carry an annotated ROI: a quota within each label."""
    with_roi = [False] * len(labels)
    for label in dict.fromkeys(labels):
        positions = [i for i, value in enumerate(labels) if value == label]
        rate = profile.roi_rate.get(label, 0.0)
        for position, flag in zip(positions, quota(rng, {True: rate, False: 1 - rate}, len(positions))):
            with_roi[position] = flag
    return with_roi


def _birads(rng, label: str, annotated: bool) -> int:
    if label == "normal":
        return 1
    if label == "malignant":
        return int(rng.choice((4, 5), p=(0.55, 0.45)))
    # An annotated benign finding is more often "probably benign" (3) than a plain benign breast.
    return int(rng.choice((2, 3), p=(0.4, 0.6) if annotated else (0.85, 0.15)))


class _Findings:
    """Decides each breast's findings, taking the pattern lists and mass shapes in turn."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.patterns = {
            "malignant": itertools.cycle(MALIGNANT_PATTERNS),
            "benign": itertools.cycle(BENIGN_PATTERNS),
            "unannotated benign": itertools.cycle(UNANNOTATED_BENIGN_PATTERNS),
        }
        self.mass_shapes = {
            True: itertools.cycle(("irregular", "spiculated")),
            False: itertools.cycle(("oval", "round")),
        }
        self.lymph_nodes = itertools.cycle([True] + [False] * (LYMPH_NODE_EVERY - 1))
        self.chest_wall_taken = False

    def of_breast(self, label: str, birads: int, annotated: bool) -> tuple[Lesion, ...]:
        if label == "normal":
            return ()
        malignant = label == "malignant"
        kind = label if malignant or annotated else "unannotated benign"
        pattern = next(self.patterns[kind])
        lesions = []
        if pattern in ("mass", "mass_and_calcifications", "mass_with_calcifications"):
            lesions.append(self._mass(malignant, birads, annotated, pattern == "mass_with_calcifications"))
        if pattern in ("calcifications", "mass_and_calcifications"):
            lesions.append(self._lesion("calcifications", "fine", True, DIAMETERS["fine calcifications"], annotated, birads))
        if pattern == "mass_and_calcifications":
            # Two separate findings: keep them on opposite sides of the breast's axis in both views.
            mass, cluster = lesions
            apart = tuple(-math.copysign(max(abs(o), 0.5), m) for o, m in zip(cluster.offset, mass.offset))
            lesions[1] = replace(cluster, offset=apart)
        if pattern == "coarse_calcifications":
            lesions.append(self._lesion("calcifications", "coarse", False, DIAMETERS["coarse calcifications"], annotated, birads))
        if kind == "benign" and next(self.lymph_nodes):
            lesions.append(self._lesion("lymph_node", "oval", False, DIAMETERS["lymph node"], True, None))
        return tuple(lesions)

    def _mass(self, malignant: bool, birads: int, annotated: bool, with_calcifications: bool) -> Lesion:
        diameters = DIAMETERS["malignant mass" if malignant else "benign mass"]
        shape = next(self.mass_shapes[malignant])
        mass = self._lesion("mass", shape, malignant, diameters, annotated, birads, with_calcifications)
        if annotated and not self.chest_wall_taken:
            # One finding lies against the chest wall, where (as in VinDr) its box reaches a
            # little past the image edge.
            self.chest_wall_taken = True
            mass = replace(mass, depth=0.0)
        return mass

    def _lesion(
        self, kind, shape, malignant, diameters, annotated, birads, with_calcifications=False
    ) -> Lesion:
        rng = self.rng
        return Lesion(
            kind=kind,
            shape=shape,
            malignant=malignant,
            diameter=float(rng.uniform(*diameters)),
            depth=float(rng.uniform(0.3, 0.75)),
            offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
            annotated=annotated,
            birads=birads,
            seed=int(rng.integers(2**31)),
            with_calcifications=with_calcifications,
        )
