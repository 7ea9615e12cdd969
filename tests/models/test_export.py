"""The exported encoder format: written, read back exactly, and refused when it is not ours."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from vismae.models.formats.vismae_export import (
    ENCODER_CONFIG,
    ENCODER_WEIGHTS,
    export_encoder,
    is_export,
    load_exported_encoder,
)
from vismae.models.presets import encoder_config
from vismae.models.swin import SwinEncoder


def test_exported_encoder_reloads_with_the_same_weights_and_features(tmp_path):
    torch.manual_seed(0)
    encoder = SwinEncoder(encoder_config("tiny", 64, drop_path_rate=0.0)).eval()
    weights = export_encoder(encoder, tmp_path, {"run": "test", "step": 3})
    assert weights == tmp_path / ENCODER_WEIGHTS
    description = json.loads((tmp_path / ENCODER_CONFIG).read_text())
    assert description["format"] == "vismae-encoder" and description["version"] == 1
    assert description["encoder"] == encoder.config.to_dict()
    assert description["source"] == {"run": "test", "step": 3}
    with safe_open(str(weights), "pt") as handle:  # told by content even without the JSON
        assert handle.metadata() == {"format": "vismae-encoder"}

    images = torch.rand(2, 1, 64, 64)
    for where in (tmp_path, weights, tmp_path / ENCODER_CONFIG):
        assert is_export(where)
        loaded = load_exported_encoder(where).eval()
        assert loaded.config == encoder.config
        state = loaded.state_dict()
        assert state.keys() == encoder.state_dict().keys()
        assert all(torch.equal(state[name], value) for name, value in encoder.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded(images), encoder(images))


def test_a_foreign_or_incomplete_export_is_refused(tmp_path):
    encoder = SwinEncoder(encoder_config("tiny", 64))
    export_encoder(encoder, tmp_path, {})
    description = json.loads((tmp_path / ENCODER_CONFIG).read_text())
    (tmp_path / ENCODER_CONFIG).write_text(json.dumps({**description, "format": "something-else"}))
    assert not is_export(tmp_path)
    with pytest.raises(ValueError, match="format is 'something-else'"):
        load_exported_encoder(tmp_path)
    (tmp_path / ENCODER_CONFIG).write_text(json.dumps({**description, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_exported_encoder(tmp_path)
    (tmp_path / ENCODER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        load_exported_encoder(tmp_path)
    with pytest.raises(ValueError, match="expected an exported encoder"):
        load_exported_encoder(tmp_path / "weights.pth")
