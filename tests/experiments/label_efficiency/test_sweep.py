"""The label-efficiency sweep: subsets, run folders, resume, shards, config checks, and one
sweep through the real finetuning engine.

Most tests plan and run sweeps with ``Recorder`` in place of training: a real but trivial run
function that keeps what it was given and scores val and test rows with vismae.metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vismae.config import ConfigError
from vismae.data.manifest import read_manifest
from vismae.data.splits import fraction_name, label_fractions
from vismae.experiments.label_efficiency.sweep import (
    RunSpec,
    parse_shard,
    plan_runs,
    plan_sweep,
    run_sweep,
    shard_runs,
)
from vismae.experiments.label_efficiency.config import load_sweep_config
from vismae.metrics import metrics_with_ci
from vismae.run_folder import FolderInUseError
from vismae.synthetic.cache import CacheImage

SIZE = 64


def sweep_images(patients: int = 40, with_val: bool = False) -> list[CacheImage]:
    """A prepared cache's images: two views of one breast per patient; every third patient
    malignant, every seventh normal (left out of benign/malignant classification); every fifth a
    test patient (and, ``with_val``, every fifth after it a val patient)."""
    images = []
    for patient in range(patients):
        label = "normal" if patient % 7 == 6 else "malignant" if patient % 3 == 0 else "benign"
        split = "test" if patient % 5 == 4 else "val" if with_val and patient % 5 == 3 else "train"
        images += [CacheImage(f"p{patient:02d}", view=view, label=label, split=split) for view in ("CC", "MLO")]
    return images


@pytest.fixture(scope="module")
def manifest(synthetic_cache) -> Path:
    return synthetic_cache(sweep_images())


def sweep_config(manifest: Path, out: Path, **overrides):
    values = {"output_dir": out, "manifest": manifest, "inits": "{ours: random:tiny, random: random:tiny}", "fractions": "[0.25, 0.5, 1.0]",
              "seeds": "[0, 1]", "folds": 0, **overrides}  # fmt: skip
    return load_sweep_config(None, [f"{key}={value}" for key, value in values.items()])


class Recorder:
    """Stands in for finetuning: records each call and its rows, leaves a file in the run folder,
    and scores val and test rows by target plus noise that shrinks as training images grow."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.frames: dict[str, pd.DataFrame] = {}
        self.fail = fail

    def __call__(self, spec: RunSpec, rows: pd.DataFrame, run_dir: Path) -> dict:
        self.calls.append(spec.name)
        self.frames[spec.name] = rows.copy()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "trained.txt").write_text(spec.name)
        if spec.name in self.fail:
            raise RuntimeError(f"{spec.name} diverged")
        train = rows[rows["split"] == "train"]
        rng = np.random.default_rng(len(train))
        metrics = {"best_epoch": 1}
        for split in ("val", "test"):
            part = rows[rows["split"] == split]
            score = part["target"] + rng.normal(0, 4 / math.sqrt(len(train)), len(part))
            metrics[split] = metrics_with_ci(part["target"], score, part["patient_id"], n_boot=20)
        return metrics


def train_patients(rows: pd.DataFrame) -> set:
    return set(rows.loc[rows["split"] == "train", "patient_id"])


def val_patients(rows: pd.DataFrame) -> set:
    return set(rows.loc[rows["split"] == "val", "patient_id"])


def test_subsets_are_nested_stratified_grouped_and_shared_by_inits(manifest, tmp_path):
    recorder = Recorder()
    run_sweep(sweep_config(manifest, tmp_path), run_fn=recorder, report=False)
    assert len(recorder.calls) == 3 * 2 * 2  # fractions x inits x seeds
    frames = recorder.frames
    for seed in (0, 1):
        subsets = [frames[RunSpec(f, "ours", seed).name] for f in (0.25, 0.5, 1.0)]
        full = subsets[-1]
        assert set(full["label"]) == {"benign", "malignant"}  # normal rows are not classification rows
        # Nested: each fraction's training and validation patients hold the smaller fraction's.
        assert train_patients(subsets[0]) < train_patients(subsets[1]) < train_patients(subsets[2])
        assert val_patients(subsets[0]) < val_patients(subsets[1]) < val_patients(subsets[2])
        for fraction, rows in zip((0.25, 0.5, 1.0), subsets):
            # Identical for every init.
            pd.testing.assert_frame_equal(rows, frames[RunSpec(fraction, "random", seed).name])
            # Stratified: each class keeps round(f x its patients) of the training patients, and
            # of the validation patients.
            for split in ("train", "val"):
                for label in ("benign", "malignant"):
                    patients = full.loc[(full["split"] == split) & (full["label"] == label), "patient_id"].nunique()
                    kept = rows.loc[(rows["split"] == split) & (rows["label"] == label), "patient_id"].nunique()
                    assert kept == max(1, math.floor(fraction * patients + 0.5)), (split, label)
            # Patient-grouped: both views of a kept patient, and no training patient in val or test.
            assert (rows[rows["split"] != "test"].groupby("patient_id").size() == 2).all()
            assert not train_patients(rows) & set(rows.loc[rows["split"] != "train", "patient_id"])
            # Test rows are the same at every fraction.
            held = rows[rows["split"] == "test"].reset_index(drop=True)
            pd.testing.assert_frame_equal(held, full[full["split"] == "test"].reset_index(drop=True))
            # Saved in the sweep folder, as trained on.
            saved = read_manifest(tmp_path / "subsets" / f"s{seed}" / fraction_name(fraction) / "manifest.csv")
            assert sorted(saved["image_id"]) == sorted(rows["image_id"])
    # The training draw is the one a sweep made before validation shrank (train only).
    base = read_manifest(tmp_path / "subsets" / "s0" / "manifest.csv")
    assert train_patients(label_fractions(base, (0.25,), seed=0)[0.25]) == train_patients(frames["f0.25_init-ours_s0"])
    # Labels used: training and validation images, as results.json records them.
    result = json.loads((tmp_path / "runs" / "f0.25_init-ours_s0" / "result.json").read_text())
    small = frames["f0.25_init-ours_s0"]
    assert result["train_images"] == (small["split"] == "train").sum() and result["val_images"] == (small["split"] == "val").sum()
    assert result["labels_used"] == result["train_images"] + result["val_images"]
    assert result["val_positives"] == int(small.loc[small["split"] == "val", "target"].sum())
    # Seeds draw different subsets (all of them hold every training patient at 100 %).
    assert train_patients(frames["f0.25_init-ours_s0"]) != train_patients(frames["f0.25_init-ours_s1"])
    assert train_patients(frames["f1_init-ours_s0"]) == train_patients(frames["f1_init-ours_s1"])


def test_validation_full_keeps_every_validation_patient_and_the_report_says_so(manifest, tmp_path):
    recorder = Recorder()
    run_sweep(sweep_config(manifest, tmp_path, seeds="[0]", validation="full"), run_fn=recorder)
    full = recorder.frames["f1_init-ours_s0"]
    for fraction in (0.25, 0.5):
        rows = recorder.frames[RunSpec(fraction, "ours", 0).name]
        held = rows[rows["split"] != "train"].reset_index(drop=True)
        pd.testing.assert_frame_equal(held, full[full["split"] != "train"].reset_index(drop=True))
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "NOTE: validation at 100 % of its labels at every fraction (validation: full)" in summary
    assert "validation and test rows do not change with the fraction" in summary
    # Labels used still count the (whole) validation set.
    curves = pd.read_csv(tmp_path / "report" / "curves.csv")
    point = curves[(curves["init"] == "ours") & (curves["fraction"] == 0.25)].iloc[0]
    assert point["labels_used"] == point["train_images"] + (full["split"] == "val").sum()

    # The default sweep says the opposite, and counts both in every column's budget.
    shrunk = tmp_path / "shrunk"
    run_sweep(sweep_config(manifest, shrunk, seeds="[0]"), run_fn=Recorder())
    text = (shrunk / "report" / "summary.md").read_text()
    assert "100 % of its labels" not in text and "Fractions are of the training and of the validation patients" in text
    assert "labelled images: " in text and " train + " in text

    # A sweep scored on val keeps validation whole whatever the config says, and says why.
    scored_on_val = tmp_path / "on-val"
    plan = run_sweep(sweep_config(manifest, scored_on_val, seeds="[0]", score_split="val"), run_fn=Recorder())
    assert plan.ran
    plan_file = json.loads((scored_on_val / "plan.json").read_text())
    assert plan_file["validation"] == "full" and "scores are on the validation split" in plan_file["validation_note"]
    assert "NOTE: validation at 100 % of its labels" in (scored_on_val / "report" / "summary.md").read_text()


def test_a_sweep_from_before_validation_shrank_continues_only_with_validation_full(manifest, tmp_path):
    run_sweep(sweep_config(manifest, tmp_path, seeds="[0]", validation="full"), run_fn=Recorder(), report=False)
    saved = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    del saved["validation"]  # as a sweep made before the key existed
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="Continue it with validation=full"):
        run_sweep(sweep_config(manifest, tmp_path, seeds="[0]"), run_fn=Recorder(), report=False)
    assert run_sweep(sweep_config(manifest, tmp_path, seeds="[0]", validation="full"), run_fn=Recorder(), report=False).skipped


def test_one_class_validation_subsets_are_named_in_the_report(tmp_path, synthetic_cache):
    # Unstratified, the smallest validation subset (one patient) holds one class.
    manifest = synthetic_cache(sweep_images(with_val=True))
    config = sweep_config(manifest, tmp_path, seeds="[0]", stratify="none", fractions="[0.1, 1.0]", inits="{random: random:tiny}")
    run_sweep(config, run_fn=Recorder())
    results = pd.read_csv(tmp_path / "results.csv").set_index("run")
    small = results.loc["f0.1_init-random_s0"]
    assert small["val_patients"] == 1 and small["val_positives"] in (0, small["val_images"])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "ONE-CLASS VALIDATION: in 1 of 2 runs (at 10 %)" in summary
    assert "ONE-CLASS validation in 1" in summary  # in the cell of that point


def test_an_init_pretrained_on_the_scored_images_is_marked(manifest, tmp_path):
    from vismae.models.formats.vismae_export import write_pretraining_images

    rows = pd.read_csv(manifest)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    write_pretraining_images(encoder, rows["image_id"])  # every image, test ones included
    (encoder / "encoder.safetensors").write_bytes(b"")  # the recorder never loads it
    out = tmp_path / "sweep"
    run_sweep(sweep_config(manifest, out, seeds="[0]", inits=f"{{ours: {encoder / 'encoder.safetensors'}, random: random:tiny}}"),
              run_fn=Recorder())  # fmt: skip
    plan = json.loads((out / "plan.json").read_text())
    tested = rows[(rows["split"] == "test") & (rows["label"] != "normal")]
    assert plan["test_images_seen_in_pretraining"] == {"ours": len(tested), "random": None}
    summary = (out / "report" / "summary.md").read_text()
    mark = f"[{len(tested)} SEEN IN PRETRAINING]"
    assert f"WARNING: the encoder {encoder / 'encoder.safetensors'} was pretrained on {len(tested)} of the {len(tested)}" in summary
    assert f"| ours {mark} |" in summary and "| random |" in summary
    assert any(line.startswith("- ours:") and line.endswith(mark) for line in summary.splitlines())


def test_kfold_subsets_come_from_each_folds_training_patients(manifest, tmp_path):
    recorder = Recorder()
    run_sweep(sweep_config(manifest, tmp_path, folds=3, seeds="[0]", inits="{random: random:tiny}"), run_fn=recorder, report=False)
    assert sorted(recorder.calls) == sorted(f"f{f:g}_init-random_s0_k{k}" for f in (0.25, 0.5, 1.0) for k in range(3))
    validation = [set(recorder.frames[f"f1_init-random_s0_k{k}"].query("split == 'val'")["patient_id"]) for k in range(3)]
    everyone = train_patients(recorder.frames["f1_init-random_s0_k0"]) | validation[0]
    assert set().union(*validation) == everyone and sum(map(len, validation)) == len(everyone)  # each patient validates once
    for k in range(3):
        small, full = (recorder.frames[f"f{f:g}_init-random_s0_k{k}"] for f in (0.25, 1.0))
        assert train_patients(small) < train_patients(full) == everyone - validation[k]


def test_rerun_skips_finished_runs_and_redoes_broken_and_failed_ones(manifest, tmp_path):
    config = sweep_config(manifest, tmp_path, seeds="[0]")
    first = Recorder(fail=("f0.5_init-random_s0",))
    outcome = run_sweep(config, run_fn=first, report=False)
    assert outcome.failed == ["f0.5_init-random_s0"] and len(outcome.ran) == 5
    assert "diverged" in (tmp_path / "runs" / "f0.5_init-random_s0" / "error.txt").read_text()

    # A run stopped part way: its folder lacks result.json, and holds a stale file.
    broken = tmp_path / "runs" / "f0.25_init-ours_s0"
    (broken / "result.json").unlink()
    (broken / "half-written.bin").write_bytes(b"\0")

    second = Recorder()
    outcome = run_sweep(config, run_fn=second, report=True)
    assert sorted(second.calls) == ["f0.25_init-ours_s0", "f0.5_init-random_s0"]
    assert len(outcome.skipped) == 4 and not outcome.failed
    assert not (broken / "half-written.bin").exists() and (broken / "result.json").is_file()
    assert not (tmp_path / "runs" / "f0.5_init-random_s0" / "error.txt").exists()
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 6 and results["run"].is_unique
    row = results.set_index("run").loc["f0.25_init-ours_s0"]
    assert row["train_images"] == len(second.frames["f0.25_init-ours_s0"].query("split == 'train'"))
    assert {"test_roc_auc", "test_roc_auc_low", "test_roc_auc_high", "val_pr_auc", "test_n"} <= set(results.columns)

    third = Recorder()
    run_sweep(config, run_fn=third, report=False)
    assert third.calls == []


def test_shards_are_disjoint_and_cover_every_run(manifest, tmp_path):
    runs = plan_runs(["ours", "random"], [0.1, 1.0, 0.5], [0, 1], [None])
    shares = [shard_runs(runs, index, 3) for index in range(3)]
    assert sorted(run.name for share in shares for run in share) == sorted(run.name for run in runs)
    assert len({run.name for run in runs}) == len(runs) == 12
    assert shares[1] == runs[1::3]  # run index mod n
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)

    config = sweep_config(manifest, tmp_path)
    recorders = [Recorder(), Recorder()]
    for index, recorder in enumerate(recorders):
        run_sweep(config, shard=(index, 2), run_fn=recorder)
    first, second = (set(recorder.calls) for recorder in recorders)
    assert not first & second
    assert first | second == {run.name for run in plan_sweep(config).runs}
    assert len(pd.read_csv(tmp_path / "results.csv")) == 12  # merged by reading the folder


def test_a_changed_recipe_is_refused_but_a_sweep_can_grow(manifest, tmp_path):
    run_sweep(sweep_config(manifest, tmp_path, seeds="[0]"), run_fn=Recorder(), report=False)
    with pytest.raises(ConfigError, match="finetune.train.lr"):
        run_sweep(sweep_config(manifest, tmp_path, seeds="[0]", **{"finetune.train.lr": 0.5}), run_fn=Recorder(), report=False)
    with pytest.raises(ConfigError, match="inits.ours"):
        run_sweep(sweep_config(manifest, tmp_path, seeds="[0]", inits="{ours: random:vismae, random: random:tiny}"), run_fn=Recorder())
    # A key that a newer version added, saved by none, at its default: the sweep goes on.
    saved = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    del saved["finetune"]["eval"]["n_boot"], saved["stratify"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(saved))
    grown = Recorder()
    run_sweep(sweep_config(manifest, tmp_path, seeds="[0, 1]", fractions="[0.1, 0.25, 0.5, 1.0]"), run_fn=grown, report=False)
    added = [(0.1, init, 0) for init in ("ours", "random")] + [(f, init, 1) for f in (0.1, 0.25, 0.5, 1.0) for init in ("ours", "random")]
    assert sorted(grown.calls) == sorted(RunSpec(*run).name for run in added)  # only the new runs



def hold_in_another_process(folder: Path, name: str = ".lock") -> subprocess.Popen:
    """A live process holding ``folder`` (through its lock file ``name``) until killed."""
    code = "import sys, time; from vismae import run_folder; run_folder.FolderLock(sys.argv[1], sys.argv[2]).acquire(); print('holding', flush=True); time.sleep(600)"
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder), name], stdout=subprocess.PIPE, text=True, env=environment)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_shard_running_elsewhere_is_refused_and_a_run_trained_elsewhere_is_left_to_it(manifest, tmp_path):
    config = sweep_config(manifest, tmp_path, seeds="[0]")
    busy = plan_sweep(config).runs[0].name
    holder = hold_in_another_process(tmp_path / "runs" / busy)
    try:
        recorder = Recorder()
        outcome = run_sweep(config, run_fn=recorder, report=False)
        assert outcome.in_use == [busy] and busy not in recorder.calls and not outcome.failed
        assert not (tmp_path / "runs" / busy / "error.txt").exists()  # not a failure: another process has it
    finally:
        holder.kill()
        holder.wait()
    assert run_sweep(config, run_fn=Recorder(), report=False).ran == [busy]  # its holder is gone

    holder = hold_in_another_process(tmp_path, ".lock-shard-1-of-2")
    try:
        with pytest.raises(FolderInUseError, match=f"process {holder.pid} on "):
            run_sweep(config, shard=(1, 2), run_fn=Recorder(), report=False)
        run_sweep(config, shard=(0, 2), run_fn=Recorder(), report=False)  # another shard goes on
    finally:
        holder.kill()
        holder.wait()

def test_config_errors_name_the_key(manifest, tmp_path):
    with pytest.raises(ConfigError, match="baseline"):
        sweep_config(manifest, tmp_path, baseline="imagenet")
    with pytest.raises(ConfigError, match="include 1.0"):
        sweep_config(manifest, tmp_path, fractions="[0.1, 0.5]")
    with pytest.raises(ConfigError, match="inits: name 'my_init'"):
        sweep_config(manifest, tmp_path, inits="{my_init: random:tiny, random: random:tiny}")
    with pytest.raises(ConfigError, match="finetune.train.seed"):
        sweep_config(manifest, tmp_path, **{"finetune.train.seed": 3})
    with pytest.raises(ConfigError, match="finetune: train.balance"):
        sweep_config(manifest, tmp_path, task="segment", metrics="[dice]")
    with pytest.raises(ConfigError, match="not classify metrics"):
        sweep_config(manifest, tmp_path, metrics="[dice]")


@pytest.mark.slow
def test_a_sweep_through_the_real_finetuning_engine(tmp_path, synthetic_cache):
    manifest = synthetic_cache(sweep_images(patients=24, with_val=True))
    recipe = {"finetune.data.size": SIZE, "finetune.data.num_workers": 0, "finetune.model.drop_path": 0.0, "finetune.train.epochs": 1,
              "finetune.train.warmup_epochs": 0, "finetune.train.batch_size": 8, "finetune.train.mixed_precision": "no",
              "finetune.augment.enabled": "false", "finetune.eval.n_boot": 20, "finetune.checkpoint.every_epochs": 0}  # fmt: skip
    config = sweep_config(manifest, tmp_path / "sweep", inits="{random: random:tiny}", fractions="[0.5, 1.0]", seeds="[0]", **recipe)
    outcome = run_sweep(config)
    assert sorted(outcome.ran) == ["f0.5_init-random_s0", "f1_init-random_s0"] and not outcome.failed
    results = pd.read_csv(tmp_path / "sweep" / "results.csv").set_index("run")
    for name in outcome.ran:
        run_dir = tmp_path / "sweep" / "runs" / name
        engine = json.loads((run_dir / "metrics.json").read_text())
        assert results.loc[name, "test_roc_auc"] == pytest.approx(engine["test"]["roc_auc"]["value"])
        assert (run_dir / "model.safetensors").is_file()
    # What the engine trained on is the sweep's subset.
    trained = pd.read_csv(tmp_path / "sweep" / "runs" / "f0.5_init-random_s0" / "manifest.csv")
    subset = read_manifest(tmp_path / "sweep" / "subsets" / "s0" / "fraction_0.5" / "manifest.csv")
    assert sorted(trained.query("split == 'train'")["image_id"]) == sorted(subset.query("split == 'train'")["image_id"])
    assert results.loc["f0.5_init-random_s0", "train_images"] < results.loc["f1_init-random_s0", "train_images"]
    assert (tmp_path / "sweep" / "report" / "label_efficiency.png").read_bytes().startswith(b"\x89PNG")
    assert run_sweep(config).ran == []  # finished runs are not trained again
