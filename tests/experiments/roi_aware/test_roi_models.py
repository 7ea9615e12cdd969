"""The ROI-aware experiment end to end with the real finetuning engine: the tiny encoder, 64 px
synthetic images, a couple of optimizer steps per model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from roi_synthetic import ROI_CACHE, roi_images

from vismae import cli
from vismae.data.manifest import read_manifest
from vismae.experiments.roi_aware.experiment import experiment_frame, predicted_routes
from vismae.experiments.roi_aware.config import load_roi_aware_config
from vismae.experiments.roi_aware.models import FinetuneEngine
from vismae.experiments.roi_aware.router import train_router
from vismae.experiments.roi_aware.rules import blind
from vismae.shipped_configs import shipped_config

DEMO_CONFIG = shipped_config("roi_aware", "demo.yaml")
# Groups too small to train alone, their with-ROI stratum big enough to pool: 4 comparative
# classifiers, one or two pooled ones and the router, each a few steps of the tiny encoder.
FAST = ["small_groups.min_images=15", "small_groups.min_per_class=1", "finetune.train.epochs=1", "finetune.eval.n_boot=50"]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny encoder gains nothing from a second thread, and on a busy shared machine
    spinning OpenMP threads make each step many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def manifest(synthetic_cache):
    return synthetic_cache(roi_images(patients=24), **ROI_CACHE)


def test_the_demo_config_runs_end_to_end_and_resumes(manifest, tmp_path):
    out = tmp_path / "run"
    command = ["roi-aware", "--config", str(DEMO_CONFIG), f"manifest={manifest}", f"output_dir={out}", *FAST]
    assert cli.main(command) == 0

    report = out / "report"
    for name in ("results.md", "results.csv", "results.json", "roc.png", "paper_comparison.csv"):
        assert (report / name).is_file(), name
    outcome = json.loads((out / "seed_0" / "outcome.json").read_text())
    trained = {key: model for key, model in outcome["models"].items() if "run_dir" in model}
    assert {"RCC", "LCC", "RMLO", "LMLO", "pooled_with_roi"} <= set(trained)
    for model in trained.values():
        metrics = json.loads((Path(model["run_dir"]) / "metrics.json").read_text())
        assert metrics["threshold"]["chosen_on"] == "val"
        assert "test" not in metrics  # test rows never reached a finetuning call
    router_run = Path(outcome["router"]["run_dir"])
    assert (router_run / "metrics.json").is_file()

    predictions = pd.read_csv(out / "seed_0" / "predictions.csv")
    test_ids = set(read_manifest(manifest).query("split == 'test' and label != 'normal'")["image_id"])
    for procedure, rows in predictions.groupby("procedure"):
        assert set(rows["image_id"]) == test_ids and rows["image_id"].is_unique, procedure
    # A model scores an image once: where both routings pick the same model, same score.
    annotated = predictions[predictions["procedure"] == "annotated"].set_index("image_id")
    deployable = predictions[predictions["procedure"] == "deployable"].set_index("image_id")
    agree = annotated["model"] == deployable.loc[annotated.index, "model"]
    assert (annotated.loc[agree, "score"] == deployable.loc[annotated.index[agree], "score"]).all()

    # Running again reuses every finished model and gives the same predictions.
    stamps = {key: (Path(model["run_dir"]) / "metrics.json").stat().st_mtime_ns for key, model in trained.items()}
    assert cli.main(command) == 0
    assert stamps == {key: (Path(model["run_dir"]) / "metrics.json").stat().st_mtime_ns for key, model in trained.items()}
    pd.testing.assert_frame_equal(predictions, pd.read_csv(out / "seed_0" / "predictions.csv"))


def test_a_segmenter_routes_by_predicted_roi_area(manifest, tmp_path):
    config = load_roi_aware_config(DEMO_CONFIG, [f"manifest={manifest}", f"output_dir={tmp_path}", *FAST])
    frame = experiment_frame(read_manifest(manifest), config.finetune.data)
    known, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]
    engine = FinetuneEngine(batch_size=16)
    router = train_router(engine, known, "segmenter", config.init, config.finetune, tmp_path / "router")
    assert router.kind == "segmenter" and 0.0 <= router.threshold <= 1.0
    assert json.loads((router.run_dir / "metrics.json").read_text())["task"] == "segment"
    groups, routing = predicted_routes(engine, router, blind(test))
    assert list(routing["image_id"]) == list(test["image_id"])
    assert (routing["roi_predicted"] == (routing["score"] >= router.threshold)).all()
    assert groups.str.endswith(("_with_roi", "_without_roi")).all()
