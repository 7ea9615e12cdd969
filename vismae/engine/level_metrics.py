"""A finetuned classifier's metrics beyond the image, for its run's metrics.json: breast and
exam metrics, operating points, probabilistic F1 and calibration (``vismae.evaluation``), with
breast and exam thresholds, best-pF1 thresholds and the temperature fitted on the validation
predictions and applied unchanged to the test predictions."""

from __future__ import annotations

import pandas as pd

from vismae.evaluation import evaluate_levels, fit_on_validation, with_exam_columns


def run_level_metrics(config, threshold: dict | None, tables: dict[str, pd.DataFrame], parts: dict[str, pd.DataFrame]) -> dict:
    """``{"levels": {"fitted_on_val": ..., "val": ..., "test": ...}}`` for a classifier run
    (``config`` a FinetuneConfig, ``tables`` its predictions per split, ``parts`` its rows per
    split); ``{}`` for a segmenter. A level set that cannot be evaluated says why instead."""
    if config.task != "classify" or threshold is None or "val" not in tables:
        return {}
    settings = config.eval
    try:
        fitted = fit_on_validation(
            with_exam_columns(tables["val"], parts["val"]), threshold["threshold"], threshold.get("rule", settings.threshold_rule),
            settings.target_sensitivity,
        )  # fmt: skip
        levels = {"fitted_on_val": fitted}
        for split, table in tables.items():
            levels[split] = evaluate_levels(with_exam_columns(table, parts[split]), fitted, settings.n_boot, seed=config.train.seed)
    except ValueError as error:
        return {"levels": {"error": f"{type(error).__name__}: {error}"}}
    return {"levels": levels}
