"""The ROI-aware experiment's config: one YAML file per dataset, overridden like every other.

    output_dir: runs/roi_aware/vindr
    manifest: cache/vindr/manifest.csv     # a prepared cache with a test split
    init: runs/pretrain/vindr/export       # the one encoder every classifier starts from
    recipe: vismae                         # the recipe's name in the report (e.g. paper)
    paper: vindr                           # which published tables to show beside ours
    seeds: [0, 1, 2]
    population: paper                      # or screening: normal (BI-RADS 1) test images scored too
    small_groups: {rule: pooled, min_images: 20, min_per_class: 10}
    router: {kind: classifier}
    finetune: {...}                        # a finetuning recipe (vismae.engine.finetune_config)

Every classifier and the router are trained by the finetuning engine with ``finetune``; the
experiment sets their task, encoder, data and folder itself.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from vismae.config import ConfigError, load_config, require
from vismae.engine.finetune_config import FinetuneConfig, FinetuneData
from vismae.experiments.roi_aware.paper_numbers import DATASETS
from vismae.experiments.roi_aware.rules import NORMAL_LABEL
from vismae.io import absolute_path
from vismae.models.random_init import SWIN_BACKBONE, init_problem, is_random_init


@dataclass
class SmallGroups:
    """When a (view, ROI presence) group is too small for a classifier of its own.

    A group gets its own classifier when its training rows hold at least ``min_images`` images
    and ``min_per_class`` of each class, and its validation rows ``min_val_per_class`` of each
    class (its epoch and decision threshold are chosen on them; 0 leaves that to the engine's
    fallbacks). Otherwise ``rule`` decides: ``pooled`` trains one
    classifier for the ROI-presence stratum across all four views (and falls back to constant
    when the stratum fails the same test); ``constant`` predicts the group's training
    prevalence of malignancy for every image routed to it.
    """

    rule: Literal["pooled", "constant"] = "pooled"
    min_images: int = 20
    min_per_class: int = 5
    min_val_per_class: int = 1

    def validate(self) -> None:
        require(self.min_images >= 2, f"small_groups.min_images must be >= 2, got {self.min_images}")
        require(self.min_per_class >= 1, f"small_groups.min_per_class must be >= 1, got {self.min_per_class}")
        require(self.min_val_per_class >= 0, f"small_groups.min_val_per_class must be >= 0, got {self.min_val_per_class}")


@dataclass
class RouterSettings:
    """The deployable path's ROI-presence model, trained on the training split only.

    ``classifier``: a has-ROI classifier through the finetuning engine, routing at its
    validation-chosen threshold. ``segmenter``: a ROI segmenter; an image counts as having an
    ROI when its predicted ROI area (fraction of the image) reaches a threshold chosen on the
    validation images (Youden's J against their annotations).
    """

    kind: Literal["classifier", "segmenter"] = "classifier"


@dataclass
class RoiAwareConfig:
    output_dir: str = "runs/roi_aware"
    manifest: str | None = None  # a prepared cache's manifest.csv, with train and test splits
    # Encoder weights or random:<preset>, shared by every model; with a timm
    # finetune.model.backbone (e.g. convnextv2_tiny), random or a timm checkpoint file.
    init: str = "random:vismae"
    # The recipe's name, printed in the report's header and every results row, so that two
    # runs of one dataset (e.g. vismae: class-weighted loss, threshold chosen on validation;
    # paper: the ROI paper's plain cross-entropy and arg-max) are told apart side by side.
    recipe: str = "vismae"
    paper: str | None = None  # vindr or cdd-cesm: the paper's tables shown beside ours; null: none
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds (finetune.train.seed)
    # The test images scored. paper: benign and malignant only (BI-RADS 2-5 where labels follow
    # BI-RADS), normal (BI-RADS 1) images left out, as the paper does; a deployed model cannot
    # assume that. screening: the deployable procedure is scored a second time, with every
    # normal test image added as a negative, beside the paper's population. Its router and
    # classifiers stay those trained on benign and malignant images (as the paper's are): the
    # normal images are only scored.
    population: Literal["paper", "screening"] = "paper"
    small_groups: SmallGroups = field(default_factory=SmallGroups)
    router: RouterSettings = field(default_factory=RouterSettings)
    # The finetuning recipe of every model. Its data.negative/positive define the classes and
    # the rows kept; data.val_fraction and data.split_seed carve validation patients once, from
    # the training patients, shared by every model. init, task, output_dir, data.manifest,
    # data.views and data.roi are the experiment's to set.
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        require(bool(self.seeds), "seeds: give at least one training seed")
        require(len(set(self.seeds)) == len(self.seeds), f"seeds: repeated seeds in {self.seeds}")
        require(
            self.paper is None or self.paper in DATASETS,
            f"paper must be one of {', '.join(DATASETS)} or null, got {self.paper!r}",
        )
        require(self.finetune.task == "classify", "finetune.task: the experiment sets the task of each model; leave it at classify")
        classes = self.finetune.data.negative + self.finetune.data.positive
        require(
            self.population == "paper" or NORMAL_LABEL not in classes,
            f"population: screening adds the {NORMAL_LABEL!r} test images as negatives; they are already classes of "
            f"finetune.data.negative/positive ({classes}): leave population at paper or remove {NORMAL_LABEL!r} there",
        )
        require(bool(str(self.recipe).strip()), "recipe: give the recipe a name, e.g. vismae or paper")
        backbone = self.finetune.model.backbone
        problem = init_problem(self.init, backbone)
        require(problem is None, f"{problem} (finetune.model.backbone is {backbone})")
        require(
            backbone == SWIN_BACKBONE or self.router.kind == "classifier",
            f"router.kind: segmenter needs the {SWIN_BACKBONE} encoder; finetune.model.backbone {backbone} takes classifier",
        )
        defaults = FinetuneConfig()
        for key, value, default in (
            ("finetune.init", self.finetune.init, defaults.init),
            ("finetune.output_dir", self.finetune.output_dir, defaults.output_dir),
            ("finetune.data.manifest", self.finetune.data.manifest, FinetuneData().manifest),
            ("finetune.data.views", self.finetune.data.views, FinetuneData().views),
            ("finetune.data.roi", self.finetune.data.roi, FinetuneData().roi),
        ):
            require(
                value == default,
                f"{key}: the experiment sets it for every model (groups by view and ROI presence itself, "
                f"takes the encoder from 'init' and the rows from 'manifest'); remove it",
            )

    def with_absolute_paths(self) -> RoiAwareConfig:
        """Paths resolved against the working directory, so a resume from elsewhere finds them."""
        return dataclasses.replace(
            self,
            output_dir=absolute_path(self.output_dir),
            manifest=absolute_path(self.manifest),
            init=self.init if is_random_init(self.init) else absolute_path(self.init),
        )


def load_roi_aware_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RoiAwareConfig:
    config = load_config(RoiAwareConfig, path, overrides)
    if not config.manifest:
        raise ConfigError(f"{path or 'config'}: manifest: give a prepared cache's manifest.csv")
    return config
