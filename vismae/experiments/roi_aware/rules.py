"""The rules of the ROI-aware experiment that need no model: its procedures, its groups,
which model serves a group too small to train, the annotation-only floor, and the blinding
of test rows.

A group is one standard view and one ROI-presence stratum, "RCC_with_roi" ... "LMLO_without_roi".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from vismae.data.manifest import VIEW_NAMES

STRATA = {True: "with_roi", False: "without_roi"}
# What a model or the router may see of a test image: where it is and which view it shows. Not
# its label, BI-RADS, ROI shapes, mask or ROI presence: a deployed model has none of them.
BLIND_COLUMNS = ("image_id", "patient_id", "study_id", "dataset", "path", "view", "laterality", "view_name", "split")
ANNOTATION_WARNING = "USES TEST-TIME ANNOTATIONS"
# The label of BI-RADS 1 (no finding) images, which the paper leaves out and screening does not.
NORMAL_LABEL = "normal"
POPULATIONS = {
    "paper": "the benign and malignant images only (BI-RADS 2-5 where labels follow BI-RADS, as for VinDr); "
    "normal (BI-RADS 1) images left out, as in the paper",
    "screening": "the paper's test images and every normal (BI-RADS 1) test image as a negative, as a screening "
    "programme reads them",
}


@dataclass(frozen=True)
class Procedure:
    title: str
    uses_test_annotations: bool  # does any test image's prediction depend on its annotation?
    task: str = "malignancy"  # what its decisions are scored against: malignancy or roi_presence
    population: str = "paper"  # the test images it is scored on (POPULATIONS)


PROCEDURES = {
    "comparative": Procedure("Comparative: one classifier per view, ROI ignored (paper 2.2.4)", False),
    "annotated": Procedure("ROI-stratified, routed by test-time ROI annotations (paper 2.2.3)", True),
    "annotation_only": Procedure("Annotation only: ROI annotated => malignant, no pixels", True),
    "deployable": Procedure("ROI-stratified, routed by a trained ROI-presence model (deployable)", False),
    "router": Procedure("Router: ROI presence predicted from pixels, scored against annotations", False, "roi_presence"),
    # population: screening only. The same router and classifiers (trained on benign and
    # malignant images), scored on the paper's test images plus the normal ones as negatives.
    "deployable_screening": Procedure(
        "ROI-stratified, routed by a trained ROI-presence model (deployable), screening population: "
        "normal (BI-RADS 1) test images added as negatives", False, population="screening"
    ),
}


def procedures_for(population: str) -> list[str]:
    """The procedures an experiment with ``population`` (paper or screening) reports."""
    return [name for name, procedure in PROCEDURES.items() if population == "screening" or procedure.population == "paper"]


def procedure_label(name: str) -> str:
    """The procedure's title, flagged wherever it reads test-time annotations."""
    procedure = PROCEDURES[name]
    return f"{procedure.title} [{ANNOTATION_WARNING}]" if procedure.uses_test_annotations else procedure.title


# ---------------------------------------------------------------------------------------------
# Groups and routes.


def group_name(view_name: str, has_roi: bool) -> str:
    return f"{view_name}_{STRATA[bool(has_roi)]}"


def group_names(rows: pd.DataFrame, has_roi: pd.Series | np.ndarray) -> pd.Series:
    """Each row's group from its view and a ROI presence (annotated or predicted)."""
    presence = pd.Series(np.asarray(has_roi, dtype=bool), index=rows.index)
    return rows["view_name"].str.cat(presence.map(STRATA), sep="_")


def blind(rows: pd.DataFrame) -> pd.DataFrame:
    """Test rows as every model and the router see them: ``BLIND_COLUMNS`` only."""
    return rows[list(BLIND_COLUMNS)].copy()


def annotated_routes(rows: pd.DataFrame) -> pd.Series:
    """The paper's routing: each image to the group of its annotated ROI presence. It reads
    the view and ``has_roi`` and nothing else, so never a test label."""
    return group_names(rows[["view_name"]], rows["has_roi"])


def annotation_only(rows: pd.DataFrame) -> pd.DataFrame:
    """The floor "ROI present => malignant", without a pixel: score 1.0 with an annotated
    ROI, 0.0 without, and the same as the decision."""
    score = rows["has_roi"].astype(bool).astype(float).to_numpy()
    return pd.DataFrame(
        {"image_id": rows["image_id"].to_numpy(), "model": "annotation", "score": score, "decision": score.astype(int)}
    )


# ---------------------------------------------------------------------------------------------
# Which model serves each group.


@dataclass
class GroupPlan:
    group: str
    view: str
    has_roi: bool
    rule: str  # own | pooled | constant
    model: str  # the key of the model that scores the group's images
    reason: str  # why the group was not trained alone; empty when it was
    train_images: int
    train_positives: int
    val_images: int
    val_positives: int
    prevalence: float | None = None  # the constant score, for rule "constant"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SizeRule:
    """What a group needs to train a classifier of its own (``small_groups`` of the config)."""

    min_images: int
    min_per_class: int
    min_val_per_class: int


def why_untrainable(rows: pd.DataFrame, needs: SizeRule) -> str:
    """Why ``rows`` (train and val, with a 0/1 ``target``) cannot train a classifier of their
    own; empty when they can."""
    train = rows.loc[rows["split"] == "train", "target"]
    val = rows.loc[rows["split"] == "val", "target"]
    train_positives, val_positives = int(train.sum()), int(val.sum())
    if len(train) < needs.min_images:
        return f"{len(train)} training images < min_images {needs.min_images}"
    train_negatives, val_negatives = len(train) - train_positives, len(val) - val_positives
    if min(train_positives, train_negatives) < needs.min_per_class:
        return f"{train_positives} malignant / {train_negatives} benign training images < min_per_class {needs.min_per_class}"
    if min(val_positives, val_negatives) < needs.min_val_per_class:
        return f"{val_positives} malignant / {val_negatives} benign validation images < min_val_per_class {needs.min_val_per_class}"
    return ""


def _prevalence(train: pd.DataFrame, view: str, has_roi: bool) -> tuple[float, str]:
    """The group's training prevalence; a group with no training image borrows its stratum's,
    and a stratum with none the whole training split's."""
    for scope, rows in (
        ("the group", train[(train["view_name"] == view) & (train["has_roi"] == has_roi)]),
        (f"the {STRATA[has_roi]} stratum", train[train["has_roi"] == has_roi]),
        ("all training images", train),
    ):
        if len(rows):
            return float(rows["target"].mean()), scope
    raise ValueError("no training rows to take a prevalence from")


def plan_groups(rows: pd.DataFrame, rule: str, needs: SizeRule) -> list[GroupPlan]:
    """The eight groups and the model each uses, from train and val ``rows`` (columns
    view_name, has_roi, split, target). A group that passes ``why_untrainable`` gets its own
    classifier; any other follows ``rule``: "pooled" (the stratum across views, or constant
    when the stratum fails too) or "constant" (its training prevalence)."""
    train = rows[rows["split"] == "train"]
    plans = []
    for has_roi in (True, False):
        stratum = rows[rows["has_roi"] == has_roi]
        stratum_problem = why_untrainable(stratum, needs)
        for view in VIEW_NAMES:
            group = group_name(view, has_roi)
            members = stratum[stratum["view_name"] == view]
            counts = dict(
                train_images=int((members["split"] == "train").sum()),
                train_positives=int(members.loc[members["split"] == "train", "target"].sum()),
                val_images=int((members["split"] == "val").sum()),
                val_positives=int(members.loc[members["split"] == "val", "target"].sum()),
            )
            reason = why_untrainable(members, needs)
            if not reason:
                plans.append(GroupPlan(group, view, has_roi, "own", group, "", **counts))
            elif rule == "pooled" and not stratum_problem:
                plans.append(GroupPlan(group, view, has_roi, "pooled", f"pooled_{STRATA[has_roi]}", reason, **counts))
            else:
                if rule == "pooled":
                    reason += f"; pooled {STRATA[has_roi]} stratum too: {stratum_problem}"
                prevalence, scope = _prevalence(train, view, has_roi)
                if scope != "the group":
                    reason += f"; prevalence taken from {scope}"
                plans.append(GroupPlan(group, view, has_roi, "constant", f"constant_{group}", reason, **counts, prevalence=prevalence))
    return plans
