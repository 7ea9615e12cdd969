"""Finetuning end to end on synthetic lesions (tiny encoder, 64 px, CPU): classifiers and
segmenters learn, test rows never influence model selection or the threshold, finished runs
are returned as they are, interrupted ones resume, k-fold and the command line work."""

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from vismae.data.manifest import read_manifest
from vismae.engine import finetune as finetune_module
from vismae.engine import finetune_loop
from vismae.engine.finetune import cross_validate, finetune
from vismae.engine.finetune_config import load_finetune_config
from vismae.engine.predict import CLASSIFICATION_COLUMNS, SEGMENTATION_COLUMNS, predict_with_run
from vismae.engine.train_step import NonFiniteLossError
from vismae.models.formats.vismae_export import export_encoder, write_pretraining_images
from vismae.models.heads import SwinClassifier
from vismae.models.presets import encoder_config
from vismae.models.swin import SwinEncoder
from vismae.shipped_configs import shipped_config
from vismae.synthetic.cache import CacheImage

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
SPLIT_CYCLE = ("train", "train", "train", "val", "test")


def lesion_images(patients: int = 40, normal: int = 8) -> list[CacheImage]:
    """Two views per patient, malignant and benign patients in turn, then ``normal`` patients
    without a lesion (dropped by classification, an empty mask for segmentation); splits cycle
    over patients so every split holds every label. The cache draws malignant lesions large,
    spiculated and mottled, benign ones small, round, smooth and faint."""
    images = []
    for patient in range(patients + normal):
        label = "normal" if patient >= patients else ("malignant", "benign")[patient % 2]
        for view in ("CC", "MLO"):
            images.append(CacheImage(
                f"p{patient:03d}", view=view, laterality="LR"[patient % 2], label=label, has_roi=label != "normal",
                split=SPLIT_CYCLE[patient % len(SPLIT_CYCLE)], image_id=f"p{patient:03d}_{view}",
            ))  # fmt: skip
    return images


# 16-bit images, as `prepare` writes by default.
LESION_CACHE = {"size": SIZE, "bits": 16, "dataset": "lesions"}


# Fast, deterministic settings for the tiny encoder on the CPU.
TEST_SETTINGS = {
    "model.drop_path": 0.0,
    "train.batch_size": 8,
    "train.epochs": 3,
    "train.warmup_epochs": 1,
    "train.lr": 3e-4,
    "train.mixed_precision": "no",
    "data.num_workers": 0,
    "eval.n_boot": 100,
    "checkpoint.every_epochs": 0,
}


def config_for(task: str = "classify", **overrides):
    values = {"task": task, **TEST_SETTINGS}
    if task == "segment":
        # The conv up path learns these blobs in fewer epochs than the Swin one (both are
        # checked for shapes and skip connections in tests/models/test_heads.py).
        values.update({"train.balance": "none", "train.lr": 2e-3, "model.decoder": "conv"})
    values.update(overrides)
    return load_finetune_config(None, [f"{key}={value}" for key, value in values.items()])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two OpenMP threads
    waiting for each other make every small operation many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(synthetic_cache) -> Path:
    return synthetic_cache(lesion_images(), **LESION_CACHE)


@pytest.fixture(scope="module")
def frame(cache) -> pd.DataFrame:
    return read_manifest(cache)


@pytest.fixture(scope="module")
def classifier(frame, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "classify"
    return finetune(frame, "random:tiny", "classify", config_for(**{"train.epochs": 8}), run_dir)


# --- classification ------------------------------------------------------------------------


@pytest.mark.slow
def test_classifier_learns_the_lesions(classifier):
    metrics = classifier.metrics
    for split in ("val", "test"):
        auc = metrics[split]["roc_auc"]
        assert auc["value"] > 0.8, f"{split} ROC AUC {auc['value']:.3f}"
        assert auc["low"] <= auc["value"] <= auc["high"]  # a patient-level interval around it
        assert metrics[split]["n"] == 16 and metrics[split]["patients"] == 8
    history = pd.read_csv(classifier.run_dir / "history.csv")
    assert classifier.best_epoch == int(history.loc[history["val_auc"].idxmax(), "epoch"])


@pytest.mark.slow
def test_classifier_run_folder_holds_the_whole_story(classifier, frame):
    run_dir = classifier.run_dir
    for name in ("config.yaml", "manifest.csv", "data.json", "history.csv", "model.safetensors", "model.json",
                 "threshold.json", "predictions.csv", "metrics.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoints").exists()

    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns) == CLASSIFICATION_COLUMNS
    labelled = frame[frame["label"] != "normal"]
    for split in ("val", "test"):
        expected = sorted(labelled.loc[labelled["split"] == split, "image_id"])
        assert sorted(predictions.loc[predictions["split"] == split, "image_id"]) == expected
    assert set(predictions["split"]) == {"val", "test"}
    assert ((predictions["probability"] >= classifier.threshold) == (predictions["prediction"] == 1)).all()
    assert (predictions["target"] == (predictions["label"] == "malignant")).all()

    threshold = json.loads((run_dir / "threshold.json").read_text())
    assert threshold["chosen_on"] == "val" and threshold["n"] == 16 and threshold["threshold"] == classifier.threshold
    data = json.loads((run_dir / "data.json").read_text())
    assert data["left_out"] == {"label normal": 16}  # 8 normal patients x 2 views, counted
    assert data["splits"]["train"] == {"images": 48, "patients": 24, "positives": 24}


@pytest.mark.slow
def test_finished_run_is_returned_as_is(classifier, frame, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(finetune_module, "train_model", no_training)
    again = finetune(frame, "random:tiny", "classify", config_for(**{"train.epochs": 8, "data.num_workers": 3}), classifier.run_dir)
    assert again.metrics == classifier.metrics and again.threshold == classifier.threshold
    with pytest.raises(ValueError, match="train.lr"):
        finetune(frame, "random:tiny", "classify", config_for(**{"train.epochs": 8, "train.lr": 1e-2}), classifier.run_dir)


@pytest.mark.slow
def test_saved_model_predicts_new_rows_like_the_run(classifier, frame):
    test_rows = frame[(frame["split"] == "test") & (frame["label"] != "normal")].iloc[::-1]
    table = predict_with_run(classifier.run_dir, test_rows)
    assert table["image_id"].tolist() == test_rows["image_id"].tolist()  # in the order asked
    saved = pd.read_csv(classifier.run_dir / "predictions.csv").set_index("image_id")
    np.testing.assert_allclose(table["probability"], saved.loc[table["image_id"], "probability"], atol=1e-5)
    assert (table["prediction"].to_numpy() == saved.loc[table["image_id"], "prediction"].to_numpy()).all()


@pytest.mark.slow
def test_test_rows_change_neither_the_selected_epoch_nor_the_threshold(frame, cache, tmp_path, monkeypatch):
    seen_by_training = []
    real_train_model = finetune_module.train_model

    def spy(train, val, *args, **kwargs):
        seen_by_training.extend(train["image_id"].tolist() + val["image_id"].tolist())
        return real_train_model(train, val, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "train_model", spy)
    config = config_for(**{"train.epochs": 3})
    original = finetune(frame, "random:tiny", "classify", config, tmp_path / "original")
    test_ids = set(frame.loc[frame["split"] == "test", "image_id"])
    assert seen_by_training and not test_ids & set(seen_by_training)

    # The same rows, except that every test image is noise and every test label is flipped.
    tampered = frame.copy()
    noise = np.random.default_rng(1)
    for index in np.flatnonzero(tampered["split"] == "test"):
        path = tmp_path / "tampered" / Path(tampered.at[index, "path"]).name
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), (noise.random((SIZE, SIZE)) * 65535).astype(np.uint16))
        tampered.at[index, "path"] = str(path)
        tampered.at[index, "label"] = {"benign": "malignant", "malignant": "benign"}.get(tampered.at[index, "label"], "normal")
    changed = finetune(tampered, "random:tiny", "classify", config, tmp_path / "tampered_run")

    assert changed.threshold == original.threshold
    assert changed.best_epoch == original.best_epoch
    read = lambda result: pd.read_csv(result.run_dir / "predictions.csv").set_index("image_id")  # noqa: E731
    before, after = read(original), read(changed)
    val = before["split"] == "val"
    np.testing.assert_array_equal(before.loc[val, "probability"], after.loc[val[val].index, "probability"])
    assert changed.metrics["val"] == original.metrics["val"]
    assert changed.metrics["test"] != original.metrics["test"]


def test_validation_is_carved_by_patient_when_missing(frame, tmp_path):
    without_val = frame.assign(split=frame["split"].replace({"val": "train"}))
    result = finetune(without_val, "random:tiny", "classify", config_for(**{"train.epochs": 1}), tmp_path / "carved")
    used = read_manifest(result.run_dir / "manifest.csv")
    assert (used["split"] == "val").any()
    assert used.groupby("patient_id")["split"].nunique().max() == 1
    data = json.loads((result.run_dir / "data.json").read_text())
    assert data["validation"] == "carved from train by patient"
    assert (used.loc[used["split"] == "test", "image_id"].sort_values().tolist()
            == sorted(frame.loc[(frame["split"] == "test") & (frame["label"] != "normal"), "image_id"]))  # fmt: skip


# --- resuming ------------------------------------------------------------------------------


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(frame, tmp_path, monkeypatch):
    config = config_for(**{"train.epochs": 3, "checkpoint.every_epochs": 1})
    straight = finetune(frame, "random:tiny", "classify", config, tmp_path / "straight")

    real_epoch = finetune_loop.train_one_epoch
    calls = []

    def crash_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(finetune_loop, "train_one_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(frame, "random:tiny", "classify", config, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert (tmp_path / "resumed" / "checkpoints").is_dir()
    # Best weights written after the last checkpoint belong to epochs that will be trained
    # again; the resume must bring back the checkpoint's own copy.
    best = tmp_path / "resumed" / "model.safetensors"
    best.write_bytes(b"weights of an epoch trained after the checkpoint")
    (saved_copy,) = (tmp_path / "resumed" / "checkpoints").glob("step_*/model.safetensors")

    def check_restored_then_train(*args, **kwargs):
        assert best.read_bytes() == saved_copy.read_bytes()
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(finetune_loop, "train_one_epoch", check_restored_then_train)
    resumed = finetune(frame, "random:tiny", "classify", config, tmp_path / "resumed")
    history = lambda result: pd.read_csv(result.run_dir / "history.csv")  # noqa: E731
    pd.testing.assert_frame_equal(history(resumed), history(straight))
    assert resumed.threshold == straight.threshold and resumed.metrics["test"] == straight.metrics["test"]


def test_a_non_finite_loss_stops_finetuning_before_the_weights_change(frame, tmp_path, monkeypatch):
    real_forward = SwinClassifier.forward
    calls = {"training": 0}

    def forward_that_diverges(self, images):
        logits = real_forward(self, images)
        if self.training:
            calls["training"] += 1
            if calls["training"] == 2:  # the second step
                return logits * float("nan")
        return logits

    monkeypatch.setattr(SwinClassifier, "forward", forward_that_diverges)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 2 \(epoch 1\)"):
        finetune(frame, "random:tiny", "classify", config_for(**{"train.epochs": 1}), tmp_path / "diverged")
    assert calls["training"] == 2  # stopped at once
    assert not (tmp_path / "diverged" / "metrics.json").exists() and not (tmp_path / "diverged" / "model.safetensors").exists()


# --- segmentation --------------------------------------------------------------------------


@pytest.mark.slow
def test_segmenter_finds_the_lesions(frame, tmp_path):
    result = finetune(frame, "random:tiny", "segment", config_for("segment", **{"train.epochs": 8}), tmp_path / "segment")
    for split in ("val", "test"):
        assert result.metrics[split]["dice"]["value"] > 0.5, result.metrics[split]
    assert result.threshold is None and not (result.run_dir / "threshold.json").exists()

    predictions = pd.read_csv(result.predictions)
    assert list(predictions.columns) == SEGMENTATION_COLUMNS
    test = predictions[predictions["split"] == "test"]
    assert sorted(test["image_id"]) == sorted(frame.loc[frame["split"] == "test", "image_id"])  # normal ones too
    normal = test[test["label"] == "normal"]
    assert len(normal) and (normal["roi_area"] == 0).all()  # no ROI: an empty mask
    lesions = test[test["label"] != "normal"]
    assert (lesions["roi_area"] > 0).all()
    np.testing.assert_allclose(test["predicted_area_fraction"], test["predicted_area"] / SIZE**2)
    # The predicted area tells lesion images from normal ones: it can route by predicted ROI.
    assert lesions["predicted_area"].median() > normal["predicted_area"].median()


# --- k folds and the command line ----------------------------------------------------------


def test_cross_validation_validates_on_every_patient_once(frame, tmp_path):
    result = cross_validate(frame, "random:tiny", "classify", config_for(**{"train.epochs": 1}), tmp_path / "cv", k=2)
    assert len(result.folds) == 2
    val_patients = [set(read_manifest(fold.run_dir / "manifest.csv").query("split == 'val'")["patient_id"]) for fold in result.folds]
    non_test = set(frame.loc[(frame["split"] != "test") & (frame["label"] != "normal"), "patient_id"])
    assert not val_patients[0] & val_patients[1] and val_patients[0] | val_patients[1] == non_test
    summary = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())["summary"]
    aucs = [fold.metrics["val"]["roc_auc"]["value"] for fold in result.folds]
    assert summary["val"]["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert summary["val"]["roc_auc"]["n"] == 2 and "test" in summary


def test_command_line_runs_end_to_end(cache, tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    try:
        import finetune as entry  # the repository's finetune.py
    finally:
        sys.path.remove(str(REPO))
    from vismae.cli import main as vismae_main

    arguments = ["--config", str(shipped_config("finetune", "demo-classify.yaml")), "init=random:tiny",
                 f"data.manifest={cache}", f"output_dir={tmp_path / 'cli'}", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=8"]  # fmt: skip
    assert entry.main(arguments) == 0
    first = capsys.readouterr().out
    assert "selected epoch 1" in first and "test (n=16)" in first
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["epochs"] == 1

    # `vismae finetune` on the same folder reports the finished run instead of training again.
    assert vismae_main(["finetune", *arguments]) == 0
    assert "epoch 1  step" not in capsys.readouterr().out
    assert vismae_main(["finetune", *arguments[:-1], "train.batch_size=4"]) == 2  # another config: refused
    assert "another config" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "cli")


def test_test_images_seen_in_pretraining_are_counted_and_marked(frame, tmp_path):
    # An exported encoder whose pretraining list holds three test images and a training one.
    encoder_dir = tmp_path / "encoder"
    export_encoder(SwinEncoder(encoder_config("tiny", SIZE)), encoder_dir, {"run": "test"})
    tested = frame[(frame["split"] == "test") & (frame["label"] != "normal")]["image_id"].tolist()
    trained_on = frame[frame["split"] == "train"]["image_id"].tolist()
    write_pretraining_images(encoder_dir, tested[:3] + trained_on[:1])
    rows = frame.assign(image_kind="DM")
    result = finetune(rows, str(encoder_dir), "classify", config_for(**{"train.epochs": 1}), tmp_path / "seen")

    assert result.metrics["test_images_seen_in_pretraining"] == 3
    assert json.loads((result.run_dir / "metrics.json").read_text())["test_images_seen_in_pretraining"] == 3
    lines = finetune_module.summary_lines(result)
    assert any(line.startswith("WARNING: the encoder") and "3 of the 16 test images" in line for line in lines)
    assert any(line.startswith("  test (n=16) [3 SEEN IN PRETRAINING]:") for line in lines)
    assert not any(line.startswith("  val") and "SEEN" in line for line in lines)
    # The run's copy of its rows keeps every manifest column, image_kind included.
    assert set(read_manifest(result.run_dir / "manifest.csv")["image_kind"]) == {"DM"}

    # An init that lists nothing (random weights) says nothing.
    plain = finetune(frame, "random:tiny", "classify", config_for(**{"train.epochs": 1}), tmp_path / "plain")
    assert "test_images_seen_in_pretraining" not in plain.metrics
    assert not any("SEEN" in line for line in finetune_module.summary_lines(plain))
