"""The ROI-aware experiment's routing, merging, floor and small-group logic, with a stand-in
engine (logistic regression on pixel statistics) in place of finetuning; the real engine runs
in test_roi_aware_engine.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from roi_synthetic import ROI_CACHE, PixelStatsEngine, roi_images

from vismae.config import ConfigError
from vismae.data.manifest import VIEW_NAMES, read_manifest
from vismae.experiments.roi_aware.experiment import experiment_frame, route_and_score, train_models, with_truth
from vismae.experiments.roi_aware.config import load_roi_aware_config
from vismae.experiments.roi_aware.report import result_rows, scored_metrics
from vismae.experiments.roi_aware.rules import BLIND_COLUMNS, SizeRule, annotation_only, blind, group_name, plan_groups
from vismae.metrics import classification_metrics

GROUPS = {group_name(view, has_roi) for view in VIEW_NAMES for has_roi in (True, False)}


def experiment_config(manifest, output_dir, *overrides):
    return load_roi_aware_config(
        None,
        [
            f"manifest={manifest}",
            f"output_dir={output_dir}",
            "init=random:tiny",
            "finetune.data.val_fraction=0.25",
            "small_groups.min_images=4",
            "small_groups.min_per_class=1",
            "small_groups.min_val_per_class=1",
            "finetune.eval.n_boot=100",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def manifest(synthetic_cache):
    return synthetic_cache(roi_images(patients=48), **ROI_CACHE)


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory):
    """One seed's models, trained by the stand-in engine."""
    out = tmp_path_factory.mktemp("run")
    config = experiment_config(manifest, out)
    frame = experiment_frame(read_manifest(manifest), config.finetune.data)
    known, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]
    engine = PixelStatsEngine()
    models, plans, router = train_models(engine, known, config, config.finetune, out)
    return SimpleNamespace(engine=engine, config=config, known=known, test=test, models=models, plans=plans, router=router)


def predictions(trained, test=None):
    return route_and_score(trained.engine, trained.models, trained.plans, trained.router, trained.test if test is None else test)


def test_the_plan_exercises_every_way_a_group_is_served(trained):
    rules = {plan.group: plan.rule for plan in trained.plans}
    assert set(rules) == GROUPS
    assert set(rules.values()) == {"own", "pooled", "constant"}
    for plan in trained.plans:
        assert (plan.reason == "") == (plan.rule == "own")


def test_no_test_row_reaches_training(trained):
    assert len(trained.engine.trained) == 4 + len({p.model for p in trained.plans if p.rule != "constant"}) + 1
    for frame in trained.engine.trained:
        assert set(frame["split"]) <= {"train", "val"}
    # The router learns ROI presence: its copy of the rows carries has_roi in the label.
    router_rows = trained.engine.trained[-1]
    assert (router_rows["label"].eq("malignant") == router_rows["has_roi"]).all()


def test_every_test_image_lands_in_exactly_one_group(trained):
    tables = predictions(trained)
    model_of = {plan.group: plan.model for plan in trained.plans}
    test_ids = list(trained.test["image_id"])
    for name, table in tables.items():
        assert list(table["image_id"]) == test_ids, name
    for name in ("annotated", "deployable"):
        table = tables[name]
        assert set(table["route"]) <= GROUPS
        assert (table["model"] == table["route"].map(model_of)).all()
    assert (tables["comparative"]["model"] == trained.test["view_name"].to_numpy()).all()
    # The annotated routes follow the annotations exactly.
    expected = [group_name(view, roi) for view, roi in zip(trained.test["view_name"], trained.test["has_roi"])]
    assert list(tables["annotated"]["route"]) == expected


def test_annotated_routing_never_reads_test_labels(trained):
    before = predictions(trained)
    unlabelled = trained.test.drop(columns=["label", "birads", "target"])
    after = predictions(trained, unlabelled)
    for name in ("comparative", "annotated", "annotation_only", "deployable", "router"):
        pd.testing.assert_frame_equal(before[name], after[name])


def test_deployable_routing_never_reads_test_annotations(trained):
    before = predictions(trained)
    seen = len(trained.engine.predicted)
    rng = np.random.default_rng(1)
    scrambled = trained.test.assign(
        has_roi=rng.permutation(trained.test["has_roi"].to_numpy()) ^ True,
        roi=[[] for _ in range(len(trained.test))],
        mask_path="",
    )
    after = predictions(trained, scrambled)
    pd.testing.assert_frame_equal(before["deployable"], after["deployable"])
    pd.testing.assert_frame_equal(before["router"], after["router"])
    pd.testing.assert_frame_equal(before["comparative"], after["comparative"])
    assert not before["annotated"]["route"].equals(after["annotated"]["route"])  # the scrambling bites
    # Structurally: whatever a model or the router scored, it was handed blind rows.
    for rows in trained.engine.predicted[seen:]:
        assert list(rows.columns) == list(BLIND_COLUMNS)
        assert not {"has_roi", "roi", "mask_path", "label", "birads", "target"} & set(rows.columns)
        assert set(rows["split"]) == {"test"}


def test_merged_metrics_are_those_of_the_concatenated_group_predictions(trained):
    model_of = {plan.group: plan.model for plan in trained.plans}
    test = trained.test
    groups = pd.Series([group_name(v, r) for v, r in zip(test["view_name"], test["has_roi"])], index=test.index)
    parts = [trained.models[model_of[group]].score(trained.engine, blind(test[groups == group])) for group in dict.fromkeys(groups)]
    concatenated = pd.concat(parts, ignore_index=True).merge(test[["image_id", "target", "view_name"]], on="image_id")
    assert len(concatenated) == len(test)

    table = with_truth(predictions(trained), test).assign(seed=0)
    rows = {(row["procedure"], row["scope"]): row for row in result_rows(table, n_boot=50)}
    for scope in ("merged", "RCC", "LMLO"):
        part = concatenated if scope == "merged" else concatenated[concatenated["view_name"] == scope]
        decided = classification_metrics(part["target"], part["decision"], 0.5)
        ranked = classification_metrics(part["target"], part["score"], 0.5)
        reported = rows[("annotated", scope)]
        assert reported["n"] == len(part) and reported["positives"] == int(part["target"].sum())
        for name in ("sensitivity", "specificity", "f1", "accuracy"):
            assert reported["metrics"][name]["value"] == pytest.approx(decided[name], nan_ok=True), (scope, name)
        for name in ("roc_auc", "pr_auc"):
            assert reported["metrics"][name]["value"] == pytest.approx(ranked[name], nan_ok=True), (scope, name)


def test_annotation_only_floor_is_computed_on_a_hand_example():
    # 4 malignant images, 3 with an ROI; 6 benign, 1 with an ROI.
    truth = pd.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(10)],
            "patient_id": [f"p{i // 2}" for i in range(10)],
            "has_roi": [True, True, True, False, True, False, False, False, False, False],
            "target": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        }
    )
    table = annotation_only(truth[["image_id", "has_roi"]]).merge(truth, on="image_id")
    assert list(table["score"]) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    metrics = scored_metrics(table, n_boot=50)["metrics"]
    assert metrics["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert metrics["specificity"]["value"] == pytest.approx(5 / 6)
    assert metrics["accuracy"]["value"] == pytest.approx(8 / 10)
    assert metrics["f1"]["value"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics["roc_auc"]["value"] == pytest.approx((3 / 4 + 5 / 6) / 2)  # one step: mean of TPR and TNR
    assert metrics["sensitivity"]["low"] <= 0.75 <= metrics["sensitivity"]["high"]


def hand_rows():
    """Train and val rows. Each with-ROI group: 6 malignant + 6 benign training images, 1 + 2
    validation ones. Each without-ROI group: 1 malignant + 9 benign training images, 2 benign
    validation ones (RCC's also 1 malignant)."""
    rows = []

    def add(view, has_roi, split, target, count):
        rows.extend([{"view_name": view, "has_roi": has_roi, "split": split, "target": target}] * count)

    for view in VIEW_NAMES:
        add(view, True, "train", 1, 6), add(view, True, "train", 0, 6), add(view, True, "val", 1, 1), add(view, True, "val", 0, 2)
        add(view, False, "train", 1, 1), add(view, False, "train", 0, 9), add(view, False, "val", 0, 2)
    add("RCC", False, "val", 1, 1)
    return pd.DataFrame(rows)


def test_small_group_rule_pooled():
    plans = {p.group: p for p in plan_groups(hand_rows(), "pooled", SizeRule(min_images=5, min_per_class=2, min_val_per_class=1))}
    assert all(plans[group_name(view, True)].rule == "own" for view in VIEW_NAMES)
    for view in VIEW_NAMES:
        plan = plans[group_name(view, False)]
        # Each view holds 1 malignant training image; the stratum pools 4, with 1 in validation.
        assert (plan.rule, plan.model) == ("pooled", "pooled_without_roi")
        assert "min_per_class" in plan.reason
        assert (plan.train_images, plan.train_positives) == (10, 1)


def test_small_group_rule_constant_and_the_pooled_fallback():
    needs = SizeRule(min_images=5, min_per_class=2, min_val_per_class=1)
    plans = {p.group: p for p in plan_groups(hand_rows(), "constant", needs)}
    plan = plans["LCC_without_roi"]
    assert (plan.rule, plan.model) == ("constant", "constant_LCC_without_roi")
    assert plan.prevalence == pytest.approx(1 / 10)  # the group's training prevalence
    # A stratum too small to pool falls back to constant, and says why.
    strict = SizeRule(min_images=5, min_per_class=5, min_val_per_class=1)
    plan = {p.group: p for p in plan_groups(hand_rows(), "pooled", strict)}["RMLO_without_roi"]
    assert plan.rule == "constant" and "pooled without_roi stratum too" in plan.reason


def test_constant_and_pooled_groups_score_as_declared(trained):
    table = predictions(trained)["annotated"]
    plans = {plan.group: plan for plan in trained.plans}
    for group, rows in table.groupby("route"):
        plan = plans[group]
        if plan.rule == "constant":
            assert (rows["score"] == plan.prevalence).all()
            assert (rows["decision"] == int(plan.prevalence >= 0.5)).all()
        elif plan.rule == "pooled":
            assert (rows["model"] == f"pooled_{group.split('_', 1)[1]}").all()


def test_rule_constant_trains_no_pooled_model(manifest, tmp_path):
    config = experiment_config(manifest, tmp_path, "small_groups.rule=constant")
    frame = experiment_frame(read_manifest(manifest), config.finetune.data)
    engine = PixelStatsEngine()
    models, plans, _ = train_models(engine, frame[frame["split"] != "test"], config, config.finetune, tmp_path)
    assert not any(key.startswith("pooled") for key in models)
    own = [plan for plan in plans if plan.rule == "own"]
    assert len(engine.trained) == 4 + len(own) + 1
    assert {plan.rule for plan in plans} == {"own", "constant"}


def test_config_refuses_what_the_experiment_sets(manifest, tmp_path):
    with pytest.raises(ConfigError, match="finetune.data.views"):
        experiment_config(manifest, tmp_path, "finetune.data.views=[CC]")
    with pytest.raises(ConfigError, match="small_groups.rule"):
        experiment_config(manifest, tmp_path, "small_groups.rule=median")
    with pytest.raises(ConfigError, match="manifest"):
        load_roi_aware_config(None, [f"output_dir={tmp_path}"])


def test_a_manifest_without_test_split_is_refused(manifest, tmp_path):
    frame = read_manifest(manifest).assign(split="train")
    with pytest.raises(ValueError, match="no test split"):
        experiment_frame(frame, experiment_config(manifest, tmp_path).finetune.data)


def test_a_run_folder_of_another_config_or_held_by_a_live_process_is_refused(manifest, tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from vismae.experiments.roi_aware.experiment import check_run_folder, run_roi_aware
    from vismae.run_folder import FolderInUseError

    config = experiment_config(manifest, tmp_path).with_absolute_paths()
    check_run_folder(config)
    check_run_folder(experiment_config(manifest, tmp_path, "seeds=[5]", "finetune.data.num_workers=0").with_absolute_paths())
    with pytest.raises(ConfigError, match=re.escape("finetune.train.lr: 0.0001 -> 0.5")):
        check_run_folder(experiment_config(manifest, tmp_path, "finetune.train.lr=0.5").with_absolute_paths())

    code = "import sys, time; from vismae import run_folder; run_folder.FolderLock(sys.argv[1]).acquire(); print('holding', flush=True); time.sleep(600)"
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(FolderInUseError, match=f"process {holder.pid} on "):
            run_roi_aware(config, engine=PixelStatsEngine())
    finally:
        holder.kill()
        holder.wait()
