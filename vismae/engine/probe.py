"""Frozen-encoder evaluation: what an encoder's features know before any finetuning.

An encoder embeds every image of a prepared cache once (each chosen stage's map pooled by
mean and by max over its positions: one bright finding should not be averaged away). Two
classifiers then read the embeddings of the task's rows, both from scikit-learn, both fitted
on train with their one setting chosen on val:

- a linear probe: standardized features, L2 logistic regression, C chosen by validation AUC;
- a kNN classifier: cosine distance on standardized features, k chosen by validation AUC.

Test scores get patient-bootstrap intervals (``vismae.metrics``). The same functions serve
the pretraining monitor, which scores the probes on val every few epochs.

A probe is the cheap yardstick of pretraining: it needs no training of the encoder, runs in
seconds on a CPU, and its number moves only when the features change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vismae.data.dataset import read_cached_image
from vismae.data.labelled_dataset import prepare_task_rows
from vismae.metrics import bootstrap_ci, metrics_with_ci

# Inverse regularization strengths and neighbour counts tried on val.
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
KNN_KS = (5, 10, 20, 40)
POOLS = ("mean", "max")
PREDICTIONS_FILE = "predictions.csv"  # `vismae probe`: val and test images, one probability column per probe


@dataclass
class ProbeData:
    """Which rows of a cache the probes are fitted and scored on (the finetuning data keys)."""

    negative: list[str] = field(default_factory=lambda: ["benign"])
    positive: list[str] = field(default_factory=lambda: ["malignant"])
    views: list[str] = field(default_factory=list)
    roi: str = "any"
    val_fraction: float = 0.2  # of training patients, carved only when the rows have no val split
    split_seed: int = 0


# ---------------------------------------------------------------------------------------------
# Embeddings.


def parse_stages(stages: str | Sequence[int], num_stages: int) -> list[int]:
    """``"last"``, ``"all"``, or stage numbers (``"0,3"`` or ``[0, 3]``; -1 is the last) as
    sorted stage indices of an encoder with ``num_stages`` stages."""
    if isinstance(stages, str):
        text = stages.strip().lower()
        if text == "last":
            return [num_stages - 1]
        if text == "all":
            return list(range(num_stages))
        try:
            stages = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"stages must be 'last', 'all' or stage numbers like '0,3', got {stages!r}") from None
    chosen = sorted({stage % num_stages if -num_stages <= stage < num_stages else stage for stage in stages})
    bad = [stage for stage in chosen if not 0 <= stage < num_stages]
    if not chosen or bad:
        raise ValueError(f"stages {list(stages)}: the encoder has stages 0..{num_stages - 1} (or -1 for the last)")
    return chosen


def load_images(paths: Sequence[str], size: tuple[int, int]) -> torch.Tensor:
    """Cached images as N x 1 x H x W in [0, 1], resized (area) when the cache has another size."""
    import cv2

    images = np.empty((len(paths), 1, *size), dtype=np.float32)
    for index, path in enumerate(paths):
        pixels = read_cached_image(path)
        if pixels.shape != tuple(size):
            pixels = cv2.resize(pixels, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        images[index, 0] = pixels
    return torch.from_numpy(images)


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: torch.Tensor, stages: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """N x D float32: for each of ``stages`` (in order), its NCHW map pooled by mean then by max.
    The last stage is taken after the final norm, as finetuning heads see it. The encoder is
    put in eval mode for the pass and given back in the mode it was in."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    parts = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            maps = encoder.forward_intermediates(batch, indices=list(stages), norm=True, intermediates_only=True)
            pooled = [pool for stage_map in maps for pool in (stage_map.mean(dim=(2, 3)), stage_map.amax(dim=(2, 3)))]
            parts.append(torch.cat(pooled, dim=1).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(parts).numpy()


def feature_names(encoder, stages: Sequence[int]) -> list[str]:
    """One name per embedding column: ``stage{s}_{pool}_{channel}``."""
    dims = encoder.config.stage_dims
    return [f"stage{stage}_{pool}_{channel}" for stage in stages for pool in POOLS for channel in range(dims[stage])]


# ---------------------------------------------------------------------------------------------
# Probes.


def _val_auc(y_val: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(y_val, scores)) if len(np.unique(y_val)) == 2 else math.nan


def _pick(candidates: dict, y_val: np.ndarray, X_val: np.ndarray):
    """The candidate with the best validation AUC (the first on ties or where AUC is undefined)."""
    best_key, best_auc = None, -math.inf
    aucs = {}
    for key, model in candidates.items():
        auc = _val_auc(y_val, model.predict_proba(X_val)[:, 1])
        aucs[key] = auc
        if best_key is None or auc > best_auc:
            best_key, best_auc = key, auc
    return best_key, aucs


def fit_linear_probe(X_train, y_train, X_val, y_val, cs: Sequence[float] = PROBE_CS):
    """(model, chosen C, validation AUC per C): standardized L2 logistic regression."""
    models = {
        c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(X_train, y_train) for c in cs
    }
    chosen, aucs = _pick(models, y_val, X_val)
    return models[chosen], chosen, aucs


def fit_knn(X_train, y_train, X_val, y_val, ks: Sequence[int] = KNN_KS):
    """(model, chosen k, validation AUC per k): cosine kNN on standardized features; k larger
    than the training set is left out."""
    usable = [k for k in ks if k <= len(y_train)] or [len(y_train)]
    models = {
        k: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, metric="cosine")).fit(X_train, y_train)
        for k in usable
    }
    chosen, aucs = _pick(models, y_val, X_val)
    return models[chosen], chosen, aucs


def _check_fit_rows(y: np.ndarray, split: np.ndarray, where: str) -> None:
    for name in ("train", "val"):
        present = np.unique(y[split == name])
        if len(present) < 2:
            raise ValueError(f"{where}: the {name} rows hold {len(y[split == name])} images of classes {present.tolist()}; "
                             "a probe needs both classes in train and in val")


def probe_scores(embeddings: np.ndarray, rows: pd.DataFrame, where: str = "probe") -> dict:
    """Fit both probes on ``rows`` (columns split, target; one embedding row each) and return,
    per probe, the chosen setting, validation AUCs and the scores of the val and test rows."""
    y = rows["target"].to_numpy()
    split = rows["split"].to_numpy()
    _check_fit_rows(y, split, where)
    train, val = split == "train", split == "val"
    results = {}
    for name, fit, setting in (("linear", fit_linear_probe, "C"), ("knn", fit_knn, "k")):
        model, chosen, aucs = fit(embeddings[train], y[train], embeddings[val], y[val])
        scores = model.predict_proba(embeddings)[:, 1]
        results[name] = {setting: chosen, "val_auc_by_setting": {str(key): auc for key, auc in aucs.items()},
                         "val_auc": aucs[chosen], "scores": scores}  # fmt: skip
    return results


def probe_metrics(embeddings: np.ndarray, rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0, where: str = "probe",
                  fitted: dict | None = None) -> dict:  # fmt: skip
    """Both probes fitted on train, chosen on val, scored on test with patient-bootstrap intervals
    (``fitted``: what ``probe_scores`` returned for these rows, when the caller has it)."""
    fitted = fitted or probe_scores(embeddings, rows, where)
    test = rows["split"].to_numpy() == "test"
    if not test.any():
        raise ValueError(f"{where}: no test rows to score the probes on")
    y_test, patients = rows["target"].to_numpy()[test], rows["patient_id"].to_numpy()[test]
    out = {}
    for name, result in fitted.items():
        summary = {key: value for key, value in result.items() if key != "scores"}
        summary["test"] = metrics_with_ci(y_test, result["scores"][test], patients, n_boot=n_boot, seed=seed)
        out[name] = summary
    return out


def paired_auc_difference(y, score_a, score_b, patient_ids, n_boot: int = 1000, seed: int = 0) -> dict:
    """ROC AUC of ``score_a`` minus that of ``score_b`` on the same images, with a patient-
    bootstrap interval: both scores are resampled together, so what the two share (which
    patients happen to be hard) cancels out of the difference."""

    def difference(target, a, b):
        if len(np.unique(target)) < 2:
            return math.nan
        return roc_auc_score(target, a) - roc_auc_score(target, b)

    return bootstrap_ci(difference, (np.asarray(y), np.asarray(score_a), np.asarray(score_b)), patient_ids,
                        n_boot=n_boot, seed=seed)  # fmt: skip


def task_rows(frame: pd.DataFrame, data: ProbeData | None = None) -> tuple[pd.DataFrame, dict]:
    """The classification rows the probes use, with a target column and a val split (carved
    from train by patient when the cache has none), and the counts they rest on."""
    return prepare_task_rows(frame, "classify", data or ProbeData())


def rows_in(frame: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Positions in ``frame`` of each of ``rows`` (matched by image_id)."""
    positions = pd.Series(np.arange(len(frame)), index=frame["image_id"].to_numpy())
    if positions.index.has_duplicates:
        raise ValueError("the manifest lists an image_id twice; embeddings need one row per image")
    return positions.loc[rows["image_id"].to_numpy()].to_numpy()


# ---------------------------------------------------------------------------------------------
# A probe run: `vismae probe`.


def run_probe(
    init: str,
    manifest: str,
    out: str,
    stages: str | Sequence[int] = "all",
    data: ProbeData | None = None,
    size: int | tuple[int, int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Embed every image of ``manifest`` (a prepared cache's) with the frozen ``init`` encoder
    (anything ``load_encoder`` reads, ``random:<preset>`` included), fit and score both probes,
    and write ``out/embeddings.npz`` (image_id, embedding), ``out/metrics.json`` and
    ``out/predictions.csv`` (each val and test image's probability under each probe)."""
    from pathlib import Path

    from vismae.data.labelled_dataset import cache_image_size
    from vismae.data.manifest import read_manifest
    from vismae.io import write_csv, write_json
    from vismae.models.random_init import is_random_init
    from vismae.models.weights import load_encoder

    frame = read_manifest(manifest)
    if frame.empty:
        raise ValueError(f"{manifest}: the manifest has no rows to embed")
    image_size = cache_image_size(frame["path"].tolist()) if size is None else _pair(size)
    if is_random_init(init):
        # A random encoder's draw is part of what is measured: seed it like a finetuning run.
        torch.manual_seed(seed)
    encoder = load_encoder(init, img_size=image_size, verbose=False)
    chosen = parse_stages(stages, encoder.config.num_stages)
    embeddings = embed(encoder, load_images(frame["path"].tolist(), image_size), chosen, batch_size)
    rows, notes = task_rows(frame, data)
    task_embeddings = embeddings[rows_in(frame, rows)]
    fitted = probe_scores(task_embeddings, rows, str(manifest))
    metrics = probe_metrics(task_embeddings, rows, n_boot=n_boot, seed=seed, where=str(manifest), fitted=fitted)

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        folder / "embeddings.npz", image_id=frame["image_id"].to_numpy().astype(str), embedding=embeddings,
        feature=np.array(feature_names(encoder, chosen)),
    )  # fmt: skip
    summary = {
        "init": init,
        "manifest": str(manifest),
        "image_size": list(image_size),
        "stages": chosen,
        "pools": list(POOLS),
        "embedding_dim": int(embeddings.shape[1]),
        "images_embedded": len(frame),
        "rows": notes["splits"],
        "left_out": notes["left_out"],
        "validation": notes["validation"],
        "seed": seed,
        **metrics,
    }
    write_json(folder / "metrics.json", summary)
    # Each scored image's probabilities, for paired comparisons of two encoders on the same images.
    scored = rows[["image_id", "patient_id", "split", "target"]].assign(**{name: fit["scores"] for name, fit in fitted.items()})
    write_csv(folder / PREDICTIONS_FILE, scored[scored["split"] != "train"], float_format="%.17g")
    return summary


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def summary_lines(summary: dict) -> list[str]:
    """The probe run in a few lines: test ROC AUC of each probe with its interval."""
    from vismae.metrics import value_with_interval

    splits = summary["rows"]
    lines = [
        f"{summary['init']}: stages {summary['stages']}, {summary['embedding_dim']} features; "
        f"train {splits['train']['images']} / val {splits['val']['images']} / test {splits['test']['images']} images"
    ]
    for name, setting in (("linear", "C"), ("knn", "k")):
        result = summary[name]
        lines.append(f"  {name:<6} ({setting}={result[setting]}, val AUC {result['val_auc']:.3f}): test ROC AUC "
                     f"{value_with_interval(result['test']['roc_auc'])}")  # fmt: skip
    return lines
