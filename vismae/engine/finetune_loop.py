"""The finetuning epochs, for classifiers and segmenters alike: train an epoch, validate, keep
the best epoch's weights, save the state for resuming.

Only training and validation rows ever reach this module; test rows are first read after it
returns, by the final prediction step in ``finetune.py``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from sklearn.utils.class_weight import compute_class_weight

from vismae import run_folder
from vismae.engine import checkpoint
from vismae.engine.predict import MODEL_CONFIG, MODEL_WEIGHTS, infer, save_model, summarize_segmentation
from vismae.engine.train_step import LoopState, Session, epoch_loader, train_step
from vismae.io import atomic_path
from vismae.metrics import classification_metrics

TARGET_KEYS = {"classify": "target", "segment": "mask"}


def build_loss(task: str, class_weights: torch.Tensor | None = None) -> torch.nn.Module:
    """Cross-entropy (class-weighted when ``class_weights`` is given), or VIS-MAE's
    segmentation loss, 0.4 Dice + 0.6 cross-entropy.

    The Dice term is computed over the whole batch (``batch=True``, as nnU-Net does): per
    image, an image without ROI makes any predicted pixel cost a full Dice of 0, which drives
    a segmenter of small lesions to predict nothing at all."""
    if task == "classify":
        return torch.nn.CrossEntropyLoss(weight=class_weights)
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.4, lambda_ce=0.6, batch=True)


def train_one_epoch(session: Session, state: LoopState, task: str, loss_fn) -> float:
    """One pass over the epoch's batches; returns the mean training loss over all processes."""
    model, plan = session.model, session.plan
    model.train()
    losses = []
    for batch in epoch_loader(session, state):
        loss, _ = train_step(
            session,
            forward=partial(model, batch["image"]),
            loss_of=partial(task_loss, loss_fn, batch[TARGET_KEYS[task]]),
            step=state.step,
            epoch_label=state.epoch + 1,
            loss_name="training loss",
        )
        state.step += 1
        state.images_seen += plan.global_batch
        losses.append(loss)
    state.epoch += 1
    state.batch_in_epoch = 0
    return float(np.mean(losses)) if losses else float("nan")


def task_loss(loss_fn, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The loss in fp32 whatever the autocast precision of the logits."""
    return loss_fn(logits.float(), target)


def validation_summary(outputs: pd.DataFrame, targets: np.ndarray, task: str) -> dict:
    """The numbers an epoch is judged on: loss, and ROC AUC or Dice."""
    summary = {"val_loss": float(np.nanmean(outputs["loss"]))}
    if task == "classify":
        summary["val_auc"] = classification_metrics(targets[outputs["index"]], outputs["probability"])["roc_auc"]
    else:
        dice = summarize_segmentation(outputs)
        summary.update(val_dice=dice["dice"], val_dice_pooled=dice["dice_pooled"])
    return summary


def selection_score(summary: dict, select_by: str) -> float:
    """Higher is better. Segmenters are judged on Dice pooled over all validation pixels: the
    mean per-image Dice counts an empty prediction on an image without ROI as perfect, so on
    sets with many such images it would favour a model that never finds anything."""
    return {"auc": summary.get("val_auc"), "dice": summary.get("val_dice_pooled"), "loss": -summary["val_loss"]}[select_by]


@dataclass
class FitResult:
    best_epoch: int  # 1-based
    best_score: float
    history: list[dict] = field(default_factory=list)


@dataclass
class Trainer:
    """Trains ``session``'s model, validating on ``val_loader`` (whose dataset's targets are
    ``val_targets``), and keeps the best epoch's weights in ``run_dir``."""

    session: Session
    val_loader: object
    val_targets: np.ndarray
    task: str
    loss_fn: torch.nn.Module
    select_by: str
    eval_every: int
    run_dir: Path
    model_description: dict
    checkpoint_every: int
    checkpoint_keep: int
    data_digest: str
    verbose: bool = True

    def __post_init__(self):
        self.state = LoopState()
        self.result = FitResult(best_epoch=0, best_score=-math.inf)
        self.checkpoints = self.run_dir / "checkpoints"

    def fit(self) -> FitResult:
        """Train every epoch of the plan (resuming if a checkpoint exists), then load the best
        epoch's weights into the model."""
        accelerator, plan = self.session.accelerator, self.session.plan
        self.resume()
        while self.state.epoch < plan.epochs:
            train_loss = train_one_epoch(self.session, self.state, self.task, self.loss_fn)
            epoch = self.state.epoch
            record = {"epoch": epoch, "step": self.state.step, "lr": plan.lr(self.state.step - 1), "train_loss": train_loss}
            if epoch % self.eval_every == 0 or epoch == plan.epochs:
                record.update(self.validate(epoch))
            self.result.history.append(record)
            if self.verbose:
                accelerator.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            if self.checkpoint_every and (epoch % self.checkpoint_every == 0) and epoch < plan.epochs:
                self.save_checkpoint()
        accelerator.wait_for_everyone()
        best = load_file(str(self.run_dir / MODEL_WEIGHTS))
        accelerator.unwrap_model(self.session.model).load_state_dict(best, strict=True)
        return self.result

    def validate(self, epoch: int) -> dict:
        outputs = infer(self.session.model, self.val_loader, self.session.accelerator, self.task, self.loss_fn)
        summary = validation_summary(outputs, self.val_targets, self.task)
        score = selection_score(summary, self.select_by)
        # The first validated epoch is kept whatever its score; later ones must beat it.
        if self.result.best_epoch == 0 or score > self.result.best_score:
            self.result.best_epoch, self.result.best_score = epoch, float(score)
            self.save_best()
        summary["best_epoch"] = self.result.best_epoch
        return summary

    def save_best(self) -> None:
        accelerator = self.session.accelerator
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.session.model)
            save_model(model, self.run_dir, {**self.model_description, "epoch": self.result.best_epoch})
        accelerator.wait_for_everyone()

    # -- resuming ----------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        best = self.result.best_score
        return {
            **self.state.to_dict(),
            "best_epoch": self.result.best_epoch,
            "best_score": best if math.isfinite(best) else None,
            "history": self.result.history,
            "processes": self.session.plan.processes,
            "batch_size": self.session.plan.batch_size,
            "data_digest": self.data_digest,
        }

    def save_checkpoint(self) -> None:
        """The training state, and a copy of the best weights so far: epochs trained after a
        checkpoint may replace run_dir's best weights, and a resume must undo that. The copy
        goes in before the checkpoint is marked complete."""
        accelerator = self.session.accelerator
        checkpoint.save_checkpoint(
            accelerator, self.checkpoints, self.state.step, self.trainer_state(), self.checkpoint_keep,
            describe=partial(copy_model_files, self.run_dir),
        )  # fmt: skip

    def resume(self) -> None:
        accelerator = self.session.accelerator
        if accelerator.is_main_process:
            run_folder.remove_temporaries(self.checkpoints)  # left by a run killed while saving
        accelerator.wait_for_everyone()
        newest = run_folder.newest_checkpoint(self.checkpoints)
        if newest is None:
            return
        saved = checkpoint.read_trainer_state(newest)
        plan = self.session.plan
        if saved["data_digest"] != self.data_digest:
            raise ValueError(
                f"{newest}: the checkpoint was trained on other rows than these (train/val split or labels "
                "differ); use another run folder"
            )
        if (saved["processes"], saved["batch_size"]) != (plan.processes, plan.batch_size):
            raise ValueError(
                f"{newest}: saved with {saved['processes']} process(es) x batch {saved['batch_size']}, now "
                f"{plan.processes} x {plan.batch_size}; resume with the same layout or use another run folder"
            )
        if not (newest / MODEL_WEIGHTS).is_file():
            raise ValueError(f"{newest}: the checkpoint lacks the best weights so far; use another run folder")
        accelerator.load_state(str(newest))
        if accelerator.is_main_process:
            copy_model_files(newest, self.run_dir)
        accelerator.wait_for_everyone()
        self.state = LoopState.from_dict(saved)
        best = saved["best_score"]
        self.result = FitResult(saved["best_epoch"], -math.inf if best is None else best, list(saved["history"]))
        self.session.accelerator.print(f"resumed from {newest} (epoch {self.state.epoch})")


def copy_model_files(source: Path, target: Path) -> None:
    for name in (MODEL_WEIGHTS, MODEL_CONFIG):
        with atomic_path(target / name) as temporary:
            shutil.copyfile(source / name, temporary)


def class_weights(targets: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    """scikit-learn's "balanced" class weights, n / (classes x count): inverse class
    frequencies scaled so that a balanced set weighs 1 per class."""
    classes = np.arange(num_classes)
    missing = sorted(set(classes.tolist()) - set(np.unique(targets).tolist()))
    if missing:
        raise ValueError(f"the training rows have no images of class {missing}; cannot weight the loss")
    return torch.tensor(compute_class_weight("balanced", classes=classes, y=targets), dtype=torch.float32)
