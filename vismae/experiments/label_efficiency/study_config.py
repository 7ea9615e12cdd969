"""The pretraining study's config: does pretraining on an unlabelled pool save labels?

    output_dir: runs/study/synthetic
    labelled: null                 # a prepared cache's manifest.csv; null: a synthetic one (synthetic.labelled_*)
    pool: []                       # prepared caches' manifests to pretrain on; empty: synthetic ones (synthetic.pool_*)
    synthetic: {...}               # the phantom datasets made when labelled or pool is not given
    pretrain: pretrain/demo.yaml   # the pretraining recipe: a shipped config's name or a path
    pretrain_seeds: [0, 1, 2]      # one pretraining run per seed; the report pools them
    pretrain_overrides: []         # dotted overrides of the recipe, e.g. [train.epochs=30]
    sweep: sweep/demo.yaml         # the label-efficiency recipe (fractions, seeds, finetuning)
    sweep_overrides: []
    methods: [probe, finetune]     # a frozen-encoder probe sweep, a finetuning sweep, or both

The study sets the pretraining runs' output_dir, data.manifests and train.seed, and the sweeps'
output_dir, manifest, method, inits (``pretrained-s<k>`` per pretraining seed, and ``random``
with the recipe's preset) and baseline; everything else comes from the two recipes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from vismae.config import load_config, require
from vismae.io import absolute_path
from vismae.shipped_configs import shipped_config
from vismae.synthetic import FORMATS

METHODS = ("probe", "finetune")


@dataclass
class SyntheticStudyData:
    """Phantom datasets for a study without data: a labelled set and an unlabelled pool of other
    patients (another phantom seed), several times larger, at the phantom's finding prevalence."""

    labelled_format: str = "vindr"
    labelled_patients: int = 200
    labelled_seed: int = 2
    pool_formats: list[str] = field(default_factory=lambda: ["vindr", "cdd-cesm"])
    pool_patients: int = 400  # per format
    pool_seed: int = 1
    size: int = 64  # the caches' image side

    def validate(self) -> None:
        for key, name in [("labelled_format", self.labelled_format), *(("pool_formats", name) for name in self.pool_formats)]:
            require(name in FORMATS, f"synthetic.{key}: {name!r} is no phantom format; choose from {', '.join(FORMATS)}")
        require(self.labelled_patients >= 20, f"synthetic.labelled_patients: at least 20, got {self.labelled_patients}")
        require(self.pool_patients >= 1, f"synthetic.pool_patients: at least 1, got {self.pool_patients}")
        require(self.labelled_seed != self.pool_seed, "synthetic: labelled_seed and pool_seed must differ (other patients)")


@dataclass
class StudyConfig:
    output_dir: str = "runs/study"
    labelled: str | None = None
    pool: list[str] = field(default_factory=list)
    synthetic: SyntheticStudyData = field(default_factory=SyntheticStudyData)
    pretrain: str = "pretrain/demo.yaml"
    pretrain_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_overrides: list[str] = field(default_factory=list)
    sweep: str = "sweep/demo.yaml"
    sweep_overrides: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    n_boot: int = 1000  # resamples of the pooled paired differences

    def validate(self) -> None:
        require(bool(self.pretrain_seeds), "pretrain_seeds: give at least one pretraining seed")
        require(len(set(self.pretrain_seeds)) == len(self.pretrain_seeds), f"pretrain_seeds: repeated seeds in {self.pretrain_seeds}")
        unknown = [method for method in self.methods if method not in METHODS]
        require(bool(self.methods) and not unknown, f"methods: choose from {', '.join(METHODS)}, got {self.methods}")
        require(self.n_boot >= 100, f"n_boot: at least 100, got {self.n_boot}")
        self.synthetic.validate()

    def recipe(self, name: str) -> Path:
        """A recipe's file: a path that exists, else a shipped config (``pretrain/demo.yaml``)."""
        path = Path(name).expanduser()
        return path if path.is_file() else shipped_config(*Path(name).parts)

    def with_absolute_paths(self) -> StudyConfig:
        return replace(self, output_dir=absolute_path(self.output_dir), labelled=absolute_path(self.labelled),
                       pool=[absolute_path(path) for path in self.pool])  # fmt: skip


def load_study_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> StudyConfig:
    return load_config(StudyConfig, path, overrides)
