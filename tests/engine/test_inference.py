"""`vismae predict` and `vismae export-model` end to end on a phantom in VinDr's DICOM layout:
raw DICOMs -> manifest -> prepare -> a tiny finetuned classifier, then predictions on the raw
files that equal the run's own, from a manifest, a DICOM folder, a cache and an export."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from vismae.cli import main
from vismae.data.cache import prepare
from vismae.data.dicom import read_image
from vismae.data.manifest import read_manifest, write_manifest
from vismae.data.sources import read_dataset
from vismae.engine.deployable import read_deployable
from vismae.engine.export_model import export_model
from vismae.engine.finetune import finetune
from vismae.engine.finetune_config import load_finetune_config
from vismae.engine.predict_images import PredictSettings, predict
from vismae.synthetic import make_phantom

SETTINGS = {
    "model.drop_path": 0.0, "train.batch_size": 8, "train.epochs": 2, "train.warmup_epochs": 1, "train.lr": 3e-4,
    "train.mixed_precision": "no", "data.num_workers": 0, "eval.n_boot": 50, "checkpoint.every_epochs": 0,
}  # fmt: skip
FAST = dict(num_workers=0, prepare_workers=1, n_boot=50, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, finished run) of a tiny classifier trained on a prepared 24-patient VinDr phantom."""
    root = tmp_path_factory.mktemp("byo")
    make_phantom("vindr", root / "raw", 24, seed=0, image_size=(160, 128))
    write_manifest(read_dataset("vindr", root / "raw"), root / "raw.csv")
    prepare(root / "raw.csv", root / "cache", size=64, bits=8, workers=1, progress=False)
    config = load_finetune_config(None, [f"{key}={value}" for key, value in SETTINGS.items()])
    result = finetune(read_manifest(root / "cache" / "manifest.csv"), "random:tiny", "classify", config, root / "run")
    return root, result


@pytest.fixture(scope="module")
def from_manifest(trained, tmp_path_factory):
    root, result = trained
    return predict(result.run_dir, root / "raw.csv", tmp_path_factory.mktemp("out") / "manifest", PredictSettings(saliency=3, **FAST))


def test_raw_files_get_exactly_the_probabilities_the_run_wrote(trained, from_manifest):
    _, result = trained
    run = pd.read_csv(result.predictions, dtype={"image_id": str})
    mine = pd.read_csv(from_manifest.out_dir / "images.csv", dtype={"image_id": str})
    joined = run.merge(mine, on="image_id", suffixes=("_run", ""))
    assert len(joined) == len(run) > 0  # every val and test image of the run
    assert np.abs(joined["probability_run"] - joined["probability"]).max() < 1e-4
    assert (joined["prediction"] == joined["decision"]).all()  # the run's threshold


def test_the_three_tables_aggregate_views_and_breasts(from_manifest):
    out = from_manifest.out_dir
    images = pd.read_csv(out / "images.csv", dtype=str, keep_default_na=False)
    breasts = pd.read_csv(out / "breasts.csv", dtype={"study_id": str})
    exams = pd.read_csv(out / "exams.csv", dtype={"study_id": str})
    assert list(images.columns[:7]) == ["image_id", "patient_id", "study_id", "laterality", "view", "probability", "decision"]
    assert len(images) == 96 and len(breasts) == 48 and len(exams) == 24
    images["probability"] = images["probability"].astype(float)
    means = images.groupby(["study_id", "laterality"])["probability"].mean()
    keys = list(zip(breasts["study_id"], breasts["laterality"]))
    assert np.allclose(breasts["probability"], means.loc[keys])
    assert np.allclose(exams.set_index("study_id")["probability"], breasts.groupby("study_id")["probability"].max().loc[exams.study_id])
    assert (breasts["n_views"] == 2).all() and (exams["n_views"] == 4).all() and (exams["n_breasts"] == 2).all()
    thresholds = json.loads((out / "predict.json").read_text())["thresholds"]
    assert ((exams["probability"] >= thresholds["exam"]).astype(int) == exams["decision"]).all()


def test_labelled_inputs_are_evaluated_by_level_with_intervals(from_manifest):
    out = from_manifest.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for level in ("image", "breast", "exam"):
        report = metrics["levels"][level]
        for name in ("roc_auc", "sensitivity_at_90_specificity", "specificity_at_90_sensitivity", "pf1", "pf1_best", "ece", "brier"):
            assert {"value", "low", "high", "n_boot"} <= set(report[name]), (level, name)
    assert metrics["levels"]["image"]["n"] == 62  # the benign and malignant images; normal ones are not judged
    assert metrics["levels"]["calibration"]["bins"] == 10
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_saliency_maps_lie_beside_the_original_images(trained, from_manifest):
    out = from_manifest.out_dir
    described = json.loads((out / "saliency" / "saliency.json").read_text())
    assert "Grad-CAM" in described["method"] and "last encoder stage" in described["target_layer"]
    assert len(described["images"]) == 3  # --saliency 3: the three of highest probability
    highest = from_manifest.images.sort_values("probability", ascending=False)["image_id"].head(3)
    assert {entry["image_id"] for entry in described["images"]} == set(highest)
    entry = described["images"][0]
    assert entry["drawn_on"] == "original"
    panel = cv2.imread(str(out / "saliency" / entry["file"]))
    # The original, uncropped, twice, 4 px apart, under a 28 px caption.
    path = from_manifest.images.set_index("image_id").loc[entry["image_id"], "path"]
    height, width = read_image(path).shape
    assert panel.shape == (28 + height, 2 * width + 4, 3)


def test_a_dicom_folder_is_read_bad_files_are_skipped_and_partial_exams_answered(trained, from_manifest, tmp_path):
    root, result = trained
    raw = read_manifest(root / "raw.csv")
    patients = raw["patient_id"].unique()[:2]
    folder = tmp_path / "dicoms"
    folder.mkdir()
    chosen = raw[raw["patient_id"].isin(patients)].reset_index(drop=True)
    for index, path in enumerate(chosen["path"]):
        shutil.copyfile(path, folder / f"{index}.dcm")
    broken = folder / f"{len(chosen) - 1}.dcm"
    broken.write_bytes(broken.read_bytes()[: int(broken.stat().st_size * 0.8)])  # pixel data cut short
    (folder / "notes.txt").write_text("not an image")
    out = predict(result.run_dir, folder, tmp_path / "out", PredictSettings(saliency=0, salt="s", **FAST))
    skipped = pd.read_csv(out.out_dir / "skipped.csv", keep_default_na=False)
    assert sorted(skipped["stage"]) == ["folder", "prepare"]
    assert skipped.set_index("stage").loc["folder", "path"].endswith("notes.txt")
    assert skipped.set_index("stage").loc["prepare", "path"].endswith(broken.name)
    assert len(out.images) == len(chosen) - 1
    # The same files, found through a folder, get the same probabilities.
    by_path = from_manifest.images.set_index("path")["probability"]
    originals = dict(zip(chosen["path"], chosen.index))
    for path, probability in zip(out.images["path"], out.images["probability"]):
        source = [raw_path for raw_path, index in originals.items() if Path(path).name == f"{index}.dcm"][0]
        assert probability == pytest.approx(by_path[source], abs=1e-4)
    # The exam that lost a view is still answered, from three views.
    assert sorted(out.exams["n_views"]) == [3, 4]
    assert "metrics.json" not in {p.name for p in out.out_dir.iterdir()}  # a DICOM folder carries no labels
    assert not (out.out_dir / "prepared").exists()


def test_an_exported_model_predicts_as_its_run(trained, from_manifest, tmp_path):
    root, result = trained
    exported = export_model(result.run_dir, tmp_path / "model")
    assert {p.name for p in exported.iterdir()} >= {"model.safetensors", "model.json", "deployment.json", "model_card.md"}
    assert read_deployable(exported).to_dict()["fitted_on_validation"] == read_deployable(result.run_dir).fitted
    again = predict(exported, root / "raw.csv", tmp_path / "out", PredictSettings(saliency=0, **FAST))
    pd.testing.assert_frame_equal(again.images, from_manifest.images)
    pd.testing.assert_frame_equal(again.exams, from_manifest.exams)
    card = (exported / "model_card.md").read_text()
    assert "not a medical device" in card and "VinDr-Mammo" in card and "unknown" not in card.split("## Training data")[1].split("##")[0]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert f"{metrics['test']['roc_auc']['value']:.3f}" in card
    with pytest.raises(ValueError, match="not empty"):
        export_model(result.run_dir, exported)


def test_a_cache_is_predicted_only_when_prepared_as_the_training_images(trained, tmp_path):
    root, result = trained
    out = predict(result.run_dir, root / "cache" / "manifest.csv", tmp_path / "out", PredictSettings(saliency=1, **FAST))
    run = pd.read_csv(result.predictions, dtype={"image_id": str}).set_index("image_id")["probability"]
    mine = out.images.set_index("image_id")["probability"].loc[run.index]
    assert np.abs(mine - run).max() < 1e-4
    assert json.loads((out.out_dir / "saliency" / "saliency.json").read_text())["images"][0]["drawn_on"] == "prepared"
    other = tmp_path / "other_cache"
    shutil.copytree(root / "cache", other)
    settings = json.loads((other / "prepare.json").read_text())
    settings["preprocessing"]["clahe_clip"] = 4.0
    (other / "prepare.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="clahe_clip"):
        predict(result.run_dir, other / "manifest.csv", tmp_path / "refused", PredictSettings(**FAST))


def test_the_finetune_metrics_gain_levels_and_keep_their_keys(trained):
    _, result = trained
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"task", "init", "selected_by", "best_epoch", "epochs", "threshold", "val", "test", "data", "seconds"} <= set(metrics)
    levels = metrics["levels"]
    assert set(levels) == {"fitted_on_val", "val", "test"}
    assert levels["test"]["image"]["roc_auc"] == metrics["test"]["roc_auc"]  # same rows, same resamples
    assert levels["fitted_on_val"]["thresholds"]["image"] == metrics["threshold"]["threshold"]
    # What predict fits from the run folder's files is what the run fitted in memory.
    assert read_deployable(result.run_dir).fitted == levels["fitted_on_val"]
    assert "pf1_at_val_threshold" in levels["test"]["breast"] and "ece_temperature_scaled" in levels["test"]["exam"]


def test_the_command_line(trained, tmp_path, capsys):
    root, result = trained
    assert main(["export-model", str(result.run_dir), str(tmp_path / "model")]) == 0
    code = main(["predict", "--model", str(tmp_path / "model"), "--input", str(root / "raw.csv"), "--out", str(tmp_path / "out"),
                 "--saliency", "none", "--n-boot", "20", "--workers", "1", "--num-workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "predicted 96 images, 48 breasts, 24 exams" in printed and "exam (n=" in printed
    assert main(["predict", "--model", str(tmp_path), "--input", str(root / "raw.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "neither an exported model" in capsys.readouterr().err
