"""A finetuned model as prediction needs it: weights, the preprocessing its training images
went through, its thresholds, and what was fitted on its validation images. Read from a
finished finetuning run folder or from a model folder written by ``vismae export-model``;
both give the same ``Deployable``, so a model predicts the same before and after export.

From a run folder:

* the preprocessing is the one ``prepare`` recorded in the training cache's ``prepare.json``
  (the cache named by the run's ``config.yaml`` ``data.manifest``, else the folder its cached
  images lie in); without it, raw images cannot be prepared as the training images were, and
  only prepared caches can be predicted;
* the image threshold is ``threshold.json``; breast and exam thresholds, the best-pF1 thresholds
  and the temperature are fitted on the run's validation predictions (``predictions.csv``,
  exams from ``manifest.csv``) by ``vismae.evaluation.fit_on_validation``, exactly as the run's
  ``metrics.json`` did.

An exported folder holds all of it in ``deployment.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vismae.config import read_yaml
from vismae.engine.predict import MODEL_CONFIG, MODEL_WEIGHTS, THRESHOLD_FILE, load_model
from vismae.evaluation import fit_on_validation, with_exam_columns
from vismae.models.backbones import image_size_of

DEPLOYMENT_FILE = "deployment.json"
DEPLOYMENT_FORMAT = "vismae-exported-model"
DEPLOYMENT_VERSION = 1
PREPARE_FILE = "prepare.json"


@dataclass
class Deployable:
    folder: Path
    source: str  # "run" (a finetuning run folder) or "export" (an exported model folder)
    description: dict  # model.json: task, encoder, head, classes
    preprocessing: dict | None  # prepare.json of the training cache; None when unknown
    threshold: dict | None  # threshold.json (the image threshold and how it was chosen)
    fitted: dict | None  # fit_on_validation: level thresholds, pF1 thresholds, temperature
    mixed_precision: str = "no"  # the precision the run predicted its val and test images in
    training: dict = field(default_factory=dict)  # what the model card says of the training run
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.description["task"]

    @property
    def input_size(self) -> tuple[int, int]:
        return image_size_of(self.description)

    @property
    def image_threshold(self) -> float | None:
        return None if self.threshold is None else float(self.threshold["threshold"])

    def level_thresholds(self) -> dict[str, float]:
        """The decision threshold of images, breasts and exams; the image one throughout where
        nothing was fitted on validation."""
        if self.fitted is not None:
            return dict(self.fitted["thresholds"])
        return {level: self.image_threshold for level in ("image", "breast", "exam")}

    def classes(self) -> tuple[list[str], list[str]]:
        """(labels of class 0, labels of class 1), as the run was trained."""
        negative, positive = self.description["classes"]
        as_list = lambda value: list(value) if isinstance(value, (list, tuple)) else [value]  # noqa: E731
        return as_list(negative), as_list(positive)

    def load_model(self):
        return load_model(self.folder)

    def to_dict(self) -> dict:
        """What ``deployment.json`` holds."""
        return {
            "format": DEPLOYMENT_FORMAT,
            "version": DEPLOYMENT_VERSION,
            "task": self.task,
            "input_size": list(self.input_size),
            "preprocessing": self.preprocessing,
            "threshold": self.threshold,
            "fitted_on_validation": self.fitted,
            "mixed_precision": self.mixed_precision,
            "training": self.training,
            "notes": self.notes,
        }


def read_deployable(folder: str | Path) -> Deployable:
    """The model of a finished finetuning run folder or of an exported model folder."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if (folder / DEPLOYMENT_FILE).is_file():
        return _read_export(folder)
    if (folder / MODEL_CONFIG).is_file() and (folder / MODEL_WEIGHTS).is_file():
        return _read_run(folder)
    raise FileNotFoundError(
        f"{folder}: neither an exported model ({DEPLOYMENT_FILE}) nor a finished finetuning run "
        f"({MODEL_WEIGHTS} and {MODEL_CONFIG})"
    )


def _read_export(folder: Path) -> Deployable:
    saved = json.loads((folder / DEPLOYMENT_FILE).read_text())
    if saved.get("format") != DEPLOYMENT_FORMAT:
        raise ValueError(f"{folder / DEPLOYMENT_FILE}: format is {saved.get('format')!r}, expected {DEPLOYMENT_FORMAT!r}")
    if int(saved.get("version", 0)) > DEPLOYMENT_VERSION:
        raise ValueError(f"{folder / DEPLOYMENT_FILE}: version {saved['version']} is newer than this vismae reads ({DEPLOYMENT_VERSION})")
    description = json.loads((folder / MODEL_CONFIG).read_text())
    return Deployable(
        folder, "export", description, saved.get("preprocessing"), saved.get("threshold"),
        saved.get("fitted_on_validation"), saved.get("mixed_precision", "no"), saved.get("training", {}),
        list(saved.get("notes", [])),
    )  # fmt: skip


def _read_run(folder: Path) -> Deployable:
    description = json.loads((folder / MODEL_CONFIG).read_text())
    config = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    notes = []
    threshold = None
    if description["task"] == "classify":
        threshold_path = folder / THRESHOLD_FILE
        if not threshold_path.is_file():
            raise FileNotFoundError(f"{threshold_path}: no such file; is {folder} a finished finetuning run?")
        threshold = json.loads(threshold_path.read_text())
    preprocessing, where = training_preprocessing(folder, config)
    if preprocessing is None:
        notes.append(
            f"the training cache's {PREPARE_FILE} was not found ({where}); raw images cannot be prepared as the training images were"
        )
    fitted = None
    if threshold is not None:
        fitted, note = fit_run_validation(folder, config, threshold)
        if note:
            notes.append(note)
    training = {"run": folder.name, "init": config.get("init"), "task": description["task"]}
    return Deployable(folder, "run", description, preprocessing, threshold, fitted,
                      config.get("train", {}).get("mixed_precision", "no"), training, notes)  # fmt: skip


def training_preprocessing(run_dir: Path, config: dict) -> tuple[dict | None, str]:
    """(the training cache's prepare.json, where it was found) or (None, where it was sought)."""
    candidates = []
    manifest = (config.get("data") or {}).get("manifest")
    if manifest:
        candidates.append(Path(manifest).parent / PREPARE_FILE)
    rows = run_dir / "manifest.csv"
    if rows.is_file():
        from vismae.data.manifest import read_manifest

        paths = read_manifest(rows)["path"]
        if len(paths):
            candidates.append(Path(paths.iloc[0]).parent.parent / PREPARE_FILE)  # <cache>/images/<name>.png
    for candidate in candidates:
        if candidate.is_file():
            return json.loads(candidate.read_text()), str(candidate)
    return None, ", ".join(str(c) for c in candidates) or "no cache named by the run"


def fit_run_validation(run_dir: Path, config: dict, threshold: dict) -> tuple[dict | None, str]:
    """``fit_on_validation`` of the run's validation predictions (as ``vismae.engine.level_metrics``
    fitted them for the run's metrics.json), or (None, why not)."""
    predictions, manifest = run_dir / "predictions.csv", run_dir / "manifest.csv"
    if not predictions.is_file() or not manifest.is_file():
        return None, "no predictions.csv or manifest.csv: breast and exam decisions use the image threshold"
    table = pd.read_csv(predictions, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    val = table[table["split"] == "val"]
    if val.empty:
        return None, "no validation predictions: breast and exam decisions use the image threshold"
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["image_id", "study_id"])
    settings = config.get("eval") or {}
    rule = threshold.get("rule", settings.get("threshold_rule", "youden"))
    fitted = fit_on_validation(with_exam_columns(val, rows), threshold["threshold"], rule, settings.get("target_sensitivity", 0.9))
    return fitted, ""
