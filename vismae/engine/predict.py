"""Inference: one row of outputs per image, the predictions table and its metrics, and the
saved model of a finished run (to predict rows it never saw, e.g. to route by predicted ROI).

Validation during training and the final val/test predictions go through the same ``infer``,
so the numbers a model was selected on are computed exactly like the reported ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from vismae.io import atomic_path, write_json
from vismae.metrics import bootstrap_ci, metrics_with_ci, per_image_segmentation, summarize_segmentation

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"
MODEL_FORMAT = "vismae-finetuned"
THRESHOLD_FILE = "threshold.json"
ROW_COLUMNS = ["image_id", "patient_id", "view", "laterality", "label", "split"]
CLASSIFICATION_COLUMNS = [
    "image_id", "patient_id", "view", "laterality", "label", "probability", "prediction", "split",
    "target", "has_roi", "loss",
]  # fmt: skip
SEGMENTATION_COLUMNS = ROW_COLUMNS + [
    "has_roi", "dice", "precision", "recall", "tp", "fp", "fn",
    "roi_area", "predicted_area", "predicted_area_fraction", "max_probability", "loss",
]  # fmt: skip
ROI_PROBABILITY = 0.5  # a pixel is ROI where its softmax probability reaches this (the argmax of two classes)


# ---------------------------------------------------------------------------------------------
# Per-image outputs.


def classification_outputs(logits: torch.Tensor, batch: dict, loss_fn) -> dict[str, torch.Tensor]:
    target = batch["target"]
    # Plain log loss per image (not the class-weighted training loss): a proper score to select on.
    loss = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
    return {
        "probability": logits.softmax(dim=1)[:, 1],
        "loss": torch.where(target >= 0, loss, torch.full_like(loss, float("nan"))),
    }


def segmentation_outputs(logits: torch.Tensor, batch: dict, loss_fn) -> dict[str, torch.Tensor]:
    probability = logits.softmax(dim=1)[:, 1]
    predicted = probability >= ROI_PROBABILITY
    mask = batch["mask"]
    # The per-image Dice, precision and recall of vismae.metrics, so every report agrees.
    table = per_image_segmentation(predicted.cpu().numpy(), mask[:, 0].cpu().numpy())
    device = logits.device
    outputs = {name: torch.as_tensor(table[name].to_numpy(copy=True), device=device) for name in table.columns}
    outputs.update(
        roi_area=mask.flatten(1).sum(1),
        predicted_area=predicted.flatten(1).sum(1),
        max_probability=probability.flatten(1).amax(1),
    )
    if loss_fn is None:
        outputs["loss"] = torch.full_like(outputs["max_probability"], float("nan"))
    else:
        outputs["loss"] = torch.stack([loss_fn(logits[i : i + 1], mask[i : i + 1]) for i in range(len(logits))])
    return outputs


OUTPUTS = {"classify": classification_outputs, "segment": segmentation_outputs}


@torch.no_grad()
def infer(model, loader: DataLoader, accelerator, task: str, loss_fn=None) -> pd.DataFrame:
    """The model's outputs for every image of a prepared ``loader``, one row each, sorted by
    ``index`` (the row of the loader's dataset). Gathered from all processes."""
    was_training = model.training
    model.eval()
    parts = []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["image"])
        outputs = OUTPUTS[task](logits.float(), batch, loss_fn)
        outputs["index"] = batch["index"]
        gathered = accelerator.gather_for_metrics(outputs)
        parts.append({name: value.cpu().numpy() for name, value in gathered.items()})
    model.train(was_training)
    if not parts:
        return pd.DataFrame(columns=["index"])
    table = pd.DataFrame({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
    return table.drop_duplicates("index").sort_values("index").reset_index(drop=True)


def prediction_table(frame: pd.DataFrame, outputs: pd.DataFrame, task: str, image_pixels: int) -> pd.DataFrame:
    """``infer`` outputs joined with their manifest rows: what predictions.csv holds. A
    classifier's ``prediction`` is -1 until ``with_threshold`` sets it."""
    rows = frame.iloc[outputs["index"].to_numpy()].reset_index(drop=True)
    table = rows[ROW_COLUMNS + ["has_roi"]].copy()
    for name in outputs.columns.drop("index"):
        values = outputs[name].to_numpy()
        # float64, written at full precision: a probability read back from the CSV compares
        # with the threshold exactly as it did here.
        table[name] = values.astype(np.float64) if values.dtype.kind == "f" else values
    if task == "classify":
        table["target"] = rows["target"].to_numpy() if "target" in rows else -1
        table["prediction"] = -1
        return table[CLASSIFICATION_COLUMNS]
    table["predicted_area_fraction"] = table["predicted_area"] / image_pixels
    return table[SEGMENTATION_COLUMNS]


def with_threshold(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """A classifier's predictions at ``threshold``: malignant (1) where probability >= threshold."""
    return table.assign(prediction=(table["probability"] >= threshold).astype(int))


def write_predictions(table: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# Metrics of a predictions table.


def classification_report(table: pd.DataFrame, threshold: float, n_boot: int, seed: int = 0) -> dict:
    """Sensitivity, specificity, F1, the harmonic mean of sensitivity and specificity (the
    ROI-aware paper's F-score), accuracy, ROC AUC and PR AUC with patient-level 95 % intervals;
    each interval carries the positives and negatives it rests on and how many resamples left
    its metric undefined (``vismae.metrics.interval_problem`` says when that is too many)."""
    return metrics_with_ci(table["target"], table["probability"], table["patient_id"], threshold, n_boot, seed)


def segmentation_report(table: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    """``summarize_segmentation`` with patient-level 95 % intervals, and what it was computed on."""
    result = bootstrap_ci(summarize_segmentation, table, "patient_id", n_boot=n_boot, seed=seed)
    result.update(
        n=len(table),
        patients=int(table["patient_id"].nunique()),
        with_roi=int((table["roi_area"] > 0).sum()),
    )
    return result


# ---------------------------------------------------------------------------------------------
# The saved model.


def save_model(model: torch.nn.Module, folder: Path, description: dict) -> Path:
    """``model.safetensors`` and ``model.json`` (task, encoder config, head settings, classes)."""
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    weights = folder / MODEL_WEIGHTS
    with atomic_path(weights) as temporary:
        save_file(tensors, str(temporary), metadata={"format": MODEL_FORMAT})
    write_json(folder / MODEL_CONFIG, {"format": MODEL_FORMAT, **description})
    return weights


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a finetuned model from its run folder (safetensors only, no pickle): our Swin
    encoder with its head, or the timm backbone model.json names."""
    from vismae.models.backbones import rebuild_task_model

    folder = Path(folder)
    description_path = folder / MODEL_CONFIG
    if not description_path.is_file():
        raise FileNotFoundError(f"{description_path}: no such file; is {folder} a finished finetuning run?")
    description = json.loads(description_path.read_text())
    if description.get("format") != MODEL_FORMAT:
        raise ValueError(f"{description_path}: format is {description.get('format')!r}, expected {MODEL_FORMAT!r}")
    model = rebuild_task_model(description)
    model.load_state_dict(load_file(str(folder / MODEL_WEIGHTS)), strict=True)
    return model.eval(), description


def predict_with_run(run_dir: str | Path, frame: pd.DataFrame, batch_size: int = 16, num_workers: int = 0) -> pd.DataFrame:
    """A finished run's model applied to ``frame`` (cache manifest rows) on one device, at the
    run's threshold (threshold.json): the predictions table, without metrics."""
    from accelerate import Accelerator

    from vismae.data.labelled_dataset import LabelledImages
    from vismae.models.backbones import image_size_of

    model, description = load_model(run_dir)
    threshold = json.loads((Path(run_dir) / THRESHOLD_FILE).read_text())["threshold"] if description["task"] == "classify" else None
    size = image_size_of(description)
    dataset = LabelledImages(frame, size, with_masks=description["task"] == "segment")
    # The process's Accelerate state is fixed by the first Accelerator (finetuning may have set
    # bf16 on a GPU); a second one asking for other settings would be refused. Reuse it, so test
    # images are scored in the same precision as the validation images that set the threshold.
    accelerator = Accelerator()
    model, loader = accelerator.prepare(model, DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))
    outputs = infer(model, loader, accelerator, description["task"])
    table = prediction_table(frame.reset_index(drop=True), outputs, description["task"], size[0] * size[1])
    return with_threshold(table, threshold) if threshold is not None else table

