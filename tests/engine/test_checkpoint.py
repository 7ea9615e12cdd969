"""Atomic checkpoints through Accelerate, keeping the newest k, and the exported encoder."""

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from vismae.engine import checkpoint
from vismae.models.mae import build_mae
from vismae.models.presets import encoder_config
from vismae.models.swin import SwinEncoder


@pytest.fixture
def accelerator():
    accelerator = Accelerator(cpu=True)
    yield accelerator
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def fake_checkpoint(folder, step, complete=True):
    path = folder / checkpoint.checkpoint_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / checkpoint.STATE_FILE).write_text("{}")
    return path


def test_checkpoints_are_listed_by_step_and_incomplete_ones_ignored(tmp_path):
    fake_checkpoint(tmp_path, 120)
    fake_checkpoint(tmp_path, 9)
    fake_checkpoint(tmp_path, 1000, complete=False)  # no trainer state: never finished
    (tmp_path / ".tmp-step_0000200").mkdir()
    (tmp_path / "notes").mkdir()
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [9, 120]
    assert checkpoint.newest_checkpoint(tmp_path).name == "step_0000120"
    assert checkpoint.newest_checkpoint(tmp_path / "absent") is None


def test_prune_keeps_the_newest_and_temporaries_are_removed(tmp_path):
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, step)
    (tmp_path / ".tmp-step_0000005").mkdir()
    checkpoint.prune_checkpoints(tmp_path, keep=2)
    checkpoint.remove_temporaries(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_0000003", "step_0000004"]


def test_save_and_load_restore_model_optimizer_and_rng(tmp_path, accelerator):
    model = build_mae("tiny", 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.rand(2, 1, 64, 64)).loss.backward()
    optimizer.step()
    saved_weights = {name: value.clone() for name, value in model.state_dict().items()}
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        path = checkpoint.save_checkpoint(accelerator, folder, step, {"step": step}, keep=2)
    expected_next = torch.rand(3)

    assert path == folder / "step_0000030"
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000020", "step_0000030"]  # atomic, no temporaries
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", checkpoint.STATE_FILE} <= {
        p.name for p in path.iterdir()
    }
    assert json.loads((path / checkpoint.STATE_FILE).read_text()) == {"step": 30}

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


def test_exported_encoder_reloads_with_the_same_weights_and_features(tmp_path):
    torch.manual_seed(0)
    encoder = SwinEncoder(encoder_config("tiny", 64, drop_path_rate=0.0)).eval()
    weights = checkpoint.export_encoder(encoder, tmp_path, {"run": "test", "step": 3})
    description = json.loads((tmp_path / "encoder.json").read_text())
    assert description["format"] == "vismae-encoder" and description["version"] == 1
    assert description["encoder"] == encoder.config.to_dict()
    assert description["source"] == {"run": "test", "step": 3}

    images = torch.rand(2, 1, 64, 64)
    for where in (tmp_path, weights, tmp_path / "encoder.json"):
        loaded = checkpoint.load_exported_encoder(where).eval()
        assert loaded.config == encoder.config
        state = loaded.state_dict()
        assert state.keys() == encoder.state_dict().keys()
        assert all(torch.equal(state[name], value) for name, value in encoder.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded(images), encoder(images))


def test_a_foreign_or_incomplete_export_is_refused(tmp_path):
    encoder = SwinEncoder(encoder_config("tiny", 64))
    checkpoint.export_encoder(encoder, tmp_path, {})
    description = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**description, "format": "something-else"}))
    with pytest.raises(ValueError, match="format is 'something-else'"):
        checkpoint.load_exported_encoder(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps({**description, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        checkpoint.load_exported_encoder(tmp_path)
    (tmp_path / "encoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        checkpoint.load_exported_encoder(tmp_path)
    with pytest.raises(ValueError, match="expected an exported encoder"):
        checkpoint.load_exported_encoder(tmp_path / "weights.pth")
