"""The models of the ROI-aware experiment and how routed test images are scored by them.

Training and prediction go through an ``Engine``: the finetuning engine in a real run, a
trivial stand-in in tests of the routing and merging logic. Either way one model is one
``finetune`` call, and test images are scored afterwards, by ``predict``, from rows that carry
no label and no annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from vismae.engine.finetune_config import FinetuneConfig

SCORE_COLUMNS = ["image_id", "model", "score", "decision"]


class Engine(Protocol):
    def finetune(self, frame: pd.DataFrame, init: str, task: str, config: FinetuneConfig, run_dir: Path):
        """Train one model on the train and val rows of ``frame``; return an object with
        ``run_dir`` and ``threshold`` (the validation-chosen one; None for a segmenter)."""

    def predict(self, run_dir: Path, rows: pd.DataFrame) -> pd.DataFrame:
        """A finished run's outputs for ``rows``, one row each, in order: ``image_id`` and
        ``probability``, ``prediction`` (classifier at its threshold) or
        ``predicted_area_fraction`` (segmenter)."""


class FinetuneEngine:
    """The finetuning engine: ``vismae.engine.finetune.finetune`` and ``predict_with_run``."""

    def __init__(self, batch_size: int = 16, num_workers: int = 0):
        self.batch_size = batch_size
        self.num_workers = num_workers

    def finetune(self, frame, init, task, config, run_dir):
        from vismae.engine.finetune import finetune

        return finetune(frame, init, task, config, run_dir)

    def predict(self, run_dir, rows):
        from vismae.engine.predict import predict_with_run

        table = predict_with_run(run_dir, with_placeholders(rows), self.batch_size, self.num_workers)
        return table.drop(columns=["label", "has_roi", "target"], errors="ignore")


def with_placeholders(rows: pd.DataFrame) -> pd.DataFrame:
    """Blind rows with the cache manifest columns the engine's image loader expects, filled
    with "unknown" values. The engine copies them into its output table and nothing reads
    them: ``FinetuneEngine.predict`` drops them again."""
    filler = {"label": "unknown", "birads": pd.NA, "has_roi": pd.NA, "roi": [[] for _ in range(len(rows))], "mask_path": ""}
    missing = {column: value for column, value in filler.items() if column not in rows.columns}
    return rows.assign(**missing)


# ---------------------------------------------------------------------------------------------
# Trained and constant models.


@dataclass
class TrainedModel:
    key: str
    run_dir: Path
    threshold: float

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "threshold": self.threshold}

    def score(self, engine: Engine, rows: pd.DataFrame) -> pd.DataFrame:
        table = engine.predict(self.run_dir, rows)
        if list(table["image_id"]) != list(rows["image_id"]):
            raise RuntimeError(f"{self.run_dir}: the predictions do not follow the rows they were asked for")
        return pd.DataFrame(
            {
                "image_id": table["image_id"].to_numpy(),
                "model": self.key,
                "score": table["probability"].to_numpy(dtype=float),
                "decision": table["prediction"].to_numpy(dtype=int),
            }
        )


@dataclass
class ConstantModel:
    """A group too small to train: every image gets the group's training prevalence as its
    score. A constant ranks nothing (its AUC is that of a coin); its decision is the group's
    majority class."""

    key: str
    prevalence: float

    def to_dict(self) -> dict:
        return {"constant": self.prevalence}

    def score(self, engine: Engine, rows: pd.DataFrame) -> pd.DataFrame:
        n = len(rows)
        return pd.DataFrame(
            {
                "image_id": rows["image_id"].to_numpy(),
                "model": self.key,
                "score": np.full(n, self.prevalence),
                "decision": np.full(n, int(self.prevalence >= 0.5)),
            }
        )


def train_classifier(engine: Engine, rows: pd.DataFrame, key: str, init: str, config: FinetuneConfig, run_dir: Path) -> TrainedModel:
    """One classifier on the train and val ``rows``: one ``finetune`` call. Test rows never
    reach it; they are scored later through ``score_routed``."""
    if (rows["split"] == "test").any():
        raise ValueError(f"{key}: test rows must not reach training")
    try:
        result = engine.finetune(rows, init, "classify", config, run_dir)
    except ValueError as error:
        raise ValueError(f"the {key} classifier ({run_dir}): {error}") from error
    return TrainedModel(key, Path(result.run_dir), float(result.threshold))


def score_routed(engine: Engine, models: dict, rows: pd.DataFrame, routes: dict[str, pd.Series]) -> dict[str, pd.DataFrame]:
    """For each routing (a model key per row, with the rows' index), every row scored by exactly
    the model its route names: ``image_id, model, score, decision`` in the order of ``rows``.

    Each model is loaded once and scores the union of the rows any routing sends it, so
    routings that agree on an image give it the very same score.
    """
    for name, route in routes.items():
        if not route.index.equals(rows.index):
            raise ValueError(f"routing {name!r} must have one entry per row, with the rows' index")
        unknown = sorted(set(route) - set(models))
        if unknown:
            raise ValueError(f"routing {name!r} names models that were not trained: {unknown}")
    wanted = pd.concat(routes.values())
    scored = {}
    for key in dict.fromkeys(wanted):
        needed = rows.index.isin(wanted.index[wanted == key])
        scored[key] = models[key].score(engine, rows[needed]).set_index("image_id")
    table = pd.concat(scored, names=["key", "image_id"])
    image_ids = rows["image_id"].to_numpy()
    return {
        name: table.loc[pd.MultiIndex.from_arrays([route.to_numpy(), image_ids])].reset_index()[SCORE_COLUMNS]
        for name, route in routes.items()
    }
