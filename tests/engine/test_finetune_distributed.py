"""Finetuning on two real processes over gloo, launched as users launch it: one run folder,
one prediction per image, and the same model selection and threshold as one process with the
same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from accelerate.state import AcceleratorState, GradientState
from test_finetune import LESION_CACHE, REPO, TEST_SETTINGS, config_for, lesion_images, one_thread  # noqa: F401 (one_thread: autouse)

from vismae.data.manifest import read_manifest
from vismae.engine.finetune import finetune

# No class weights: a weighted mean per process is not the weighted mean of the global batch.
SETTINGS = {"train.epochs": 2, "train.balance": "none", "checkpoint.every_epochs": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, synthetic_cache):
    manifest = synthetic_cache(lesion_images(patients=20, normal=2), **LESION_CACHE)
    overrides = {**TEST_SETTINGS, **SETTINGS, "train.batch_size": 4, "init": "random:tiny", "data.manifest": manifest, "output_dir": tmp_path / "two"}
    config_path = tmp_path / "base.yaml"
    config_path.write_text("{}\n")
    command = [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(REPO / "finetune.py"), "--config", str(config_path),
        *[f"{key}={value}" for key, value in overrides.items()],
    ]  # fmt: skip
    # ACCELERATE_USE_CPU makes --multi_gpu start real gloo ranks on a machine without GPUs.
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 process(es) x batch 4" in launched.stdout

    two = tmp_path / "two"
    predictions = pd.read_csv(two / "predictions.csv")
    assert not predictions["image_id"].duplicated().any()  # the padding of uneven shards is dropped
    frame = read_manifest(manifest)
    labelled = frame[(frame["label"] != "normal") & (frame["split"] != "train")]
    assert sorted(predictions["image_id"]) == sorted(labelled["image_id"])

    single = finetune(frame, "random:tiny", "classify", config_for(**{**SETTINGS, "train.batch_size": 8}), tmp_path / "one")
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["best_epoch"] == single.best_epoch
    assert metrics["threshold"]["threshold"] == pytest.approx(single.threshold, abs=1e-4)
    one = pd.read_csv(single.predictions).set_index("image_id")
    np.testing.assert_allclose(predictions.set_index("image_id").loc[one.index, "probability"], one["probability"], atol=1e-4)
    history = [pd.read_csv(folder / "history.csv")["train_loss"] for folder in (two, single.run_dir)]
    np.testing.assert_allclose(*history, rtol=1e-4)

