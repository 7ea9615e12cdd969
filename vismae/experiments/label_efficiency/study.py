"""The pretraining study, one command (`vismae study`): pretrain on an unlabelled pool with
several seeds, then compare every pretrained encoder with random init on nested fractions of a
labelled set, as frozen-feature probes and finetuned, over seeds, and report the difference
pooled over the pretraining runs with its paired patient-bootstrap interval.

    STUDY/
      study.yaml                the resolved config
      data/labelled/, data/pool-<format>/   synthetic datasets (raw/, manifest.csv, cache/), when not given
      pretrain/s<k>/            one `vismae pretrain` run per pretraining seed
      probe/, finetune/         one label-efficiency sweep per method, inits pretrained-s<k> and random
      report/                   study.md, study.csv, study.png (vismae.experiments.label_efficiency.study_report)

Every stage resumes: datasets and pretraining runs that finished are kept, the sweeps skip
their finished runs, and the report is rebuilt from whatever has finished.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vismae.config import ConfigError, to_dict
from vismae.io import write_yaml
from vismae.models.formats.vismae_export import ENCODER_WEIGHTS
from vismae.experiments.label_efficiency.study_config import StudyConfig
from vismae.experiments.label_efficiency.study_report import BASELINE, PRETRAINED, build_study_report


def log(message: str) -> None:
    print(message, flush=True)


def pretrained_name(seed: int) -> str:
    return f"{PRETRAINED}-s{seed}"


# ---------------------------------------------------------------------------------------------
# Data.


def study_data(config: StudyConfig, folder: Path) -> tuple[str, list[str]]:
    """The labelled cache's manifest and the pool's: given, or made as synthetic datasets."""
    from vismae.synthetic.datasets import synthetic_cache

    data = config.synthetic
    labelled = config.labelled
    if labelled is None:
        log(f"data: {data.labelled_patients} synthetic labelled patients ({data.labelled_format}, phantom seed {data.labelled_seed})")
        labelled = str(synthetic_cache(data.labelled_format, folder / "labelled", data.labelled_patients, data.labelled_seed, data.size))
    pool = list(config.pool)
    if not pool:
        for name in data.pool_formats:
            log(f"data: {data.pool_patients} synthetic pool patients ({name}, phantom seed {data.pool_seed})")
            pool.append(str(synthetic_cache(name, folder / f"pool-{name}", data.pool_patients, data.pool_seed, data.size)))
    return labelled, pool


# ---------------------------------------------------------------------------------------------
# Pretraining.


def pretrain_config(config: StudyConfig, pool: list[str], seed: int, folder: Path):
    from vismae.config import load_pretrain_config

    overrides = [*config.pretrain_overrides, f"output_dir={folder / f's{seed}'}", f"data.manifests=[{','.join(pool)}]",
                 f"train.seed={seed}"]  # fmt: skip
    if not config.pool:  # the synthetic pool's caches have their own size
        overrides.append(f"data.size={config.synthetic.size}")
    return load_pretrain_config(config.recipe(config.pretrain), overrides)


def pretrain_all(config: StudyConfig, pool: list[str], folder: Path) -> dict[str, str]:
    """One pretraining run per seed (finished runs are kept); the sweeps' inits."""
    from vismae.engine.pretrain import run

    inits = {}
    for seed in config.pretrain_seeds:
        recipe = pretrain_config(config, pool, seed, folder)
        run_dir = Path(recipe.output_dir)
        if not (run_dir / ENCODER_WEIGHTS).is_file():
            log(f"\npretrain: seed {seed} into {run_dir}")
            run(recipe)
        inits[pretrained_name(seed)] = str(run_dir / ENCODER_WEIGHTS)
    inits[BASELINE] = f"random:{recipe.model.preset}"
    return inits


# ---------------------------------------------------------------------------------------------
# The sweeps.


def sweep_config(config: StudyConfig, method: str, labelled: str, inits: dict[str, str], folder: Path):
    from vismae.experiments.label_efficiency.config import load_sweep_config

    overrides = [*config.sweep_overrides, f"output_dir={folder / method}", f"manifest={labelled}", f"method={method}"]
    sweep = load_sweep_config(config.recipe(config.sweep), overrides)
    sweep = dataclasses.replace(sweep, inits=dict(inits), baseline=BASELINE)
    try:
        sweep.validate()
    except ConfigError as error:
        raise ConfigError(f"{config.sweep} with the study's inits and method {method}: {error}") from None
    return sweep


def run_sweeps(config: StudyConfig, labelled: str, inits: dict[str, str], folder: Path) -> Path:
    """Each method's sweep of ``inits`` on ``labelled`` (resuming), then the study report; the
    report folder. The demo calls this with its own pretrained encoder."""
    from vismae.experiments.label_efficiency.sweep import run_sweep

    sweeps = {}
    for method in config.methods:
        log(f"\n{method}: label-efficiency sweep, {', '.join(inits)}")
        sweeps[method] = Path(folder) / method
        run_sweep(sweep_config(config, method, labelled, inits, Path(folder)))
    return build_study_report(Path(folder), sweeps, n_boot=config.n_boot)


def run_study(config: StudyConfig) -> Path:
    """Every stage of the study, each resuming; the report folder."""
    config.validate()
    config = config.with_absolute_paths()
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "study.yaml", to_dict(config))
    labelled, pool = study_data(config, folder / "data")
    inits = pretrain_all(config, pool, folder / "pretrain")
    return run_sweeps(config, labelled, inits, folder)
