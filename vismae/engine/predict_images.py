"""``vismae predict`` for one finetuned classifier (a run folder or an exported model):

    OUT/
      images.csv       per image: image_id, patient_id, study_id, laterality, view,
                       probability, decision (at the model's image threshold), path
      breasts.csv      per study and side: probability = mean of its views, decision, n_views
      exams.csv        per study: probability = max of its breasts, decision, n_breasts, n_views
      skipped.csv      every file left out (not a mammogram, unreadable, failed to prepare), why
      saliency/        <image>.png: the original image beside its Grad-CAM map; saliency.json
      metrics.json     when the input has benign/malignant labels: image, breast and exam
                       metrics with patient-level intervals (vismae.evaluation)
      reliability.png  the reliability diagram of those labelled images
      predict.json     what was predicted with which model, thresholds and settings, counts

Breast and exam decisions use thresholds chosen on the model's validation images aggregated
to that level (``vismae.evaluation.fit_on_validation``); the image one is the run's own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vismae.data.cache import safe_name
from vismae.engine.deployable import Deployable, read_deployable
from vismae.engine.inference import ModelRunner, choose_device_note
from vismae.engine.predict_inputs import SKIPPED_COLUMNS, PreparedInput, read_input
from vismae.evaluation import evaluate_levels, labelled_images
from vismae.exam_levels import breasts, exams
from vismae.io import write_csv, write_json

IMAGE_COLUMNS = ["image_id", "patient_id", "study_id", "laterality", "view", "probability", "decision"]
DEFAULT_SALIENCY = 64  # maps drawn for at most this many images, those of highest probability


@dataclass
class PredictSettings:
    batch_size: int = 16
    num_workers: int = 2  # image loading processes of the model's data loader
    prepare_workers: int | None = None  # processes decoding raw images; None: all cores
    saliency: int | None = DEFAULT_SALIENCY  # None: every image; 0: none
    n_boot: int = 1000
    seed: int = 0
    salt: str | None = None
    salt_file: str | None = None
    keep_prepared: bool = False
    progress: bool = True


@dataclass
class PredictResult:
    out_dir: Path
    images: pd.DataFrame
    breasts: pd.DataFrame
    exams: pd.DataFrame
    skipped: pd.DataFrame
    metrics: dict | None
    summary: dict


# ---------------------------------------------------------------------------------------------
# Tables.


def targets_of(labels: pd.Series, deployable: Deployable) -> np.ndarray:
    """1 for the model's positive labels, 0 for its negative ones, -1 for any other."""
    negative, positive = deployable.classes()
    return np.where(labels.isin(positive), 1, np.where(labels.isin(negative), 0, -1))


def image_table(scored: pd.DataFrame, prepared: PreparedInput, deployable: Deployable, threshold: float | None) -> pd.DataFrame:
    """images.csv from the scored cache rows; ``path`` is the original file where known."""
    table = scored[["image_id", "patient_id", "study_id", "laterality", "view", "probability"]].copy()
    if threshold is not None:
        table["decision"] = (table["probability"] >= threshold).astype(int)
    table["label"] = scored["label"].to_numpy()
    table["target"] = targets_of(scored["label"], deployable)
    table["path"] = [prepared.originals.get(image_id, path) for image_id, path in zip(scored["image_id"], scored["path"])]
    return table


def level_tables(images: pd.DataFrame, thresholds: dict[str, float] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(breasts, exams) with their decisions: at each level's threshold, or, without thresholds
    (models with thresholds of their own), positive where any image's decision is."""
    scores = ("probability",) if thresholds is not None else ("probability", "decision")
    tables = []
    for level, table in (("breast", breasts(images, scores)), ("exam", exams(images, scores))):
        if thresholds is not None:
            table["decision"] = (table["probability"] >= thresholds[level]).astype(int)
        else:
            table["decision"] = (table["decision"] > 0).astype(int)
        tables.append(_with_study_column(table))
    return tables[0], tables[1]


def _with_study_column(table: pd.DataFrame) -> pd.DataFrame:
    """``exam_id`` shown as ``study_id`` (the patient's id where the study was unknown), the
    decision beside the probability."""
    table = table.rename(columns={"exam_id": "study_id"})
    columns = list(table.columns)
    columns.remove("decision")
    columns.insert(columns.index("probability") + 1, "decision")
    return table[columns]


def written_images(images: pd.DataFrame) -> pd.DataFrame:
    """images.csv's columns: label and target only where the input had labels."""
    columns = [c for c in IMAGE_COLUMNS if c in images] + [c for c in ("route", "model", "router_score") if c in images]
    if (images["target"] >= 0).any():
        columns += ["label", "target"]
    return images[columns + ["path"]]


def written_level(table: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    return table if (images["target"] >= 0).any() else table.drop(columns=["target"], errors="ignore")


# ---------------------------------------------------------------------------------------------
# Saliency.


def saliency_rows(scored: pd.DataFrame, count: int | None) -> pd.DataFrame:
    """The images to draw maps for: all (``count`` None), none (0), or the ``count`` of highest
    probability (those a reader looks at first)."""
    if count is None or count >= len(scored):
        return scored
    return scored.sort_values("probability", ascending=False, kind="stable").head(max(count, 0))


def draw_saliency(runner: ModelRunner, rows: pd.DataFrame, prepared: PreparedInput, images: pd.DataFrame,
                  folder: Path) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """``folder``/<image>.png for each of ``rows``: the image beside its Grad-CAM map, on the
    original file where it is known. Returns (drawn, failed) entries for saliency.json."""
    from vismae.data.dataset import read_cached_image
    from vismae.data.dicom import read_image
    from vismae.engine import gradcam

    maps = runner.saliency(rows)
    allow = bool((runner.deployable.preprocessing or {}).get("allow_for_processing", False))
    by_id = images.set_index("image_id")
    drawn, failed = [], []
    for row in rows.itertuples():
        image_id = row.image_id
        heat, peak = maps[image_id]
        transform = prepared.transforms.get(image_id)
        original = prepared.originals.get(image_id)
        try:
            if original is not None and transform is not None:
                gray = gradcam.display_copy(read_image(original, allow_for_processing=allow))
                shown = gradcam.heat_on_original(heat, transform, gray.shape)
                drawn_on = "original"
            else:
                gray = gradcam.display_copy(read_cached_image(row.path))
                shown = _resized(heat, gray.shape)
                drawn_on = "prepared"
        except (OSError, ValueError) as error:
            failed.append({"image_id": image_id, "reason": f"{type(error).__name__}: {error}"})
            continue
        entry = by_id.loc[image_id]
        decision = entry.get("decision")
        verdict = "" if decision is None or pd.isna(decision) else (" malignant" if int(decision) else " benign")
        caption = f"{row.laterality}{row.view}  p={entry['probability']:.3f}{verdict}"
        name = f"{safe_name(image_id)}.png"
        gradcam.write_png(folder / name, gradcam.side_by_side(gray, shown, caption))
        drawn.append({"image_id": image_id, "file": name, "drawn_on": drawn_on, "probability": float(entry["probability"]),
                      "peak": peak})  # fmt: skip
    return drawn, failed


def write_saliency_description(folder: Path, drawn: list[dict], failed: list[dict]) -> dict:
    """saliency.json: the method, what the maps are drawn on, and the images."""
    from vismae.engine.gradcam import METHOD

    notes = {
        "original": "the original image, uncropped and unflipped, the map carried back through the recorded transform",
        "prepared": "the prepared (cropped, flipped, resized) image: the input was a cache without the original files",
    }
    description = {**METHOD, "drawn_on": {kind: notes[kind] for kind in sorted({d["drawn_on"] for d in drawn})},
                   "images": drawn, "failed": failed}  # fmt: skip
    write_json(folder / "saliency.json", description)
    return description


def _resized(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(heat, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------
# Evaluation of labelled inputs.


def evaluate(images: pd.DataFrame, fitted: dict, settings: PredictSettings, out_dir: Path) -> dict | None:
    """metrics.json and reliability.png when some images carry a benign/malignant label."""
    from vismae.calibration import apply_temperature, plot_reliability

    labelled = labelled_images(images)
    if labelled.empty:
        return None
    metrics = {
        "images": int(len(labelled)),
        "patients": int(labelled["patient_id"].nunique()),
        "levels": evaluate_levels(labelled, fitted, settings.n_boot, settings.seed),
        "fitted_on_validation": fitted,
    }
    write_json(out_dir / "metrics.json", metrics)
    y_true, probability = labelled["target"].to_numpy(), labelled["probability"].to_numpy()
    curves = {"images": (y_true, probability)}
    temperature = metrics["levels"]["calibration"]["temperature"]
    if temperature is not None:
        curves[f"temperature-scaled (T={temperature:.2f})"] = (y_true, apply_temperature(probability, temperature))
    plot_reliability(curves, out_dir / "reliability.png")
    return metrics


# ---------------------------------------------------------------------------------------------
# The command.


def skipped_table(prepared: PreparedInput, unreadable: list[str]) -> pd.DataFrame:
    unopened = pd.DataFrame({"image_id": "", "path": unreadable, "stage": "read", "reason": "the prepared image cannot be opened"})
    return pd.concat([prepared.skipped, unopened[SKIPPED_COLUMNS]], ignore_index=True)


def predict(model_dir: str | Path, source: str | Path, out_dir: str | Path, settings: PredictSettings | None = None) -> PredictResult:
    """Predict every mammogram of ``source`` (DICOM folder, raw manifest or cache manifest) with
    the classifier of ``model_dir`` (run folder or exported model) into ``out_dir``."""
    settings = settings or PredictSettings()
    out_dir = Path(out_dir).expanduser().resolve()
    deployable = read_deployable(model_dir)
    if deployable.task != "classify":
        raise ValueError(f"{deployable.folder}: a {deployable.task} model; `predict` takes a benign/malignant classifier")
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = read_input(source, deployable.preprocessing, out_dir, salt=settings.salt, salt_file=settings.salt_file,
                          workers=settings.prepare_workers, progress=settings.progress)  # fmt: skip
    runner = ModelRunner(deployable, settings.batch_size, settings.num_workers, settings.progress)
    scores = runner.score(prepared.rows)
    thresholds = deployable.level_thresholds()
    images = image_table(scores.table, prepared, deployable, thresholds["image"])
    drawn, failed = [], []
    chosen = saliency_rows(scores.table, settings.saliency)
    if len(chosen):
        drawn, failed = draw_saliency(runner, chosen, prepared, images, out_dir / "saliency")
    summary = {
        "model": {"folder": str(deployable.folder), "source": deployable.source, **deployable.training},
        "thresholds": thresholds,
        "threshold_rule": deployable.threshold,
        "device": choose_device_note(runner),
        "preprocessing": deployable.preprocessing,
        "notes": deployable.notes,
    }
    fitted = deployable.fitted or {"thresholds": thresholds, "chosen_on": "val"}
    return finish(out_dir, source, prepared, images, thresholds, skipped_table(prepared, scores.unreadable),
                  (drawn, failed), fitted, settings, summary)  # fmt: skip


def finish(out_dir: Path, source, prepared: PreparedInput, images: pd.DataFrame, thresholds: dict | None,
           skipped: pd.DataFrame, saliency: tuple[list, list], fitted: dict, settings: PredictSettings,
           summary: dict) -> PredictResult:  # fmt: skip
    """Write the tables, saliency.json, the evaluation and predict.json; drop the prepared images."""
    breast_table, exam_table = level_tables(images, thresholds)
    write_csv(out_dir / "images.csv", written_images(images))
    write_csv(out_dir / "breasts.csv", written_level(breast_table, images))
    write_csv(out_dir / "exams.csv", written_level(exam_table, images))
    write_csv(out_dir / "skipped.csv", skipped)
    drawn, failed = saliency
    if drawn or failed:
        write_saliency_description(out_dir / "saliency", drawn, failed)
    metrics = evaluate(images, fitted, settings, out_dir)
    summary = {
        **summary,
        "input": {"source": str(source), "kind": prepared.kind},
        "counts": {"images": len(images), "breasts": len(breast_table), "exams": len(exam_table), "skipped": len(skipped),
                   "skipped_by_stage": {str(k): int(v) for k, v in skipped["stage"].value_counts().items()},
                   "saliency_maps": len(drawn), "labelled_images": 0 if metrics is None else metrics["images"]},  # fmt: skip
        "aggregation": {"breast": "mean of its views' probabilities", "exam": "max of its breasts' probabilities"},
        "notes": summary.get("notes", []) + prepared.notes,
    }
    write_json(out_dir / "predict.json", summary)
    if prepared.cache_dir is not None and not settings.keep_prepared:
        shutil.rmtree(prepared.cache_dir, ignore_errors=True)
    return PredictResult(out_dir, images, breast_table, exam_table, skipped, metrics, summary)
