"""The built-in phantom is a learnable task: with the demo's recipes (configs/finetune/demo-*.yaml),
the tiny encoder from random init learns the synthetic VinDr-format mammograms well above chance
on their held-out test patients, in a few CPU minutes. This runs the path a user's demo runs:
phantom -> manifest -> prepare -> finetune."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from vismae.data.cache import prepare
from vismae.data.manifest import read_manifest, write_manifest
from vismae.data.sources import read_dataset
from vismae.synthetic import make_phantom
from vismae.demo import DemoSettings
from vismae.engine.finetune import finetune
from vismae.engine.finetune_config import load_finetune_config
from vismae.shipped_configs import shipped_config

pytestmark = pytest.mark.slow  # minutes: 200 phantom patients, prepared, then two finetunings

DEMO = DemoSettings()


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory) -> Path:
    """The demo's VinDr-format phantom, prepared the way the demo prepares it."""
    root = tmp_path_factory.mktemp("phantom")
    raw = make_phantom("vindr", root / "raw", n_patients=DEMO.patients, seed=DEMO.seed, image_size=DEMO.phantom_size)
    write_manifest(read_dataset("vindr", raw), root / "manifest.csv")
    prepare(root / "manifest.csv", root / "cache", size=DEMO.size, bits=8, workers=2, progress=False)
    return root / "cache"


@pytest.fixture(scope="module")
def phantom_cache(cache_folder):
    return read_manifest(cache_folder / "manifest.csv")


def demo_run(task: str, frame, run_dir: Path):
    config = load_finetune_config(shipped_config("finetune", f"demo-{task}.yaml"), ["eval.n_boot=200"])
    return finetune(frame, "random:tiny", task, config, run_dir)


def test_classifier_learns_benign_from_malignant(phantom_cache, tmp_path):
    result = demo_run("classify", phantom_cache, tmp_path / "classify")
    test = result.metrics["test"]
    assert test["n"] >= 80 and test["positives"] >= 30  # enough test images for the bound to mean something
    auc = test["roc_auc"]

    # The controls, measured on the same test images: the constant predictor (every image the
    # same score) and the model's own scores against shuffled labels, which is what a model that
    # learned nothing scores on this many images. The model must beat the 99th percentile of
    # the shuffled scores, and its patient-bootstrap interval must clear the constant predictor.
    predictions = pd.read_csv(result.predictions)
    scored = predictions[predictions["split"] == "test"]
    targets, scores = scored["target"].to_numpy(), scored["probability"].to_numpy()
    constant = roc_auc_score(targets, np.zeros_like(scores))
    rng = np.random.default_rng(0)
    shuffled = [roc_auc_score(rng.permutation(targets), scores) for _ in range(1000)]
    chance_bar = float(np.quantile(shuffled, 0.99))
    assert constant == 0.5 and chance_bar > constant
    assert auc["value"] > chance_bar, (auc, chance_bar)
    assert auc["low"] > constant, (auc, constant)


def test_segmenter_outlines_the_findings(phantom_cache, tmp_path):
    result = demo_run("segment", phantom_cache, tmp_path / "segment")
    test = result.metrics["test"]
    assert test["with_roi"] == test["n"] >= 40  # the demo recipe segments annotated images only

    # Chance, measured: marking every pixel of every test image.
    rows = phantom_cache[(phantom_cache["split"] == "test") & phantom_cache["has_roi"]]
    masks = np.stack([cv2.imread(path, cv2.IMREAD_UNCHANGED) > 0 for path in rows["mask_path"]])
    mark_everything = 2 * masks.sum() / (masks.sum() + masks.size)
    assert mark_everything < 0.15
    assert test["dice_pooled"]["value"] > 2.5 * mark_everything, (test["dice_pooled"], mark_everything)
    assert test["dice_pooled"]["low"] > mark_everything
    assert test["precision"]["value"] > 0.4, test["precision"]
