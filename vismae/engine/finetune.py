"""Finetuning on Accelerate: the wiring. ``finetune(frame, init, task, config, run_dir)`` turns
an encoder into a benign/malignant classifier or an ROI segmenter and leaves behind:

    run_dir/
      config.yaml        the resolved config; a finished run under another config is refused
      manifest.csv       the rows used, with their final train/val/test split
      data.json          images, patients and positives per split; rows left out and why
      history.csv        per epoch: lr, training loss, validation loss and AUC or Dice
      model.safetensors  the selected epoch's weights, with model.json to rebuild the model
      threshold.json     the decision threshold, chosen on validation predictions only (or
                         fixed by the config: eval.threshold_rule fixed:T)
      predictions.csv    one row per val and test image
      metrics.json       val and test metrics with patient-level 95 % intervals, and
                         test_images_seen_in_pretraining where the init lists the images it was
                         pretrained on; a classifier's "levels": image, breast and exam metrics,
                         pF1 and calibration (vismae.engine.level_metrics); written last, it marks the run finished, and a finished
                         run is returned as is
      .lock              held while a run lives: a second launch into the folder is refused

The honest order is the code's order: model selection and threshold use train and val rows
only (``train_model``, ``decide_threshold``); test rows are read once, by ``predict_rows``,
after both are settled.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader

from vismae import run_folder
from vismae.config import ConfigError, to_dict
from vismae.data.dataset import EpochShuffle
from vismae.data.labelled_dataset import (
    BalancedEpochSampler,
    LabelledImages,
    MammogramAugmentation,
    prepare_task_rows,
    rows_digest,
    select_task_rows,
)
from vismae.data.manifest import CACHE_COLUMNS, IMAGE_KIND, SPLITS, read_manifest, write_manifest
from vismae.data.splits import kfold
from vismae.engine.accelerator import make_accelerator
from vismae.engine.finetune_config import FinetuneConfig, fixed_threshold
from vismae.engine.finetune_loop import FitResult, Trainer, build_loss, class_weights
from vismae.engine.level_metrics import run_level_metrics
from vismae.engine.optim import no_weight_decay_names
from vismae.engine.predict import (
    THRESHOLD_FILE,
    classification_report,
    infer,
    prediction_table,
    segmentation_report,
    with_threshold,
    write_predictions,
)
from vismae.engine.train_step import Plan, Session
from vismae.io import write_csv, write_json
from vismae.metrics import choose_threshold, summarize_folds, value_with_interval
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, images_seen_in_pretraining, seen_mark, seen_warning
from vismae.models.heads import build_task_model
from vismae.models.random_init import SWIN_BACKBONE

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
# Keys that do not change a run's result: a finished or resumed run may differ in them.
NEUTRAL_KEYS = ("output_dir", "data.manifest", "data.num_workers", "eval.batch_size", "checkpoint.every_epochs", "checkpoint.keep")
HEADLINE = ("roc_auc", "pr_auc", "sensitivity", "specificity", "f1", "f_sens_spec", "accuracy", "dice", "precision", "recall")


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict  # metrics.json: {"val": ..., "test": ..., "threshold": ..., "best_epoch": ...}
    predictions: Path  # predictions.csv
    threshold: float | None  # the classifier's decision threshold; None for a segmenter
    best_epoch: int

    @classmethod
    def load(cls, run_dir: str | Path) -> FinetuneResult:
        run_dir = Path(run_dir)
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        threshold = metrics.get("threshold", {}).get("threshold")
        return cls(run_dir, metrics, run_dir / PREDICTIONS_FILE, threshold, metrics["best_epoch"])


# ---------------------------------------------------------------------------------------------
# One run.


def finetune(
    frame: pd.DataFrame,
    init: str | Path,
    task: str,
    config: FinetuneConfig,
    run_dir: str | Path,
    accelerator: Accelerator | None = None,
) -> FinetuneResult:
    """Train one classifier (``task="classify"``) or segmenter (``"segment"``) from encoder
    weights ``init`` on the cache manifest rows ``frame`` (train/val/test by their ``split``;
    without val rows, a patient-grouped share of train is carved off) into ``run_dir``.

    A finished ``run_dir`` is returned as it is; an unfinished one resumes from its newest
    checkpoint. Either way its config and rows must match these.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    config = config.for_run(init, task, run_dir)
    accelerator = accelerator or make_accelerator(config.train.mixed_precision)
    with run_folder.hold(run_dir, accelerator):
        return _finetune(frame, config, run_dir, accelerator)


def _finetune(frame: pd.DataFrame, config: FinetuneConfig, run_dir: Path, accelerator: Accelerator) -> FinetuneResult:
    rows, data_notes = prepare_task_rows(frame, config.task, config.data)
    check_saved_run(run_dir, config, data_notes["digest"])
    if (run_dir / METRICS_FILE).is_file():
        return FinetuneResult.load(run_dir)

    started = time.perf_counter()
    if accelerator.is_main_process:
        run_folder.save_config(run_dir, to_dict(config))
        write_manifest(rows[[column for column in (*CACHE_COLUMNS, IMAGE_KIND) if column in rows.columns]], run_dir / "manifest.csv")
        write_json(run_dir / "data.json", data_notes)
    accelerator.wait_for_everyone()

    parts = {split: rows[rows["split"] == split].reset_index(drop=True) for split in SPLITS}
    seen = images_seen_in_pretraining(config.init, parts["test"]["image_id"])
    if seen:
        accelerator.print(seen_warning(seen, len(parts["test"]), config.init))
    image_size = config.data.image_size or tuple(data_notes["cache_image_size"])
    trained = train_model(parts["train"], parts["val"], config, image_size, run_dir, accelerator)

    # The model is settled. The threshold comes from validation predictions alone...
    val_table = predict_rows(trained, parts["val"], config, image_size, accelerator)
    threshold = decide_threshold(val_table, config) if config.task == "classify" else None
    # ...and only now are the test rows read.
    test_table = predict_rows(trained, parts["test"], config, image_size, accelerator) if len(parts["test"]) else None

    cut = threshold["threshold"] if threshold is not None else None
    tables = {split: table for split, table in (("val", val_table), ("test", test_table)) if table is not None}
    if cut is not None:
        tables = {split: with_threshold(table, cut) for split, table in tables.items()}
    metrics = {
        "task": config.task,
        "init": config.init,
        "selected_by": trained.selected_by,
        "best_epoch": trained.fit.best_epoch,
        "epochs": config.train.epochs,
        **({"threshold": threshold} if threshold is not None else {}),
        **{split: report(table, config, cut) for split, table in tables.items()},
        # None: the init does not say what it was pretrained on (random, foreign weights).
        **({SEEN_IN_PRETRAINING: seen} if seen is not None else {}),
        "data": {key: value for key, value in data_notes.items() if key in ("splits", "left_out")},
        **run_level_metrics(config, threshold, tables, parts),  # breasts, exams, pF1, calibration
        "seconds": round(time.perf_counter() - started, 1),
    }
    if accelerator.is_main_process:
        write_predictions(pd.concat(tables.values(), ignore_index=True), run_dir / PREDICTIONS_FILE)
        write_history(trained.fit.history, run_dir / "history.csv")
        if threshold is not None:
            write_json(run_dir / THRESHOLD_FILE, threshold)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a finished run needs no resume state
        write_json(run_dir / METRICS_FILE, metrics)  # last: the run is finished
    accelerator.wait_for_everyone()
    return FinetuneResult(run_dir, metrics, run_dir / PREDICTIONS_FILE, cut, trained.fit.best_epoch)


def select_rows(frame: pd.DataFrame, config: FinetuneConfig) -> tuple[pd.DataFrame, dict]:
    """The rows ``config``'s task trains and is judged on, with their 0/1 ``target``, and how
    many were left out by reason (for callers that draw subsets of exactly those rows)."""
    return select_task_rows(frame, config.task, config.data)


# ---------------------------------------------------------------------------------------------
# The run folder.


def check_saved_run(run_dir: Path, config: FinetuneConfig, digest: str) -> None:
    """Refuse to finish, resume or return a run folder made with another config or other rows."""
    run_folder.check_config(
        run_dir, to_dict(config), neutral=NEUTRAL_KEYS, defaults=to_dict(FinetuneConfig()), remedy="choose another run folder"
    )
    saved_data = run_dir / "data.json"
    if saved_data.is_file() and json.loads(saved_data.read_text()).get("digest") != digest:
        raise ConfigError(f"{run_dir} holds a run on other rows (images, splits or labels differ); choose another run folder")


# ---------------------------------------------------------------------------------------------
# Training: train and val rows only.


@dataclass
class TrainedModel:
    model: torch.nn.Module  # prepared by Accelerate, holding the selected epoch's weights
    fit: FitResult
    selected_by: str
    loss_fn: torch.nn.Module
    batch_size: int  # per process


def build_model(config: FinetuneConfig, image_size: tuple[int, int], verbose: bool) -> tuple[torch.nn.Module, dict]:
    """The task model on the ``init`` encoder, and the description saved beside its weights."""
    from vismae.models.weights import load_encoder

    model_settings = config.model
    if model_settings.backbone != SWIN_BACKBONE:
        return _timm_classifier(config, image_size, verbose)
    encoder = load_encoder(
        config.init,
        img_size=image_size,
        verbose=verbose,
        fold_input_norm=model_settings.fold_input_norm,
        drop_path_rate=model_settings.drop_path,
        **model_settings.overrides,
    )
    # The MAE mask token is never used when finetuning; frozen, DDP does not wait for its gradient.
    encoder.mask_token.requires_grad_(False)
    if config.task == "classify":
        head = {"num_classes": 2, "pool": model_settings.pool, "dropout": model_settings.head_dropout}
        if model_settings.head_stages != "last":  # model.json of last-stage heads stays as it was
            head["stages"] = model_settings.head_stages
        classes = [config.data.negative, config.data.positive]
    else:
        head = {"num_classes": 2, "decoder": model_settings.decoder}
        classes = ["background", "roi"]
    model = build_task_model(encoder, config.task, **head)
    description = {"task": config.task, "encoder": encoder.config.to_dict(), "head": head, "classes": classes, "init": config.init}
    return model, description


def _timm_classifier(config: FinetuneConfig, image_size: tuple[int, int], verbose: bool) -> tuple[torch.nn.Module, dict]:
    """A timm backbone (``model.backbone``) with timm's two-class head, from random init or a
    timm checkpoint file; Swin-only settings (fold_input_norm, overrides, decoder) do not apply."""
    from vismae.models.backbones import build_timm_classifier

    settings = config.model
    model, built = build_timm_classifier(
        settings.backbone, config.init, image_size, settings.pool, settings.drop_path, settings.head_dropout, verbose
    )
    classes = [config.data.negative, config.data.positive]
    head = {"num_classes": 2, "pool": settings.pool, "dropout": settings.head_dropout}
    return model, {"task": config.task, **built, "head": head, "classes": classes, "init": config.init}


def training_loss(config: FinetuneConfig, targets: np.ndarray) -> torch.nn.Module:
    """The task's loss; class-weighted cross-entropy when ``train.balance`` is weighted_loss."""
    weighted = config.task == "classify" and config.train.balance == "weighted_loss"
    return build_loss(config.task, class_weights(targets) if weighted else None)


def training_loader(rows: pd.DataFrame, config: FinetuneConfig, image_size, batch_size: int, processes: int, use_cuda: bool):
    train = config.train
    dataset = LabelledImages(
        rows,
        image_size,
        rows["target"].to_numpy(),
        with_masks=config.task == "segment",
        augmentation=MammogramAugmentation.from_settings(config.augment),
        seed=train.seed,
    )
    samples_per_step = batch_size * processes
    if train.balance == "sampler":
        sampler = BalancedEpochSampler(rows["target"].to_numpy(), samples_per_step, seed=train.seed)
    else:
        sampler = EpochShuffle(len(dataset), samples_per_step, seed=train.seed)
    workers = config.data.num_workers
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
        num_workers=workers, pin_memory=use_cuda, persistent_workers=workers > 0,
    )  # fmt: skip
    return loader, sampler


def evaluation_loader(rows: pd.DataFrame, config: FinetuneConfig, image_size, batch_size: int, use_cuda: bool) -> DataLoader:
    dataset = LabelledImages(rows, image_size, rows["target"].to_numpy(), with_masks=config.task == "segment")
    return DataLoader(dataset, batch_size=batch_size, num_workers=config.data.num_workers, pin_memory=use_cuda)


def train_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    config: FinetuneConfig,
    image_size: tuple[int, int],
    run_dir: Path,
    accelerator: Accelerator,
) -> TrainedModel:
    """Train on ``train``, select the epoch on ``val``; the model comes back holding the
    selected weights (also in run_dir/model.safetensors)."""
    settings = config.train
    processes = accelerator.num_processes
    # A small group (one view, one ROI stratum) may hold fewer images than a batch.
    batch_size = min(settings.batch_size, len(train) // processes)
    if batch_size < 1:
        raise ValueError(f"{len(train)} training images cannot feed {processes} processes")
    use_cuda = accelerator.device.type == "cuda"
    loader, sampler = training_loader(train, config, image_size, batch_size, processes, use_cuda)
    eval_batch = config.eval.batch_size or settings.batch_size
    val_loader = evaluation_loader(val, config, image_size, eval_batch, use_cuda)

    set_seed(settings.seed)  # the same initial head on every process
    model, description = build_model(config, image_size, verbose=accelerator.is_main_process)
    loss_fn = training_loss(config, train["target"].to_numpy()).to(accelerator.device)
    groups = param_groups_layer_decay(
        model, settings.weight_decay, no_weight_decay_list=no_weight_decay_names(model), layer_decay=settings.layer_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(settings.betas))  # lr set every step
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader, val_loader)
    set_seed(settings.seed, device_specific=True)  # different drop-path draws per process

    plan = Plan(
        batch_size=batch_size,
        processes=processes,
        grad_accum_steps=1,
        batches_per_epoch=len(sampler) // (batch_size * processes),
        epochs=settings.epochs,
        max_steps=None,
        peak_lr=settings.lr,
        min_lr=settings.min_lr,
        warmup_epochs=settings.warmup_epochs,
    )
    selected_by = config.select_by
    if selected_by == "auc" and val["target"].nunique() < 2:
        accelerator.print("note: the validation rows hold one class, so ROC AUC is undefined; selecting by validation loss")
        selected_by = "loss"
    trainer = Trainer(
        session=Session(accelerator, model, optimizer, loader, sampler, plan, settings.seed, settings.clip_grad),
        val_loader=val_loader,
        val_targets=val["target"].to_numpy(),
        task=config.task,
        loss_fn=loss_fn,
        select_by=selected_by,
        eval_every=settings.eval_every,
        run_dir=run_dir,
        model_description=description,
        checkpoint_every=config.checkpoint.every_epochs,
        checkpoint_keep=config.checkpoint.keep,
        data_digest=rows_digest(pd.concat([train, val])),
    )
    accelerator.print(
        f"finetune {config.task}: {len(train)} train / {len(val)} val images, {processes} process(es) x batch "
        f"{batch_size}, {plan.steps_per_epoch} steps per epoch, {settings.epochs} epochs, selecting by {selected_by}"
    )
    return TrainedModel(model, trainer.fit(), selected_by, loss_fn, batch_size)


# ---------------------------------------------------------------------------------------------
# After training: threshold, predictions, metrics.


def predict_rows(trained: TrainedModel, rows: pd.DataFrame, config: FinetuneConfig, image_size, accelerator) -> pd.DataFrame:
    """The selected model's predictions table for ``rows`` (no threshold applied yet)."""
    loader = evaluation_loader(rows, config, image_size, config.eval.batch_size or trained.batch_size, accelerator.device.type == "cuda")
    outputs = infer(trained.model, accelerator.prepare(loader), accelerator, config.task, trained.loss_fn)
    return prediction_table(rows, outputs, config.task, image_size[0] * image_size[1])


def decide_threshold(val_table: pd.DataFrame, config: FinetuneConfig) -> dict:
    """The decision threshold from validation predictions (Youden or a target sensitivity),
    or the one ``fixed:T`` names, whatever the predictions."""
    settings = config.eval
    targets, scores = val_table["target"].to_numpy(), val_table["probability"].to_numpy()
    fixed = fixed_threshold(settings.threshold_rule)
    if fixed is not None:
        return {"rule": "fixed", "threshold": fixed, "chosen_on": "config", "n": len(targets), "positives": int(targets.sum())}
    decision = {"rule": settings.threshold_rule, "chosen_on": "val", "n": len(targets), "positives": int(targets.sum())}
    if settings.threshold_rule == "sensitivity":
        decision["target_sensitivity"] = settings.target_sensitivity
    if len(np.unique(targets)) < 2:
        decision.update(threshold=0.5, rule="default", note="the validation rows hold one class; no threshold can be fitted")
        return decision
    decision["threshold"] = choose_threshold(targets, scores, settings.threshold_rule, settings.target_sensitivity)
    return decision


def report(table: pd.DataFrame, config: FinetuneConfig, threshold: float | None) -> dict:
    """Metrics of one split's predictions, with patient-level bootstrap 95 % intervals."""
    if config.task == "classify":
        return classification_report(table, threshold, config.eval.n_boot, seed=config.train.seed)
    return segmentation_report(table, config.eval.n_boot, seed=config.train.seed)


def write_history(history: list[dict], path: Path) -> None:
    write_csv(path, pd.DataFrame(history), float_format="%.6g")


# ---------------------------------------------------------------------------------------------
# Cross-validation.


@dataclass
class CrossValidationResult:
    run_dir: Path
    folds: list[FinetuneResult]
    summary: dict  # {"val": {metric: {mean, std, min, max, n}}, "test": ...}


def cross_validate(
    frame: pd.DataFrame,
    init: str | Path,
    task: str,
    config: FinetuneConfig,
    run_dir: str | Path,
    k: int = 5,
    accelerator: Accelerator | None = None,
) -> CrossValidationResult:
    """k finetuning runs, each validating on one patient-grouped, stratified fold of the
    non-test rows (``run_dir/fold_<i>``); the mean and spread of their metrics in
    ``run_dir/cv_metrics.json``. Test rows, if any, are predicted by every fold's model."""
    run_dir = Path(run_dir).expanduser().resolve()
    rows, _ = select_task_rows(frame, task, config.data)
    folds = kfold(rows.drop(columns="target"), k, seed=config.data.split_seed)
    accelerator = accelerator or make_accelerator(config.train.mixed_precision)
    with run_folder.hold(run_dir, accelerator):  # each fold's run holds its own folder inside
        results = [finetune(fold, init, task, config, run_dir / f"fold_{i}", accelerator) for i, fold in enumerate(folds)]
    summary = {
        split: summarize_folds([_numbers(result.metrics[split]) for result in results])
        for split in ("val", "test")
        if all(split in result.metrics for result in results)
    }
    if accelerator.is_main_process:
        seen = [r.metrics[SEEN_IN_PRETRAINING] for r in results if SEEN_IN_PRETRAINING in r.metrics]  # the same test rows in every fold
        record = {"k": k, "folds": [r.run_dir.name for r in results], **({SEEN_IN_PRETRAINING: max(seen)} if seen else {})}
        write_json(run_dir / "cv_metrics.json", {**record, "summary": summary})
    return CrossValidationResult(run_dir, results, summary)


def _numbers(metrics: dict) -> dict:
    """The per-metric entries of a report (not its n, patients or alpha)."""
    return {name: value for name, value in metrics.items() if isinstance(value, dict)}


# ---------------------------------------------------------------------------------------------
# The command line.


def run(config: FinetuneConfig, folds: int = 0) -> FinetuneResult | CrossValidationResult:
    """What ``finetune.py`` and ``vismae finetune`` do: read ``data.manifest``, finetune into
    ``output_dir`` (or cross-validate over ``folds`` folds)."""
    if not config.data.manifest:
        raise ConfigError("data.manifest: give the prepared cache's manifest.csv")
    frame = read_manifest(config.data.manifest)
    if folds:
        return cross_validate(frame, config.init, config.task, config, config.output_dir, k=folds)
    return finetune(frame, config.init, config.task, config, config.output_dir)


def summary_lines(result: FinetuneResult | CrossValidationResult) -> list[str]:
    """What the command prints: where the run is and its headline numbers with intervals."""
    if isinstance(result, CrossValidationResult):
        lines = [f"{len(result.folds)}-fold cross-validation: {result.run_dir}"]
        seen = max((fold.metrics.get(SEEN_IN_PRETRAINING) or 0 for fold in result.folds), default=0)
        if seen:
            test = next((fold.metrics["test"]["n"] for fold in result.folds if "test" in fold.metrics), 0)
            lines.append(seen_warning(seen, test, result.folds[0].metrics.get("init", "")))
        for split, summary in result.summary.items():
            cells = [f"{name} {s['mean']:.3f} +/- {s['std']:.3f}" for name, s in summary.items() if name in HEADLINE]
            mark = f" {seen_mark(seen)}" if split == "test" and seen else ""
            lines.append(f"  {split} (mean +/- sd over folds){mark}: " + ", ".join(cells))
        return lines
    metrics = result.metrics
    seen = metrics.get(SEEN_IN_PRETRAINING) or 0
    lines = [f"run: {result.run_dir}", f"selected epoch {result.best_epoch} by validation {metrics['selected_by']}"]
    if seen:
        lines.append(seen_warning(seen, metrics["test"]["n"] if "test" in metrics else seen, metrics.get("init", "")))
    if result.threshold is not None:
        decision = metrics["threshold"]
        how = "fixed by the config" if decision.get("chosen_on") == "config" else f"chosen on {decision.get('chosen_on', 'val')}"
        lines.append(f"threshold {result.threshold:.4g} ({decision['rule']}, {how})")
    for split in ("val", "test"):
        if split in metrics:
            report = metrics[split]
            cells = [f"{name} {value_with_interval(v)}" for name, v in report.items() if name in HEADLINE]
            mark = f" {seen_mark(seen)}" if split == "test" and seen else ""
            lines.append(f"  {split} (n={report['n']}){mark}: " + ", ".join(cells))
    lines.append(f"predictions: {result.predictions}")
    return lines
