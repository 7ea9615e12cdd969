"""Two real processes over gloo on the CPU, launched the way users launch: both ranks end with
the same weights, and those equal a one-process run with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from safetensors.torch import load_file
from tiny_pretrain import REPO, TINY_CONFIG, tiny_config, tiny_overrides

from vismae.engine.pretrain import build_model, run

SETTINGS = {"train.epochs": 2, "train.lr": 2e-3, "debug.rank_weights": "true", "log.recon_every_epochs": 0}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(manifest: Path, run_dir: Path) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(REPO / "pretrain.py"), "--config", str(TINY_CONFIG),
        *tiny_overrides(manifest, run_dir, **SETTINGS, **{"train.batch_size": 4}),
    ]  # fmt: skip
    # ACCELERATE_USE_CPU makes --multi_gpu start real gloo ranks on a machine without GPUs.
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, pretrain_cache):
    manifest = pretrain_cache
    result = launch_two_processes(manifest, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x batch 4" in result.stdout

    rank0 = load_file(str(tmp_path / "two" / "debug" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "debug" / "rank1.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}: gradients were not synchronized"

    # One process, batch 8: the same 8 images and masks per step as 2 processes x 4.
    single = run(tiny_config(manifest, tmp_path / "one", **SETTINGS, **{"train.batch_size": 8}))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    reference = load_file(str(single / "debug" / "rank0.safetensors"))
    for name in rank0:
        torch.testing.assert_close(rank0[name], reference[name], atol=2e-5, rtol=1e-4, msg=name)

    # ... and training really moved the weights, so the agreement above means something.
    set_seed(0)
    initial = build_model(tiny_config(manifest, tmp_path / "unused")).state_dict()
    moved = max((reference[name] - initial[name]).abs().max().item() for name in reference)
    assert moved > 1e-3

    two_losses = [json.loads(line)["loss"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    one_losses = [json.loads(line)["loss"] for line in (single / "log.jsonl").read_text().splitlines()]
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["effective_batch"] == 8 and metrics["step"] == 8
