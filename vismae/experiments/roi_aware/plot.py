"""ROC curves of every procedure on the merged test set, in one PNG: benign/malignant on the
left, the router's ROI presence on the right. Procedures that read test-time annotations are
dashed and say so in the legend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from vismae.experiments.roi_aware.rules import PROCEDURES, procedure_label  # noqa: E402
from vismae.io import atomic_path  # noqa: E402


def _curves(axes, predictions: pd.DataFrame, procedures: list[str]) -> None:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(procedures):
        table = predictions[predictions["procedure"] == name]
        curves = [
            (*roc_curve(part["target"], part["score"])[:2], roc_auc_score(part["target"], part["score"]))
            for _, part in table.groupby("seed")
            if part["target"].nunique() == 2
        ]
        if not curves:
            continue
        aucs = [auc for *_, auc in curves]
        spread = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
        label = f"{procedure_label(name)}: AUC {np.mean(aucs):.3f}{spread}"
        style = "--" if PROCEDURES[name].uses_test_annotations else "-"
        color = colors[index % len(colors)]
        for seed_index, (fpr, tpr, _) in enumerate(curves):
            # One legend entry per procedure, however many seeds.
            axes.plot(fpr, tpr, color=color, linestyle=style, alpha=0.85, label=label if seed_index == 0 else None)
    axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_aspect("equal")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7, frameon=False)


def roc_figure(predictions: pd.DataFrame):
    """The figure: ROC curves (one per procedure and seed) of the merged test predictions."""
    malignancy = [name for name, procedure in PROCEDURES.items() if procedure.task == "malignancy"]
    routing = [name for name, procedure in PROCEDURES.items() if procedure.task == "roi_presence"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 7.5))
    _curves(left, predictions, malignancy)
    left.set_title("Benign vs malignant, merged test set")
    _curves(right, predictions, routing)
    right.set_title("Router: ROI presence, test set")
    figure.tight_layout()
    return figure


def plot_roc(predictions: pd.DataFrame, path: Path) -> Path:
    figure = roc_figure(predictions)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
