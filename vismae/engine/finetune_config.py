"""The finetuning schema: one YAML file per recipe, loaded and overridden like pretraining's.

    task: classify            # or segment
    init: runs/pretrain/export  # encoder weights, or random:<preset>
    model: {backbone: swin}     # or a timm model, e.g. convnextv2_tiny (init: random or a timm file)
    data: {manifest: cache/manifest.csv, negative: [benign], positive: [malignant]}
    train: {epochs: 50, warmup_epochs: 10, lr: 1.0e-4, layer_decay: 0.75, balance: weighted_loss}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from vismae.config import ConfigError, load_config, require
from vismae.data.manifest import LABELS, VIEW_NAMES, VIEWS
from vismae.io import absolute_path
from vismae.models.random_init import SWIN_BACKBONE, init_problem, is_random_init

TASKS = ("classify", "segment")
THRESHOLD_RULES = ("youden", "sensitivity")  # chosen on validation predictions
FIXED_PREFIX = "fixed:"


@dataclass
class FinetuneData:
    manifest: str | None = None  # a prepared cache's manifest.csv (the command line; finetune() takes a frame)
    size: int | list[int] | None = None  # the model's input, one side or [height, width]; null: the cache's size
    negative: list[str] = field(default_factory=lambda: ["benign"])  # labels of class 0
    positive: list[str] = field(default_factory=lambda: ["malignant"])  # labels of class 1
    views: list[str] = field(default_factory=list)  # keep only these (CC, MLO, RCC, LCC, RMLO, LMLO); empty: all
    roi: Literal["any", "with", "without"] = "any"  # keep images with / without an annotated ROI
    val_fraction: float = 0.2  # of training patients, carved only when the rows have no val split
    split_seed: int = 0
    num_workers: int = 2

    def validate(self) -> None:
        if self.size is not None:
            sides = [self.size] if isinstance(self.size, int) else self.size
            require(len(sides) in (1, 2) and min(sides) > 0, f"data.size must be a positive int, [height, width] or null, got {self.size}")
        for key in ("negative", "positive"):
            unknown = sorted(set(getattr(self, key)) - set(LABELS))
            require(not unknown, f"data.{key}: unknown labels {unknown}; labels are {', '.join(LABELS)}")
        require(bool(self.negative) and bool(self.positive), "data.negative and data.positive each need a label")
        both = sorted(set(self.negative) & set(self.positive))
        require(not both, f"data.negative and data.positive share {both}")
        unknown = sorted(set(self.views) - set(VIEWS) - set(VIEW_NAMES))
        require(not unknown, f"data.views: unknown views {unknown}; use {', '.join(VIEWS + VIEW_NAMES)}")
        require(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")

    @property
    def image_size(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        sides = [self.size] if isinstance(self.size, int) else self.size
        return (sides[0], sides[-1])


@dataclass
class FinetuneModel:
    # swin: the VIS-MAE Swin encoder, its architecture and weights from init. Any other name is
    # a timm model (e.g. convnextv2_tiny, the ROI paper's ConvNeXtV2) with one input channel and
    # timm's own two-class head, classification only; its init is random or a timm checkpoint
    # file (.safetensors, .pth). Nothing is downloaded.
    backbone: str = SWIN_BACKBONE
    drop_path: float = 0.1  # stochastic depth of the encoder, rising to this in the last block
    head_dropout: float = 0.0
    pool: Literal["avg", "max", "avgmax", "catavgmax"] = "avg"  # the classifier's global pooling (timm's global_pool)
    # Which encoder stages the classifier reads: last (norm, pool, linear on the last map) or
    # all (mean and max of every stage's map, BatchNorm, linear; pool does not apply). Swin only.
    head_stages: Literal["last", "all"] = "last"
    decoder: Literal["swin", "conv"] = "swin"  # the segmenter's up path: Swin-UNet (VIS-MAE) or UNETR conv blocks
    # Fold the init weights' known input normalization (ImageNet's for supervised Swins,
    # VIS-MAE's for reference checkpoints) into the patch embedding, so [0, 1] pixels fit them.
    fold_input_norm: bool = True
    overrides: dict = field(default_factory=dict)  # EncoderConfig fields the weights leave open: window_size ...

    def validate(self) -> None:
        require(0.0 <= self.drop_path < 1.0, f"model.drop_path must be in [0, 1), got {self.drop_path}")
        for key, where in (("drop_path_rate", "model.drop_path"), ("img_size", "data.size")):
            require(key not in self.overrides, f"model.overrides.{key}: set it with {where}")
        require(0.0 <= self.head_dropout < 1.0, f"model.head_dropout must be in [0, 1), got {self.head_dropout}")
        require(bool(self.backbone), f"model.backbone: give {SWIN_BACKBONE} or a timm model name, e.g. convnextv2_tiny")
        require(
            self.head_stages == "last" or self.backbone == SWIN_BACKBONE,
            f"model.head_stages {self.head_stages} needs model.backbone {SWIN_BACKBONE}; timm backbones keep their own head",
        )
        if self.backbone != SWIN_BACKBONE:
            require(
                not self.overrides,
                f"model.overrides {sorted(self.overrides)} are Swin encoder fields; "
                f"with model.backbone {self.backbone} leave them empty",
            )
            from vismae.models.backbones import check_backbone_name  # timm loads only for a timm backbone

            try:
                check_backbone_name(self.backbone)
            except ValueError as error:
                raise ConfigError(str(error), "model.backbone") from None


@dataclass
class FinetuneTrain:
    epochs: int = 50
    warmup_epochs: float = 10.0
    batch_size: int = 32  # per process
    lr: float = 1e-4  # peak lr of the head; encoder layers get lr x layer_decay^depth
    min_lr: float = 1e-6
    layer_decay: float = 0.75  # 1.0: every layer at the same lr
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = None
    # Classification: weighted_loss (class-weighted cross-entropy), sampler (classes drawn
    # equally often) or none. Segmentation: sampler (images with and without ROI drawn equally
    # often) or none.
    balance: Literal["weighted_loss", "sampler", "none"] = "weighted_loss"
    # The epoch kept: auc (validation ROC AUC; classification), dice (mean validation Dice;
    # segmentation) or loss (validation loss); auto picks auc or dice by task.
    select_by: Literal["auto", "auc", "dice", "loss"] = "auto"
    eval_every: int = 1  # epochs between validation passes (the last epoch is always validated)
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"  # GPUs only; "no" on the CPU
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        require(0 <= self.warmup_epochs <= self.epochs, f"train.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        require(self.lr > 0 and self.min_lr >= 0, "train.lr must be positive and train.min_lr >= 0")
        require(0.0 < self.layer_decay <= 1.0, f"train.layer_decay must be in (0, 1], got {self.layer_decay}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"train.betas must be two numbers in [0, 1), got {self.betas}")
        require(self.clip_grad is None or self.clip_grad > 0, f"train.clip_grad must be positive or null, got {self.clip_grad}")


@dataclass
class FinetuneAugment:
    """Mammogram-safe augmentation: small affine moves and intensity changes, masks moved with
    the image. Never a horizontal flip: every prepared breast touches the left edge."""

    enabled: bool = True
    affine_prob: float = 0.5
    rotate_deg: float = 10.0
    zoom: float = 0.1  # scale drawn from [1 - zoom, 1 + zoom]
    translate: float = 0.05  # shift, as a fraction of the image side
    intensity_prob: float = 0.5
    gamma: float = 0.3  # contrast: gamma drawn from [exp(-gamma), exp(gamma)]
    brightness: float = 0.1  # intensities scaled by a factor from [1 - b, 1 + b]
    noise_std: float = 0.01

    def validate(self) -> None:
        for name in ("affine_prob", "intensity_prob"):
            require(0.0 <= getattr(self, name) <= 1.0, f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotate_deg", "zoom", "translate", "gamma", "brightness", "noise_std"):
            require(getattr(self, name) >= 0, f"augment.{name} must be >= 0, got {getattr(self, name)}")
        require(self.zoom < 1 and self.brightness < 1, "augment.zoom and augment.brightness must be below 1")


@dataclass
class FinetuneEval:
    # youden or sensitivity: chosen on validation predictions only. fixed:T: T whatever the
    # data, e.g. fixed:0.5, the arg-max of two classes (a default classifier's decision).
    threshold_rule: str = "youden"
    target_sensitivity: float = 0.9  # for threshold_rule: sensitivity
    n_boot: int = 1000  # patient-level bootstrap resamples for the 95 % intervals
    batch_size: int | None = None  # null: train.batch_size

    def validate(self) -> None:
        require(0 < self.target_sensitivity <= 1, f"eval.target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        require(self.n_boot >= 1, f"eval.n_boot must be >= 1, got {self.n_boot}")
        require(self.batch_size is None or self.batch_size >= 1, f"eval.batch_size must be >= 1 or null, got {self.batch_size}")
        fixed_threshold(self.threshold_rule)  # refuses a malformed rule


def fixed_threshold(rule: str) -> float | None:
    """The T of an ``eval.threshold_rule`` ``fixed:T``; None for the rules that choose it on
    validation (youden, sensitivity). A rule that is neither is refused."""
    if rule in THRESHOLD_RULES:
        return None
    text = str(rule)
    expected = f"expected {', '.join(THRESHOLD_RULES)} or fixed:T with 0 < T < 1 (e.g. fixed:0.5)"
    if not text.startswith(FIXED_PREFIX):
        raise ConfigError(f"eval.threshold_rule: unknown rule {text!r}; {expected}", "eval.threshold_rule")
    try:
        value = float(text.removeprefix(FIXED_PREFIX))
    except ValueError:
        message = f"eval.threshold_rule: {text!r} gives no number after fixed:; {expected}"
        raise ConfigError(message, "eval.threshold_rule") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"eval.threshold_rule: {text!r} is outside (0, 1); {expected}", "eval.threshold_rule")
    return value


@dataclass
class FinetuneCheckpoint:
    every_epochs: int = 1  # training state saved for resuming; 0: never
    keep: int = 1

    def validate(self) -> None:
        require(self.every_epochs >= 0, f"checkpoint.every_epochs must be >= 0, got {self.every_epochs}")
        require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass
class FinetuneConfig:
    task: Literal["classify", "segment"] = "classify"
    # Encoder weights (any format load_encoder reads) or random:<preset>; with a timm
    # model.backbone, random or a timm checkpoint file.
    init: str = "random:vismae"
    output_dir: str = "runs/finetune"  # the run folder (the command line; finetune() takes run_dir)
    data: FinetuneData = field(default_factory=FinetuneData)
    model: FinetuneModel = field(default_factory=FinetuneModel)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    augment: FinetuneAugment = field(default_factory=FinetuneAugment)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    checkpoint: FinetuneCheckpoint = field(default_factory=FinetuneCheckpoint)

    def validate(self) -> None:
        if self.task == "segment":
            require(
                self.train.balance != "weighted_loss",
                "train.balance: weighted_loss is for classification; segmentation takes sampler or none",
            )
            require(self.train.select_by != "auc", "train.select_by: auc is for classification; use dice or loss")
        elif self.train.select_by == "dice":
            require(False, "train.select_by: dice is for segmentation; use auc or loss")
        require(
            self.task == "classify" or self.model.backbone == SWIN_BACKBONE,
            f"model.backbone {self.model.backbone}: timm backbones classify; segmentation takes the {SWIN_BACKBONE} encoder",
        )

    @property
    def select_by(self) -> str:
        if self.train.select_by != "auto":
            return self.train.select_by
        return "auc" if self.task == "classify" else "dice"

    def for_run(self, init: str | os.PathLike, task: str, run_dir: str | os.PathLike) -> FinetuneConfig:
        """This config with the run's encoder, task and folder, paths absolute, checked again."""
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        init = str(init)
        problem = init_problem(init, self.model.backbone)
        if problem:
            raise ConfigError(problem, "init")
        if not is_random_init(init):
            init = absolute_path(init)
        config = dataclasses.replace(
            self,
            task=task,
            init=init,
            output_dir=absolute_path(run_dir),
            data=dataclasses.replace(self.data, manifest=absolute_path(self.data.manifest)),
        )
        config.validate()
        return config


def load_finetune_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides)
