"""The ROI-aware paper's published results, as data, each with the table it comes from.

Yoshitsugu, Kishimoto and Takemura, "Improving Benign and Malignant Classification in
Mammography with ROI-Aware Deep Learning", Preprints.org, 2025,
doi:10.20944/preprints2025071497.v1. Tables 5-8 give sensitivity, specificity, F-score and
accuracy at two decimals, with no interval, no AUC and no n; the test sets' composition is in
Tables 1 and 3. Column "without consideration of ROI mask image presence" is the paper's
comparative procedure (2.2.4); "with consideration" is its ROI-stratified procedure (2.2.3),
which routes test images by their annotations.

The paper's "F-score" is the harmonic mean of sensitivity and specificity, 2 Se Sp / (Se + Sp):
that reproduces all eight published cells to two decimals (Table 5, stratified: 0.93 and 0.87
give 0.90; Table 7, comparative: 0.29 and 0.68 give 0.41). Binary F1 on the published test
sets does not (Table 5: 0.70, not 0.90), nor does support-weighted F1 everywhere. So it is
held, and compared, as ``f_sens_spec``, never as F1.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = (
    "Yoshitsugu K, Kishimoto K, Takemura T. Improving Benign and Malignant Classification in "
    "Mammography with ROI-Aware Deep Learning. Preprints.org 2025. doi:10.20944/preprints2025071497.v1"
)
PUBLISHED_METRICS = ("sensitivity", "specificity", "f_sens_spec", "accuracy")  # as the tables' rows
F_SCORE_DEFINITION = (
    "The paper's F-score is the harmonic mean of sensitivity and specificity, 2·Se·Sp/(Se+Sp) "
    "(our f_sens_spec): it reproduces all eight published cells from the published sensitivity and "
    "specificity, binary F1 does not."
)


@dataclass(frozen=True)
class TestSet:
    """A published test split: images and malignant images."""

    table: int
    n: int
    positives: int


@dataclass(frozen=True)
class PublishedTable:
    table: int
    dataset: str  # vindr | cdd-cesm
    model: str
    caption: str  # as printed, typos included
    comparative: dict[str, float]  # "without consideration of ROI mask image presence"
    stratified: dict[str, float]  # "with consideration of ROI mask image presence"

    @property
    def source(self) -> str:
        return f"Table {self.table} ({self.model})"


def _row(sensitivity: float, specificity: float, f_score: float, accuracy: float) -> dict[str, float]:
    return dict(zip(PUBLISHED_METRICS, (sensitivity, specificity, f_score, accuracy)))


TEST_SETS = {
    "vindr": TestSet(table=1, n=1318, positives=198),
    "cdd-cesm": TestSet(table=3, n=62, positives=31),
}

TABLES = (
    PublishedTable(5, "vindr", "Swin Transformer", "SwinTransformer / Vindr",
                   comparative=_row(0.00, 1.00, 0.00, 0.85), stratified=_row(0.93, 0.87, 0.90, 0.87)),
    PublishedTable(6, "vindr", "ConvNeXtV2", "ConvNeXt2 / Vindr",
                   comparative=_row(0.00, 1.00, 0.00, 0.85), stratified=_row(0.90, 0.86, 0.88, 0.87)),
    PublishedTable(7, "cdd-cesm", "Swin Transformer", "SwinTransformer / CDD-DESM",
                   comparative=_row(0.29, 0.68, 0.41, 0.48), stratified=_row(0.65, 0.65, 0.65, 0.65)),
    PublishedTable(8, "cdd-cesm", "ConvNeXtV2", "ConvNeXt2 / CDD-DESM",
                   comparative=_row(0.65, 0.65, 0.65, 0.65), stratified=_row(0.74, 0.61, 0.67, 0.68)),
)  # fmt: skip

DATASETS = tuple(dict.fromkeys(table.dataset for table in TABLES))


def published_for(dataset: str) -> list[PublishedTable]:
    """The paper's tables for ``dataset``, Swin Transformer (the closest to our encoder) first."""
    tables = [table for table in TABLES if table.dataset == dataset]
    if not tables:
        raise ValueError(f"the paper publishes no results for {dataset!r}; it has {', '.join(DATASETS)}")
    return sorted(tables, key=lambda table: table.model != "Swin Transformer")
