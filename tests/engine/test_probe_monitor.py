"""The pretraining monitor: probes of the encoder being trained, every few epochs, on a labelled
cache's val split; the training itself is the same with and without it."""

import json

import numpy as np
import pytest
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from tiny_pretrain import tiny_config

from vismae.config import ConfigError
from vismae.data.manifest import read_manifest
from vismae.engine.pretrain import run
from vismae.engine.probe import embed, load_images, parse_stages, probe_scores, task_rows
from vismae.models.formats.vismae_export import ENCODER_WEIGHTS
from vismae.models.weights import load_encoder
from vismae.synthetic.cache import CacheImage


@pytest.fixture(scope="module")
def labelled_cache(synthetic_cache):
    """24 patients, two views each: malignant ones with a bright lesion, benign ones without."""
    images = [
        CacheImage(f"p{patient:03d}", view=view, label="malignant" if patient % 2 == 0 else "benign",
                   has_roi=patient % 2 == 0, split=("train", "train", "val", "test")[(patient // 2) % 4])
        for patient in range(24)
        for view in ("CC", "MLO")
    ]  # fmt: skip
    return synthetic_cache(images)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_monitor_logs_probe_auc_of_the_encoder_being_trained_and_changes_nothing(labelled_cache, tmp_path):
    watched = run(tiny_config(labelled_cache, tmp_path / "watched", **{
        "train.epochs": 4, "monitor.manifest": labelled_cache, "monitor.every_epochs": 2,
    }))  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    plain = run(tiny_config(labelled_cache, tmp_path / "plain", **{"train.epochs": 4}))

    # The control: the same run without the monitor trains exactly the same weights.
    assert [r["loss"] for r in records(watched) if "loss" in r] == [r["loss"] for r in records(plain)]
    weights, reference = load_file(str(watched / ENCODER_WEIGHTS)), load_file(str(plain / ENCODER_WEIGHTS))
    assert all(np.array_equal(weights[name].numpy(), reference[name].numpy()) for name in reference)

    checks = [r for r in records(watched) if "monitor" in r]
    assert [check["epoch"] for check in checks] == [2, 4]
    assert json.loads((watched / "metrics.json").read_text())["monitor"] == checks
    assert "monitor" not in json.loads((plain / "metrics.json").read_text())
    events = b"".join(path.read_bytes() for path in (watched / "tensorboard").rglob("events.*"))
    assert b"monitor/linear_val_auc" in events and b"monitor/knn_val_auc" in events

    # The last check scored the final encoder: refitting the probes on the exported encoder's
    # features of the labelled cache's train and val rows gives the same val AUCs.
    encoder = load_encoder(str(watched / ENCODER_WEIGHTS), img_size=64, verbose=False)
    rows, _ = task_rows(read_manifest(labelled_cache))
    rows = rows[rows["split"].isin(["train", "val"])].reset_index(drop=True)
    features = embed(encoder, load_images(rows["path"].tolist(), (64, 64)), parse_stages("all", 4))
    refit = probe_scores(features, rows)
    assert checks[-1]["monitor"]["linear_val_auc"] == pytest.approx(refit["linear"]["val_auc"], abs=1e-6)
    assert checks[-1]["monitor"]["knn_val_auc"] == pytest.approx(refit["knn"]["val_auc"], abs=1e-6)


def test_monitor_settings_are_checked(labelled_cache, tmp_path):
    with pytest.raises(ConfigError, match="monitor.every_epochs"):
        tiny_config(labelled_cache, tmp_path / "run", **{"monitor.every_epochs": 0})
    with pytest.raises(ConfigError, match="monitor.stages"):
        tiny_config(labelled_cache, tmp_path / "run", **{"monitor.stages": "first"})
