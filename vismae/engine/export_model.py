"""``vismae export-model RUN OUT``: a finished finetuning run as a self-contained model folder
that ``vismae predict --model OUT`` reads and a person can judge:

    OUT/
      model.safetensors  the weights (no pickle)
      model.json         how to rebuild the model
      deployment.json    the preprocessing of the training images, the thresholds of images,
                         breasts and exams and the temperature fitted on validation, the
                         precision it predicts in
      threshold.json     the image threshold as the run chose it
      metrics.json       the run's metrics with their intervals
      model_card.md      training data and licences, intended use, metrics, known limits
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pandas as pd

from vismae.models.random_init import is_random_init
from vismae import __version__
from vismae.engine.deployable import DEPLOYMENT_FILE, Deployable, read_deployable
from vismae.engine.predict import MODEL_CONFIG, MODEL_WEIGHTS, THRESHOLD_FILE
from vismae.io import write_json, write_text
from vismae.metrics import value_with_interval

CARD_FILE = "model_card.md"
UNKNOWN_LICENCE = "unknown — fill in"
# The datasets the readers name in the manifest's dataset column: their source, and the terms
# they are published under as far as this project knows them (to be checked at the source).
DATASETS = {
    "vindr": (
        "VinDr-Mammo (PhysioNet)",
        "PhysioNet credentialed-access licence and data use agreement; check the version on the project page",
    ),
    "cbis-ddsm": ("CBIS-DDSM (The Cancer Imaging Archive)", "CC BY 3.0 as published by TCIA; check the collection page"),
    "cdd-cesm": ("CDD-CESM (The Cancer Imaging Archive)", "CC BY 4.0 as published by TCIA; check the collection page"),
    "rsna": (
        "RSNA Screening Mammography Breast Cancer Detection (Kaggle)",
        "the competition's data rules; check them before any use outside it",
    ),
    "folder": ("a local folder of DICOM files", UNKNOWN_LICENCE),
    "table": ("a table of one's own", UNKNOWN_LICENCE),
}
CARD_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "f1", "accuracy")
LEVEL_METRICS = ("roc_auc", "sensitivity_at_90_specificity", "specificity_at_90_sensitivity", "pf1", "pf1_best", "ece")


def export_model(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the model of the finished run ``run_dir`` into ``out_dir`` (absent or empty unless
    ``overwrite``); built beside it and moved into place, so no half-written export remains."""
    deployable = read_deployable(run_dir)
    if deployable.source != "run":
        raise ValueError(f"{deployable.folder} is already an exported model; copy the folder instead")
    if not (deployable.folder / "metrics.json").is_file():
        raise FileNotFoundError(f"{deployable.folder / 'metrics.json'}: no such file; is the run finished?")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (MODEL_WEIGHTS, MODEL_CONFIG, THRESHOLD_FILE, "metrics.json"):
        if (deployable.folder / name).is_file():
            shutil.copyfile(deployable.folder / name, staging / name)
    rows = _training_rows(deployable.folder)
    deployable.training = {**deployable.training, "data": training_data(rows)}
    write_json(staging / DEPLOYMENT_FILE, deployable.to_dict())
    metrics = json.loads((deployable.folder / "metrics.json").read_text())
    write_text(staging / CARD_FILE, model_card(deployable, metrics, rows))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


def _training_rows(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "manifest.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def training_data(rows: pd.DataFrame | None) -> list[dict]:
    """Per dataset of the run's rows: images and patients per split, labels, licence."""
    if rows is None:
        return []
    out = []
    for dataset, part in rows.groupby("dataset", sort=True):
        name, licence = DATASETS.get(dataset, (dataset or "not named", UNKNOWN_LICENCE))
        out.append({
            "dataset": dataset,
            "source": name,
            "licence": licence,
            "images": {split: int(n) for split, n in part["split"].value_counts().sort_index().items()},
            "patients": int(part["patient_id"].nunique()),
            "labels": {label: int(n) for label, n in part["label"].value_counts().sort_index().items()},
        })  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# The model card.


def _metric_rows(report: dict, names) -> list[str]:
    return [f"| {name} | {value_with_interval(report[name])} |" for name in names if isinstance(report.get(name), dict)]


def _plain(init: str | None) -> str:
    """An init as the card shows it: a preset name as is, a path by its last part."""
    if not init:
        return "unknown"
    return init if is_random_init(init) else Path(init).name


def architecture(description: dict) -> str:
    """One line on the network model.json describes: a timm backbone or our Swin encoder."""
    if "backbone" in description:
        return f"timm {description['backbone']} with its own two-class head"
    encoder = description["encoder"]
    return (f"Swin encoder (embedding {encoder.get('embed_dim')}, depths {encoder.get('depths')}, heads "
            f"{encoder.get('num_heads')}, window {encoder.get('window_size')}), head {description.get('head')}")  # fmt: skip


def model_card(deployable: Deployable, metrics: dict, rows: pd.DataFrame | None) -> str:
    description = deployable.description
    negative, positive = deployable.classes()
    height, width = deployable.input_size
    lines = [
        f"# Model card: {deployable.folder.name}",
        "",
        f"Exported on {datetime.date.today().isoformat()} by vismae {__version__} from the finetuning run "
        f"`{deployable.folder.name}`. Read by `vismae predict --model <this folder>`.",
        "",
        "## Intended use",
        "",
        "**Research only. This is not a medical device** and has not been cleared or approved by any regulator. It must "
        "not be used to diagnose, screen, triage or treat anyone, nor to replace or inform a radiologist's reading of a "
        "patient's images. It is meant for studying methods on mammography data one has the right to use.",
        "",
        "## Model",
        "",
        f"- task: {description['task']}, one mammogram view at a time; class 1 = {', '.join(positive)}, class 0 = {', '.join(negative)}",
        f"- architecture: {architecture(description)}",
        f"- input: {height} x {width} pixels (rows x columns), one channel in [0, 1]",
        f"- initialized from: {_plain(description.get('init'))}; epoch {metrics.get('best_epoch')} of {metrics.get('epochs')}"
        f" kept by validation {metrics.get('selected_by')}",
        "",
        "## Preprocessing (applied by `vismae predict`)",
        "",
    ]
    settings = (deployable.preprocessing or {}).get("preprocessing")
    if settings:
        lines += [
            "DICOM grayscale pipeline (modality and VOI LUT, MONOCHROME1 inverted) to [0, 1]; crop to the breast; flip "
            "so the breast touches the left edge; CLAHE; resize keeping the aspect ratio and pad right and bottom:",
            "",
            f"- size {settings['size'][0]} x {settings['size'][1]}, {settings['bits']}-bit, CLAHE clip {settings['clahe_clip']} "
            f"with {settings['clahe_tiles']} x {settings['clahe_tiles']} tiles (clip 0: off)",
            f"- FOR PROCESSING images accepted: {bool(deployable.preprocessing.get('allow_for_processing', False))}",
        ]
    else:
        lines.append("Unknown: the training cache's prepare.json was not found. Only prepared caches can be predicted.")
    lines += ["", "## Decisions", ""]
    thresholds = deployable.level_thresholds()
    rule = (deployable.threshold or {}).get("rule", "unknown")
    lines.append(f"Malignant where the probability reaches the threshold; thresholds chosen on the validation split ({rule}):")
    lines.append("")
    lines += [f"- {level}: {value:.4g}" for level, value in thresholds.items() if value is not None]
    lines += ["", "A breast's probability is the mean of its views', an exam's the highest of its breasts'."]
    temperature = ((deployable.fitted or {}).get("temperature") or {}).get("temperature")
    if temperature is not None:
        lines.append(f"Temperature fitted on validation (used only in calibration reports): {temperature:.3g}.")
    lines += ["", "## Training data", ""]
    data = deployable.training.get("data") or []
    if data:
        lines += ["| dataset | source | licence | images by split | patients | labels |", "|---|---|---|---|---|---|"]
        for entry in data:
            splits = ", ".join(f"{split} {n}" for split, n in entry["images"].items())
            labels = ", ".join(f"{label} {n}" for label, n in entry["labels"].items())
            lines.append(f"| {entry['dataset']} | {entry['source']} | {entry['licence']} | {splits} | {entry['patients']} | {labels} |")
        lines += ["", "The dataset names come from the manifest's `dataset` column; a phantom (synthetic) dataset carries the "
                  "name of the format it imitates. Whoever shares this model answers for the data's terms."]  # fmt: skip
    else:
        lines.append(f"Unknown (the run's manifest.csv is missing); licence: {UNKNOWN_LICENCE}.")
    lines += ["", "## Metrics", "", "Patient-level bootstrap 95 % intervals, from the run's metrics.json.", ""]
    for split in ("val", "test"):
        if split in metrics:
            report = metrics[split]
            lines += [f"### {split} (images {report.get('n')}, patients {report.get('patients')}, malignant {report.get('positives')})",
                      "", "| metric | value [95 % interval] |", "|---|---|", *_metric_rows(report, CARD_METRICS), ""]  # fmt: skip
    levels = (metrics.get("levels") or {}).get("test")
    if levels:
        lines += ["### test, by level", "", "| level | metric | value [95 % interval] |", "|---|---|---|"]
        for level in ("image", "breast", "exam"):
            lines += [f"| {level} {row[2:]}" for row in _metric_rows(levels.get(level, {}), LEVEL_METRICS)]
        lines.append("")
    lines += [
        "## Known limits",
        "",
        "- Judged on the splits above only: other scanners, vendors, populations, image kinds and disease prevalences "
        "may give other numbers; check on local data with labels (`vismae predict` reports metrics when labels are given).",
        "- Thresholds were chosen on the validation split; at another prevalence the same threshold gives other "
        "positive predictive values.",
        "- It sees one view at a time; breast and exam answers are a plain mean and maximum, and an exam missing "
        "views is answered from the views it has.",
        "- Intervals resample patients of a small test set; wide intervals mean the data do not pin the number down.",
        "- Saliency maps (Grad-CAM on the last encoder stage, 1/32 of the input resolution) show where the model's "
        "evidence lay, coarsely; they are not lesion outlines.",
        *[f"- {note}" for note in deployable.notes],
    ]
    return "\n".join(lines) + "\n"
