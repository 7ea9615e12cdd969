"""VIS-MAE's label-efficiency study (paper 3.4, Figs. 2 and 3): finetune each encoder init on
nested fractions of the labelled patients, over seeds (and k folds), to see how few labels each
init needs to match a randomly initialized model trained on all of them. ``method: probe`` fits
a linear probe on each frozen encoder instead (probe_runs.py), on the same subsets and into the
same layout, so that one sweep gives "probe AUC vs labelled fraction".

A fraction is of the training and the validation patients alike (``validation: fraction``, the
default): validation labels choose the epoch and the threshold, so they are labels used too,
and a run "with 5 % of the labels" has 5 % of both. ``validation: full`` keeps every validation
patient at every fraction, and the report says so. Test rows never change with the fraction.

    SWEEP/
      sweep.yaml                      the resolved config; a rerun with another recipe is refused
      plan.json                       folds, the scored split, every run's name in run-index order
      subsets/s0_k1/                  the (seed, fold)'s manifest.csv, fraction_<f>/manifest.csv, splits.json
      runs/f0.05_init-random_s0_k1/   one finetuning (or probe) run; result.json, written last, marks it done
      results.csv, report/            built by vismae.experiments.label_efficiency.report from the finished runs

Subsets depend on (seed, fold) alone, never on the init, so every init trains on the same rows.
A rerun skips finished runs and redoes unfinished ones from scratch. Shard i of n takes the
runs whose index mod n is i, so machines or an array job can share one sweep folder; a shard
holds a lock of its own there while it runs, and each run holds its run folder.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vismae import run_folder
from vismae.config import ConfigError, read_yaml, to_dict
from vismae.data.manifest import read_manifest
from vismae.data.splits import carve_validation, kfold, label_fractions, save_splits
from vismae.engine.accelerator import make_accelerator
from vismae.engine.finetune import finetune, select_rows
from vismae.experiments.label_efficiency.config import AUTO_FOLDS, AUTO_FOLDS_BELOW_IMAGES, SweepConfig
from vismae.experiments.label_efficiency.probe_runs import probe_runner
from vismae.experiments.label_efficiency.report import ERROR_FILE, PLAN_FILE, RESULT_FILE, RUNS_DIR, build_report
from vismae.io import input_digest, write_json, write_text
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, images_seen_in_pretraining, seen_warning

# Besides the report's names: result.json, written last into a run folder, marks the run
# finished; error.txt holds the traceback of a run that failed, and the next pass redoes it.
CONFIG_FILE = "sweep.yaml"
SUBSETS_DIR = "subsets"
SPLITS_FILE = "splits.json"
# Keys that change no finished run: a sweep may be continued with other values. Adding an init,
# a seed or a fraction only adds runs; the subsets of the old ones stay as they were.
NEUTRAL_KEYS = ("output_dir", "seeds", "fractions", "metrics", "baseline", "score_split", "finetune.data.num_workers",
                "finetune.eval.batch_size", "finetune.checkpoint.every_epochs", "finetune.checkpoint.keep",
                "probe.batch_size")  # fmt: skip
# Keys a method never reads, so they change none of its runs. "method" itself is never neutral:
# a folder holds the runs of one method, and its report compares them.
UNUSED_BY_METHOD = {
    "finetune": ("probe",),
    "probe": ("finetune.train", "finetune.augment", "finetune.checkpoint", "finetune.model.drop_path", "finetune.model.head_dropout",
              "finetune.model.pool", "finetune.model.head_stages", "finetune.model.decoder"),
}  # fmt: skip

# One run (finetuning, or a probe of the same shape): (spec, rows with a 0/1 ``target`` column,
# run folder) -> finetune's metrics dict ({"val": {metric: {"value", "low", "high"}, "n": ...},
# "test": ..., "best_epoch": ...}).
RunFunction = Callable[["RunSpec", pd.DataFrame, Path], Mapping]


# ---------------------------------------------------------------------------------------------
# The runs.


def subset_key(seed: int, fold: int | None) -> str:
    """The folder name of one (seed, fold)'s subsets: all a run's rows depend on."""
    return f"s{seed}" + (f"_k{fold}" if fold is not None else "")


@dataclass(frozen=True)
class RunSpec:
    fraction: float
    init: str
    seed: int
    fold: int | None = None  # None: no cross-validation, the manifest's own splits

    @property
    def subsets(self) -> str:
        return subset_key(self.seed, self.fold)

    @property
    def name(self) -> str:
        return f"f{self.fraction:g}_init-{self.init}_{self.subsets}"


def plan_runs(inits, fractions, seeds, folds) -> list[RunSpec]:
    """Every run, in a fixed order: seed, fold, fraction (small first), init."""
    return [RunSpec(float(f), init, seed, fold) for seed in seeds for fold in folds for f in sorted(fractions) for init in inits]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 0 <= i < n."""
    index, sep, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4 (shards are numbered from 0)")
    return index, count


def shard_runs(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """Shard ``index`` of ``count``: the runs whose position in the plan is ``index`` mod ``count``.
    The shards are disjoint and together hold every run, whichever machine computes them."""
    return [run for position, run in enumerate(runs) if position % count == index]


# ---------------------------------------------------------------------------------------------
# The rows: the task's rows, their folds, the nested subsets.


def task_rows(frame: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """The rows the finetuning engine would use for this task, with its 0/1 ``target``; drawing
    the subsets from these makes each fraction a fraction of the images that are trained on."""
    rows, left_out = select_rows(frame, config.recipe(seed=0))
    if rows.empty:
        raise ValueError(f"{config.manifest}: no rows left for the {config.task} task (left out: {left_out})")
    return rows


def resolve_folds(folds: int | str, images: int) -> int:
    if folds == "auto":
        return AUTO_FOLDS if images < AUTO_FOLDS_BELOW_IMAGES else 0
    return int(folds)


def fold_bases(rows: pd.DataFrame, config: SweepConfig) -> dict[int | None, pd.DataFrame]:
    """The complete manifest each fold's subsets are drawn from: with k folds, fold i's patients
    are val and the other non-test patients train; without, the manifest's own splits, with
    validation patients carved from train once (the same for every fraction) if it has none."""
    data = config.finetune.data
    k = resolve_folds(config.folds, len(rows))
    if k:
        return dict(enumerate(kfold(rows, k, seed=data.split_seed, stratify=config.stratify_by)))
    if not (rows["split"] == "val").any():
        rows = carve_validation(rows, data.val_fraction, seed=data.split_seed, stratify=config.stratify_by)
    return {None: rows}


def resolve_score_split(choice: str, rows: pd.DataFrame) -> str:
    has_test = bool((rows["split"] == "test").any())
    if choice == "auto":
        return "test" if has_test else "val"
    if choice == "test" and not has_test:
        raise ValueError("score_split is test, but the task's rows have no test split; give one (vismae split) or set score_split=val")
    return choice


def resolve_validation(choice: str, score_split: str) -> tuple[str, str]:
    """(the validation actually used, why it differs from ``choice``; empty when it does not).
    Scored on val, validation is the set the report compares: shrinking it would change what
    each fraction is scored on, so it stays whole."""
    if choice == "fraction" and score_split == "val":
        return "full", "the scores are on the validation split, which must stay the same at every fraction"
    return choice, ""


def shrinking_splits(validation: str) -> tuple[str, ...]:
    """The splits a fraction draws from (vismae.data.splits.label_fractions' ``shrink``)."""
    return ("train", "val") if validation == "fraction" else ("train",)


def scored_image_ids(bases: dict, score_split: str) -> list[str]:
    """Every image the sweep's scores are computed on, over its folds."""
    return sorted({image for base in bases.values() for image in base.loc[base["split"] == score_split, "image_id"].astype(str)})


def subset_digest(rows: pd.DataFrame) -> str:
    """What identifies a subset: its images and their splits."""
    return input_digest(rows, ["image_id", "split"])


def prepare_subsets(
    folder: Path, base: pd.DataFrame, fractions, seed: int, stratify: str | None, shrink=("train",)
) -> dict[float, pd.DataFrame]:
    """The nested subsets of one (seed, fold), drawn from the ``shrink`` splits, saved under
    ``folder`` on first use and checked against the saved ones afterwards, so that a sweep never
    mixes runs on different rows."""
    record = folder / SPLITS_FILE
    saved = json.loads(record.read_text()).get("digests", {}) if record.is_file() else {}
    # Fractions saved earlier are drawn again too (each fraction's draw ignores the others), so a
    # sweep extended by a fraction keeps the old subsets' files.
    wanted = sorted({float(f) for f in fractions} | {float(f) for f in saved if f != "base"})
    subsets = label_fractions(base, wanted, seed=seed, stratify=stratify, shrink=shrink)
    digests = {"base": subset_digest(base), **{f"{f:g}": subset_digest(subset) for f, subset in subsets.items()}}
    changed = sorted(key for key in saved.keys() & digests.keys() if saved[key] != digests[key])
    if changed:
        raise ValueError(
            f"{folder}: the subsets drawn now differ from those saved ({', '.join(changed)}): the manifest or the row "
            "selection changed since this sweep started; start a new sweep folder"
        )
    if saved.keys() != digests.keys():
        # overwrite: shards starting together may both write; their files are identical.
        settings = {"stratify": stratify, "shrink": list(shrink), "digests": digests}
        save_splits(folder, base, seed=seed, fractions=subsets, settings=settings, overwrite=True)
    return {float(f): subsets[float(f)] for f in fractions}


def labelled_budget(rows: pd.DataFrame) -> dict:
    """What a subset's labels cost: its training and validation images, patients and positives
    (validation labels choose the epoch and threshold), and ``labels_used``, the labelled
    images of both."""
    budget = {}
    for split in ("train", "val"):
        part = rows[rows["split"] == split]
        budget.update({f"{split}_images": len(part), f"{split}_patients": int(part["patient_id"].nunique()),
                       f"{split}_positives": int(part["target"].sum())})  # fmt: skip
    return {**budget, "labels_used": budget["train_images"] + budget["val_images"]}


# ---------------------------------------------------------------------------------------------
# The sweep folder.


@dataclass
class SweepPlan:
    config: SweepConfig  # paths absolute
    folder: Path
    bases: dict[int | None, pd.DataFrame]
    score_split: str
    runs: list[RunSpec]
    validation: str = "fraction"  # what validation is at each fraction: fraction or full
    validation_note: str = ""  # why it is not what the config asked
    scored_images: int = 0  # the images scored on, over the folds
    seen: dict = field(default_factory=dict)  # init -> scored images it was pretrained on (None: unknown)

    def to_dict(self) -> dict:
        config = self.config
        return {
            "method": config.method,
            "task": config.task,
            "score_split": self.score_split,
            "metrics": config.metric_names,
            "baseline": config.baseline,
            "inits": config.inits,
            "fractions": sorted(config.fractions),
            "seeds": config.seeds,
            "folds": [fold for fold in self.bases],
            "stratify": config.stratify,
            "validation": self.validation,
            "validation_note": self.validation_note,
            "scored_images": self.scored_images,
            SEEN_IN_PRETRAINING: self.seen,
            "manifest": config.manifest,
            "runs": [run.name for run in self.runs],
        }


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Read the manifest and lay out every run, writing nothing."""
    config = config.with_absolute_paths()
    rows = task_rows(read_manifest(config.manifest), config)
    bases = fold_bases(rows, config)
    runs = plan_runs(config.inits, config.fractions, config.seeds, list(bases))
    score_split = resolve_score_split(config.score_split, rows)
    validation, note = resolve_validation(config.validation, score_split)
    scored = scored_image_ids(bases, score_split)
    seen = {name: images_seen_in_pretraining(source, scored) for name, source in config.inits.items()}
    return SweepPlan(config, Path(config.output_dir), bases, score_split, runs, validation, note, len(scored), seen)


def check_config(folder: Path, config: SweepConfig, validation: str | None = None) -> None:
    """Refuse to continue a sweep folder under a config that would change its finished runs;
    extending it (more seeds, fractions or inits) is fine, and the saved config follows.
    ``validation``: what validation is at each fraction (``SweepPlan.validation``)."""
    new = to_dict(config)
    saved_path = folder / CONFIG_FILE
    if saved_path.is_file():
        # An init added or dropped changes no other run; one whose weights changed does: the
        # configs are compared on the inits both name.
        saved = read_yaml(saved_path)
        if "validation" not in saved:
            # Saved before the key existed: every run validated on all validation patients.
            if (validation or config.validation) == "fraction":
                raise ConfigError(
                    f"{folder} holds a sweep started before validation shrank with the fraction: its runs chose the epoch "
                    "and threshold on 100 % of the validation labels at every fraction. Continue it with validation=full "
                    "(the report says so), or start a new sweep folder"
                )
            saved["validation"] = config.validation  # whole either way: the same runs
        common = (saved.get("inits") or {}).keys() & config.inits.keys()
        run_folder.check_config(
            folder,
            {**new, "inits": {name: new["inits"][name] for name in sorted(common)}},
            neutral=NEUTRAL_KEYS + UNUSED_BY_METHOD[config.method],
            defaults=to_dict(SweepConfig()),
            what="a sweep",
            saved={**saved, "inits": {name: saved["inits"][name] for name in sorted(common)}},
        )
    run_folder.save_config(folder, new, file=CONFIG_FILE)


def run_state(run_dir: Path) -> str:
    """done (result.json written), failed (error.txt only), unfinished (other files) or new."""
    if (run_dir / RESULT_FILE).is_file():
        return "done"
    if (run_dir / ERROR_FILE).is_file():
        return "failed"
    return "unfinished" if run_dir.exists() else "new"


def result_row(spec: RunSpec, source: str, rows: pd.DataFrame, metrics: Mapping, seconds: float) -> dict:
    """One line of results.csv: the run, its labelled budget, and every metric of val and test
    with its 95 % interval (``test_roc_auc``, ``test_roc_auc_low``, ``test_roc_auc_high``, and
    ``test_roc_auc_undefined``: the resamples of ``test_n_boot`` without a value) and
    what it was computed on (``test_n``, ``test_positives``, ``test_patients`` ...)."""
    decision = metrics.get("threshold") or {}
    row = {"run": spec.name, "fraction": spec.fraction, "init": spec.init, "init_source": source, "seed": spec.seed,
           "fold": spec.fold, **labelled_budget(rows), "best_epoch": metrics.get("best_epoch"),
           "selected_by": metrics.get("selected_by"), "threshold": decision.get("threshold"),
           "threshold_rule": decision.get("rule"), SEEN_IN_PRETRAINING: metrics.get(SEEN_IN_PRETRAINING),
           "seconds": round(seconds, 1)}  # fmt: skip
    for split in ("val", "test"):
        for name, value in (metrics.get(split) or {}).items():
            if isinstance(value, Mapping) and "value" in value:
                column = f"{split}_{name}"
                row.update({column: value["value"], f"{column}_low": value.get("low"), f"{column}_high": value.get("high"),
                            f"{column}_undefined": value.get("undefined", value.get("skipped")), f"{split}_n_boot": value.get("n_boot")})
            elif isinstance(value, (int, float)) and name not in ("alpha", "threshold"):  # the threshold has its own column
                row[f"{split}_{name}"] = value
    return row


def execute_run(spec: RunSpec, source: str, rows: pd.DataFrame, run_dir: Path, run_fn: RunFunction) -> dict:
    """One run, or its saved result. The run holds its folder while it trains: a folder that
    another live process holds raises ``run_folder.FolderInUseError``. A folder without the
    result is a run that stopped or failed part way; what it holds cannot be trusted, so it
    is emptied and the run redone."""
    marker = run_dir / RESULT_FILE
    if marker.is_file():
        return json.loads(marker.read_text())
    with run_folder.hold(run_dir):
        if marker.is_file():  # finished by another process since the first look
            return json.loads(marker.read_text())
        if not run_folder.holds_only_its_lock(run_dir):
            print(f"  {spec.name}: unfinished run folder ({run_state(run_dir)}); emptying it and running again", flush=True)
            run_folder.clear_folder(run_dir)
        started = time.perf_counter()
        metrics = run_fn(spec, rows, run_dir)
        row = result_row(spec, source, rows, metrics, time.perf_counter() - started)
        write_json(marker, row)  # last: the run is finished
    return row


@dataclass
class SweepOutcome:
    folder: Path
    shard: tuple[int, int]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished before this pass
    failed: list[str] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)  # being trained by another live process


def shard_lock(shard: tuple[int, int]) -> str:
    """The lock file of one shard: shards share the sweep folder, a shard is run once at a time."""
    return f"{run_folder.LOCK_FILE}-shard-{shard[0]}-of-{shard[1]}"


def run_sweep(config: SweepConfig, shard: tuple[int, int] = (0, 1), run_fn: RunFunction | None = None, report: bool = True) -> SweepOutcome:
    """Run this shard's share of the sweep into ``config.output_dir`` (skipping finished runs),
    then rebuild the report from every run finished so far, this shard's or others'.

    ``run_fn`` trains one run (default: the config's method, the finetuning engine or the
    probe). A run that raises is recorded in its folder's error.txt and the sweep goes on; the
    next pass redoes it. The shard is refused at once while another live process runs it; a
    run that another process is training (shards of another layout) is left to it.
    """
    plan = plan_sweep(config)
    config, folder = plan.config, plan.folder
    run_fn = run_fn or make_runner(config)
    with run_folder.hold(folder, name=shard_lock(shard)):
        return _run_shard(plan, shard, run_fn, report)


def _run_shard(plan: SweepPlan, shard: tuple[int, int], run_fn: RunFunction, report: bool) -> SweepOutcome:
    config, folder = plan.config, plan.folder
    check_config(folder, config, plan.validation)
    write_json(folder / PLAN_FILE, plan.to_dict())
    if plan.validation_note:
        print(f"note: validation stays at 100 % of its labels at every fraction: {plan.validation_note}", flush=True)
    for name, seen in plan.seen.items():
        if seen:
            print(seen_warning(seen, plan.scored_images, config.inits[name], f"images scored on ({plan.score_split})"), flush=True)
    subsets = {}
    shrink = shrinking_splits(plan.validation)
    for seed in config.seeds:
        for fold, base in plan.bases.items():
            key = subset_key(seed, fold)
            subsets[key] = prepare_subsets(folder / SUBSETS_DIR / key, base, config.fractions, seed, config.stratify_by, shrink)

    outcome = SweepOutcome(folder, shard)
    mine = shard_runs(plan.runs, *shard)
    print(f"sweep {folder}: {len(plan.runs)} runs, shard {shard[0]}/{shard[1]} takes {len(mine)}", flush=True)
    for position, spec in enumerate(mine, start=1):
        run_dir = folder / RUNS_DIR / spec.name
        if run_state(run_dir) == "done":
            outcome.skipped.append(spec.name)
            continue
        rows = subsets[spec.subsets][spec.fraction]
        budget = labelled_budget(rows)
        print(f"[{position}/{len(mine)}] {spec.name}: {budget['train_images']} training and {budget['val_images']} validation images",
              flush=True)  # fmt: skip
        try:
            row = execute_run(spec, config.inits[spec.init], rows, run_dir, run_fn)
        except run_folder.FolderInUseError as error:
            print(f"  {spec.name}: left to the process training it: {error}", flush=True)
            outcome.in_use.append(spec.name)
            continue
        except Exception as error:  # noqa: BLE001 -- one failed run must not stop the others
            write_text(run_dir / ERROR_FILE, traceback.format_exc())
            print(f"  {spec.name} failed: {type(error).__name__}: {error} (see {run_dir / ERROR_FILE})", flush=True)
            outcome.failed.append(spec.name)
            continue
        score = row.get(f"{plan.score_split}_{config.metric_names[0]}")
        score = f"{score:.3f}" if isinstance(score, (int, float)) else "undefined"
        print(f"  {spec.name}: {plan.score_split} {config.metric_names[0]} {score} ({row['seconds']} s)", flush=True)
        outcome.ran.append(spec.name)
    if report:
        build_report(folder)
    return outcome


def make_runner(config: SweepConfig) -> RunFunction:
    """The run function of the config's ``method``."""
    return probe_runner(config) if config.method == "probe" else finetune_runner(config)


def finetune_runner(config: SweepConfig) -> RunFunction:
    """The real run: one ``finetune`` call with the run's encoder, rows, seed and folder."""
    accelerator = make_accelerator(config.finetune.train.mixed_precision)
    if accelerator.num_processes > 1:
        raise ValueError("a sweep runs one process per shard: start one `vismae sweep --shard i/n` per device, not `accelerate launch`")

    def run(spec: RunSpec, rows: pd.DataFrame, run_dir: Path) -> Mapping:
        try:
            return finetune(rows, config.inits[spec.init], config.task, config.recipe(spec.seed), run_dir, accelerator).metrics
        finally:
            accelerator.free_memory()  # the accelerator would otherwise keep every finished run's model alive

    return run
