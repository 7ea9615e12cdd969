"""The runs of a ``method: probe`` sweep: a linear probe on each frozen encoder, fitted on the
run's training rows, in place of finetuning.

    probe_runner(config) -> run(spec, rows, run_dir) -> metrics

Each run leaves what a finetuning run leaves for the sweep and its report, computed the same
way wherever finetuning has a way:

    run_dir/
      manifest.csv, data.json   the rows used and their counts (prepare_task_rows, as finetuning)
      probe.json                the encoder, stages, embedding size, C chosen and validation AUC per C
      threshold.json            chosen on the validation predictions by finetuning's decide_threshold
      predictions.csv           one row per val and test image, finetuning's columns
      metrics.json              val and test metrics with finetuning's bootstrap and seed

The embeddings are the slow part and depend on the init alone: the runner embeds every image
of the sweep's task rows once per init and process, at the first run of that init, and every
run of that init (any fraction, seed or fold) reads them by image_id. The probe is then a few
seconds of logistic regression on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vismae.data.labelled_dataset import prepare_task_rows, readable_rows
from vismae.data.manifest import CACHE_COLUMNS, IMAGE_KIND, read_manifest, write_manifest
from vismae.engine.finetune import METRICS_FILE, PREDICTIONS_FILE, decide_threshold, report, select_rows
from vismae.engine.level_metrics import run_level_metrics
from vismae.engine.predict import THRESHOLD_FILE, prediction_table, with_threshold, write_predictions
from vismae.engine.probe import embed, fit_linear_probe, load_images, parse_stages
from vismae.experiments.label_efficiency.config import SweepConfig
from vismae.io import write_json
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, images_seen_in_pretraining
from vismae.models.random_init import is_random_init

PROBE_FILE = "probe.json"
# A random init is drawn once per init with this seed (that of `vismae probe`'s default), so
# every shard and process embeds with the same random encoder and every seed shares its features.
RANDOM_INIT_SEED = 0
SPLITS_PREDICTED = ("val", "test")


# ---------------------------------------------------------------------------------------------
# Embeddings: once per init, by image_id.


def embed_images(
    source: str, paths: Sequence[str], image_size: tuple[int, int], stages: str, batch_size: int, model_settings
) -> tuple[np.ndarray, dict]:
    """N x D embeddings of the cached images ``paths`` by the frozen encoder ``source`` (loaded
    as finetuning loads it: ``model_settings`` is finetune.model), and what they are: stages,
    image size, embedding size. Images are read ``batch_size`` at a time, so a large cache
    never sits in memory whole."""
    from vismae.models.weights import load_encoder

    with torch.random.fork_rng(devices=[]):  # the draw of a random init leaves the caller's generator alone
        torch.manual_seed(RANDOM_INIT_SEED)
        encoder = load_encoder(source, img_size=image_size, verbose=False, fold_input_norm=model_settings.fold_input_norm,
                               **model_settings.overrides)  # fmt: skip
    try:
        chosen = parse_stages(stages, encoder.config.num_stages)
    except ValueError as error:
        raise ValueError(f"probe.stages: {error}") from None
    encoder.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    parts = [
        embed(encoder, load_images(paths[start : start + batch_size], image_size), chosen, batch_size)
        for start in range(0, len(paths), batch_size)
    ]
    width = sum(2 * encoder.config.stage_dims[stage] for stage in chosen)
    embeddings = np.concatenate(parts) if parts else np.empty((0, width), np.float32)
    return embeddings, {"stages": chosen, "image_size": list(image_size), "embedding_dim": int(embeddings.shape[1])}


class EmbeddingCache:
    """Each init's embeddings by image_id, computed on first use for the sweep's task rows."""

    def __init__(self, config: SweepConfig, all_rows: Callable[[], pd.DataFrame]):
        self.config = config
        self.all_rows = all_rows  # every row a run of this sweep may hold
        self.vectors: dict[str, dict[str, np.ndarray]] = {}  # init -> image_id -> embedding
        self.about: dict[str, dict] = {}  # init -> stages, image size, embedding size

    def features(self, init: str, rows: pd.DataFrame, image_size: tuple[int, int]) -> np.ndarray:
        """The embeddings of ``rows`` (in their order) by ``init``'s encoder."""
        if init not in self.vectors:
            self._add(init, self.all_rows(), image_size)
        missing = rows.loc[~rows["image_id"].astype(str).isin(self.vectors[init].keys())]
        if len(missing):  # rows from outside the sweep's own selection: embedded now, kept too
            self._add(init, missing, image_size)
        known = self.vectors[init]
        return np.stack([known[str(image_id)] for image_id in rows["image_id"]])

    def _add(self, init: str, rows: pd.DataFrame, image_size: tuple[int, int]) -> None:
        if self.about.get(init, {}).get("image_size", list(image_size)) != list(image_size):
            raise ValueError(f"inits.{init}: embedded at {self.about[init]['image_size']} px, now asked for {list(image_size)}; "
                             "a sweep's images must share one size (finetune.data.size)")  # fmt: skip
        rows = rows.drop_duplicates("image_id")
        probe = self.config.probe
        print(f"  embedding {len(rows)} images with {init} ({self.config.inits[init]}), stages {probe.stages}", flush=True)
        started = time.perf_counter()
        embeddings, about = embed_images(self.config.inits[init], rows["path"].tolist(), image_size, probe.stages,
                                         probe.batch_size, self.config.finetune.model)  # fmt: skip
        print(f"  embedded in {time.perf_counter() - started:.1f} s: {about['embedding_dim']} features per image", flush=True)
        self.vectors.setdefault(init, {}).update(zip(rows["image_id"].astype(str), embeddings))
        self.about[init] = about


# ---------------------------------------------------------------------------------------------
# The probe of one run.


def fit_probe(X_train, y_train, X_val, y_val, cs: Sequence[float]) -> tuple[object, float, dict, str]:
    """(model, C, validation score per C, what chose C): ``fit_linear_probe``'s choice by
    validation ROC AUC; where the validation rows hold one class and AUC is undefined, the C of
    the lowest validation log loss, as finetuning then selects its epoch by validation loss."""
    if len(np.unique(y_val)) == 2:
        model, chosen, aucs = fit_linear_probe(X_train, y_train, X_val, y_val, cs)
        return model, chosen, aucs, "auc"
    models = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(X_train, y_train) for c in cs}
    losses = {c: float(log_loss(y_val, model.predict_proba(X_val)[:, 1], labels=[0, 1])) for c, model in models.items()}
    chosen = min(losses, key=losses.get)
    return models[chosen], chosen, losses, "loss"


def probe_outputs(model, features: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """What ``infer`` gives for a classifier, from the probe: the probability of class 1 and
    the image's plain log loss (from the logit, so a saturated probability gives no infinity)."""
    logit = model.decision_function(features)
    loss = np.where(targets == 1, np.logaddexp(0.0, -logit), np.logaddexp(0.0, logit))
    return pd.DataFrame({"index": np.arange(len(features)), "probability": model.predict_proba(features)[:, 1], "loss": loss})


def run_probe(spec, rows: pd.DataFrame, run_dir: Path, config: SweepConfig, cache: EmbeddingCache) -> dict:
    """One run of a probe sweep (``spec`` a sweep.RunSpec) on ``rows`` into ``run_dir``: fit on
    train, C and the threshold chosen on val, then val and test predicted and scored."""
    started = time.perf_counter()
    source, recipe = config.inits[spec.init], config.recipe(spec.seed)
    rows, data_notes = prepare_task_rows(rows, config.task, recipe.data)
    image_size = recipe.data.image_size or tuple(data_notes["cache_image_size"])
    features = cache.features(spec.init, rows, image_size)
    split, targets = rows["split"].to_numpy(), rows["target"].to_numpy()
    train, val = split == "train", split == "val"
    model, chosen, scores, selected_by = fit_probe(features[train], targets[train], features[val], targets[val], config.probe.cs)

    tables = {}
    for name in SPLITS_PREDICTED:
        part = split == name
        if part.any():
            outputs = probe_outputs(model, features[part], targets[part])
            tables[name] = prediction_table(rows[part].reset_index(drop=True), outputs, config.task, image_size[0] * image_size[1])
    threshold = decide_threshold(tables["val"], recipe)  # from validation predictions alone
    tables = {name: with_threshold(table, threshold["threshold"]) for name, table in tables.items()}
    parts = {name: rows[split == name].reset_index(drop=True) for name in tables}
    seen = images_seen_in_pretraining(source, parts["test"]["image_id"]) if "test" in parts else None
    probe = {"C": chosen, f"val_{selected_by}_by_C": {str(c): value for c, value in scores.items()}, **cache.about[spec.init]}
    metrics = {
        "method": "probe",
        "task": config.task,
        "init": source,
        "selected_by": selected_by,  # what chose C
        "best_epoch": None,  # nothing is trained in epochs
        "threshold": threshold,
        **{name: report(table, recipe, threshold["threshold"]) for name, table in tables.items()},
        **({SEEN_IN_PRETRAINING: seen} if seen is not None else {}),
        "data": {key: value for key, value in data_notes.items() if key in ("splits", "left_out")},
        "probe": probe,
        **run_level_metrics(recipe, threshold, tables, parts),  # breasts, exams, pF1, calibration
        "seconds": round(time.perf_counter() - started, 1),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(rows[[column for column in (*CACHE_COLUMNS, IMAGE_KIND) if column in rows.columns]], run_dir / "manifest.csv")
    write_json(run_dir / "data.json", data_notes)
    write_json(run_dir / PROBE_FILE, {"init": source, **probe})
    write_json(run_dir / THRESHOLD_FILE, threshold)
    write_predictions(pd.concat(tables.values(), ignore_index=True), run_dir / PREDICTIONS_FILE)
    write_json(run_dir / METRICS_FILE, metrics)  # last, as finetuning writes it
    return metrics


def sweep_rows(config: SweepConfig) -> pd.DataFrame:
    """Every row the sweep's runs draw from (the task's readable rows of its manifest)."""
    rows, _ = select_rows(read_manifest(config.manifest), config.recipe(seed=0))
    return readable_rows(rows)[0]


def probe_runner(config: SweepConfig) -> Callable[..., Mapping]:
    """The sweep's run function for ``method: probe``: (spec, rows, run_dir) -> metrics, of the
    shape finetuning returns. Its embeddings live as long as the function does."""
    cache = EmbeddingCache(config, lambda: sweep_rows(config))

    def run(spec, rows: pd.DataFrame, run_dir: Path) -> Mapping:
        return run_probe(spec, rows, run_dir, config, cache)

    return run
