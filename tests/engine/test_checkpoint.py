"""Atomic checkpoints through Accelerate, keeping the newest k. (Naming, listing and pruning
checkpoints: tests/test_run_folder.py; the exported encoder: tests/models/test_export.py.)"""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from vismae import run_folder
from vismae.engine import checkpoint
from vismae.models.mae import build_mae


@pytest.fixture
def accelerator():
    accelerator = Accelerator(cpu=True)
    yield accelerator
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_save_and_load_restore_model_optimizer_and_rng(tmp_path, accelerator):
    model = build_mae("tiny", 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.rand(2, 1, 64, 64)).loss.backward()
    optimizer.step()
    saved_weights = {name: value.clone() for name, value in model.state_dict().items()}
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    folder = tmp_path / "checkpoints"
    described = []

    def describe(where):  # runs before the checkpoint is marked complete
        described.append(where.name)
        assert not (where / run_folder.STATE_FILE).exists()
        (where / "notes.json").write_text("{}")

    for step in (10, 20, 30):
        path = checkpoint.save_checkpoint(accelerator, folder, step, {"step": step}, keep=2, describe=describe)
    expected_next = torch.rand(3)

    assert path == folder / "step_0000030"
    assert described == [".tmp-step_0000010", ".tmp-step_0000020", ".tmp-step_0000030"]
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000020", "step_0000030"]  # atomic, no temporaries
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "notes.json", run_folder.STATE_FILE} <= {
        p.name for p in path.iterdir()
    }
    assert checkpoint.read_trainer_state(path) == {"step": 30}

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model(torch.rand(2, 1, 64, 64)).loss.backward()
    optimizer.step()
    torch.rand(5)

    accelerator.load_state(str(path))
    assert all(torch.equal(value, saved_weights[name]) for name, value in model.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved_moments)
    assert torch.equal(torch.rand(3), expected_next)  # the RNG continues where it was saved
