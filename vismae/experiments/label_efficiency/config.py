"""The label-efficiency sweep's config: one YAML file per study, overridden like every other.

    output_dir: runs/sweep/vindr-classify
    manifest: caches/vindr-384/manifest.csv   # a prepared cache
    task: classify                            # or segment
    inits:                                    # name -> encoder weights (anything load_encoder reads)
      ours: runs/pretrain/mammo384/encoder.safetensors
      random: random:vismae
    baseline: random                          # its 100 % score is the bar for "labels saved"
    fractions: [0.05, 0.1, 0.25, 0.5, 0.8, 1.0]
    seeds: [0, 1, 2]
    folds: auto                               # 5-fold CV below 4,000 images (the paper's rule), else none
    validation: fraction                      # validation shrinks with the fraction too; full: 100 % at every fraction
    metrics: [roc_auc, pr_auc]                # the first is the headline one
    method: finetune                          # or probe: a linear probe on the frozen encoder
    probe: {stages: all, batch_size: 64}      # method probe only
    finetune: {...}                           # the finetuning recipe of every run

With ``method: finetune`` (the default) every run is one ``finetune`` call; the sweep sets its
task, encoder, rows, seed and folder.

With ``method: probe`` every run fits a linear probe (standardized features, L2 logistic
regression, C chosen by validation ROC AUC; vismae.engine.probe) on the frozen encoder's
embeddings of the run's training rows, on the same subsets, seeds and folds, into the same run
folder layout (predictions.csv, metrics.json, threshold.json) and report. Classification only.
Of the ``finetune`` section the probe reads:

    data: size, negative, positive, views, roi, val_fraction, split_seed   which rows, at what size
    model: backbone (must be swin), fold_input_norm, overrides            how the encoder is loaded
    eval: threshold_rule, target_sensitivity, n_boot                      threshold and intervals

The other finetuning keys (train, augment, checkpoint, the model's head and drop-path settings)
may stay in the file: a probe sweep ignores them, and continuing one with other values is
allowed. A random init's encoder is drawn once per init, with a fixed seed, and its embeddings
serve every seed: a seed changes the subsets, not the features.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from vismae.config import ConfigError, load_config, require
from vismae.data.splits import LABEL_FRACTIONS
from vismae.engine.finetune_config import FinetuneConfig, FinetuneData, FinetuneTrain
from vismae.engine.probe import PROBE_CS
from vismae.io import absolute_path
from vismae.metrics import CLASSIFICATION_METRICS
from vismae.models.random_init import SWIN_BACKBONE, is_random_init

SEGMENTATION_METRICS = ("dice", "precision", "recall", "dice_pooled", "precision_pooled", "recall_pooled")
TASK_METRICS = {"classify": CLASSIFICATION_METRICS, "segment": SEGMENTATION_METRICS}
# What the paper reports (ROC AUC and PR AUC; Dice, precision and recall), the first one in its figures.
DEFAULT_METRICS = {"classify": ["roc_auc", "pr_auc"], "segment": ["dice", "precision", "recall"]}
# The paper cross-validates datasets of fewer than 4,000 images with five folds.
AUTO_FOLDS = 5
AUTO_FOLDS_BELOW_IMAGES = 4000
# Init names become part of run folder names, where "_" separates the parts.
INIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
# What `vismae probe --stages` takes: all, last, or stage numbers (-1 is the last).
STAGES = re.compile(r"^\s*(all|last|-?\d+(\s*,\s*-?\d+)*)\s*$", re.IGNORECASE)


@dataclass
class SweepProbe:
    """The linear probe of ``method: probe`` (vismae.engine.probe.fit_linear_probe)."""

    stages: str = "all"  # the stages whose maps are pooled into the embedding, as `vismae probe --stages`
    cs: list[float] = field(default_factory=lambda: list(PROBE_CS))  # inverse L2 strengths tried on val
    batch_size: int = 64  # images embedded at once; changes no result

    def validate(self) -> None:
        require(bool(STAGES.match(str(self.stages))), f"probe.stages: expected all, last or stage numbers like 0,3, got {self.stages!r}")
        require(bool(self.cs) and all(c > 0 for c in self.cs), f"probe.cs: expected positive inverse strengths, got {self.cs}")
        require(self.batch_size >= 1, f"probe.batch_size must be >= 1, got {self.batch_size}")


def plan_method(plan: dict) -> str:
    """The method of a sweep's plan.json; plans written before the key existed are finetuning's."""
    return plan.get("method", "finetune")


@dataclass
class SweepConfig:
    output_dir: str = "runs/sweep"
    manifest: str | None = None  # a prepared cache's manifest.csv
    task: Literal["classify", "segment"] = "classify"
    inits: dict = field(default_factory=dict)  # name -> encoder source; run folders carry the name
    baseline: str = "random"  # the init whose mean score at 100 % is the bar of "labels saved"
    fractions: list[float] = field(default_factory=lambda: list(LABEL_FRACTIONS))  # of the training patients
    seeds: list[int] = field(default_factory=lambda: [0])  # each draws its own subsets and trains with it
    # k-fold cross-validation over the non-test patients: an int (0: none, use the manifest's
    # splits) or auto (5 folds when the task's rows number fewer than 4,000 images, else none).
    folds: int | Literal["auto"] = "auto"
    stratify: Literal["label", "none"] = "label"  # subsets keep each class's share of patients
    # The split whose scores the report compares: test, val (in k-fold: the held-out fold, which
    # also selects the epoch) or auto (test when the manifest has test rows, else val).
    score_split: Literal["auto", "test", "val"] = "auto"
    # The validation patients at each fraction. fraction: drawn like the training patients
    # (nested, patient-grouped, stratified), so that "5 % of the labels" is 5 % of those that
    # train and of those that choose the epoch and threshold, and the labels used count both.
    # full: every validation patient at every fraction (what sweeps did before this key
    # existed); the report says so. Where the scores are on val (score_split val, or auto
    # without a test split), validation is the scored set and stays whole either way.
    validation: Literal["fraction", "full"] = "fraction"
    metrics: list[str] = field(default_factory=list)  # empty: the paper's metrics for the task
    # What each run is: finetune (the encoder trained with a head) or probe (a linear probe on
    # the frozen encoder's embeddings; classification only). A sweep folder holds one method.
    method: Literal["finetune", "probe"] = "finetune"
    probe: SweepProbe = field(default_factory=SweepProbe)  # method probe only
    # The recipe of every run. data.val_fraction and data.split_seed carve validation patients
    # (when the manifest has none and there are no folds) and assign folds, once for the whole
    # sweep. task, init, output_dir, data.manifest and train.seed are the sweep's to set.
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        if self.method == "probe":
            self._validate_probe()
        require(bool(self.inits), "inits: name at least one encoder init, e.g. {ours: runs/x/encoder.safetensors, random: random:vismae}")
        for name, source in self.inits.items():
            require(bool(INIT_NAME.match(str(name))), f"inits: name {name!r} must be letters, digits and '-' (it names run folders)")
            require(isinstance(source, str) and bool(source), f"inits.{name}: expected a path or random:<preset>, got {source!r}")
        require(self.baseline in self.inits, f"baseline: {self.baseline!r} is not one of the inits ({', '.join(self.inits)})")
        bad = [f for f in self.fractions if not 0 < f <= 1]
        require(bool(self.fractions) and not bad, f"fractions must lie in (0, 1], got {bad or 'none'}")
        require(len(set(self.fractions)) == len(self.fractions), f"fractions: repeated values in {self.fractions}")
        require(1.0 in self.fractions, "fractions must include 1.0: the baseline's full-data score is the bar")
        require(bool(self.seeds), "seeds: give at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), f"seeds: repeated seeds in {self.seeds}")
        require(self.folds == "auto" or self.folds == 0 or self.folds >= 2, f"folds must be auto, 0 or >= 2, got {self.folds}")
        unknown = [m for m in self.metrics if m not in TASK_METRICS[self.task]]
        require(not unknown, f"metrics: {unknown} are not {self.task} metrics; choose from {', '.join(TASK_METRICS[self.task])}")
        self._validate_recipe()

    def _validate_probe(self) -> None:
        # Checked first: the metrics and recipe of a segmentation config would complain about other keys.
        require(self.task == "classify", f"method: probe fits a benign/malignant classifier on frozen features; it needs task: classify, "
                                         f"got task: {self.task} (use method: finetune to segment)")  # fmt: skip
        require(self.finetune.model.backbone == SWIN_BACKBONE, f"finetune.model.backbone: method probe embeds with the "
                f"{SWIN_BACKBONE} encoder's stages, got {self.finetune.model.backbone!r}")  # fmt: skip

    def _validate_recipe(self) -> None:
        require(self.finetune.task in (FinetuneConfig().task, self.task), f"finetune.task: the sweep's task is {self.task}; remove it")
        for key, value, default in (
            ("finetune.init", self.finetune.init, FinetuneConfig().init),
            ("finetune.output_dir", self.finetune.output_dir, FinetuneConfig().output_dir),
            ("finetune.data.manifest", self.finetune.data.manifest, FinetuneData().manifest),
            ("finetune.train.seed", self.finetune.train.seed, FinetuneTrain().seed),
        ):
            require(value == default, f"{key}: the sweep sets it for every run (from inits, output_dir, manifest and seeds); remove it")
        try:
            dataclasses.replace(self.finetune, task=self.task).validate()
        except ConfigError as error:
            raise ConfigError(f"finetune: {error}") from None

    @property
    def stratify_by(self) -> str | None:
        """``stratify`` as vismae.data.splits takes it."""
        return None if self.stratify == "none" else "label"

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics) or list(DEFAULT_METRICS[self.task])

    def recipe(self, seed: int) -> FinetuneConfig:
        """The finetuning config of one run: this sweep's recipe, task and training seed."""
        return dataclasses.replace(self.finetune, task=self.task, train=dataclasses.replace(self.finetune.train, seed=seed))

    def with_absolute_paths(self) -> SweepConfig:
        """Paths resolved against the working directory, so a resume from elsewhere finds them."""
        inits = {name: source if is_random_init(source) else absolute_path(source) for name, source in self.inits.items()}
        return dataclasses.replace(self, output_dir=absolute_path(self.output_dir), manifest=absolute_path(self.manifest), inits=inits)


def load_sweep_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> SweepConfig:
    config = load_config(SweepConfig, path, overrides)
    if not config.manifest:
        raise ConfigError(f"{path or 'config'}: manifest: give a prepared cache's manifest.csv")
    return config
