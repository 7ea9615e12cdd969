"""The scored predictions behind each point of a sweep's curve, for the paired comparisons of
``vismae.paired``: a run's predictions.csv rows of the scored split, one table per run (or per
seed, its folds together, in k-fold sweeps scored on val). Runs without a predictions.csv
(sweeps made before it existed) take part in no comparison."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PREDICTIONS_FILE = "predictions.csv"


def scored_predictions(run_dir: Path, split: str) -> pd.DataFrame | None:
    """The rows of ``split`` in a run's predictions.csv; None where the run wrote none."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    return table[table["split"] == split].reset_index(drop=True)


def point_tables(folder: Path, runs: pd.DataFrame, split: str, pool_folds: bool) -> list[pd.DataFrame]:
    """The scored predictions behind one point of the curve (one init, one fraction): one table
    per run, or with ``pool_folds`` one per seed, its folds' held-out rows together (k-fold
    sweeps scored on val: each fold scores other patients)."""
    tables = {}
    for _, run in runs.iterrows():
        table = scored_predictions(Path(folder) / "runs" / run["run"], split)
        if table is None or table.empty:
            continue
        key = run["seed"] if pool_folds else run["run"]
        tables.setdefault(key, []).append(table)
    return [pd.concat(parts, ignore_index=True) for parts in tables.values()]
