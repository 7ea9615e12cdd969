"""The exported encoder format: written, read back exactly, and refused when it is not ours."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from vismae.models.formats.vismae_export import (
    ENCODER_CONFIG,
    ENCODER_WEIGHTS,
    PRETRAINING_IMAGES,
    export_encoder,
    images_seen_in_pretraining,
    is_export,
    pretraining_images,
    read_exported_encoder,
    write_pretraining_images,
)
from vismae.models.presets import encoder_config
from vismae.models.swin import SwinEncoder
from vismae.models.weights import load_encoder


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
        loaded = load_encoder(where, verbose=False).eval()
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
        read_exported_encoder(tmp_path)
    (tmp_path / ENCODER_CONFIG).write_text(json.dumps({**description, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_encoder(tmp_path, verbose=False)
    (tmp_path / ENCODER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        load_encoder(tmp_path, verbose=False)
    with pytest.raises(ValueError, match="expected an exported encoder"):
        read_exported_encoder(tmp_path / "weights.pth")


def test_the_pretraining_image_list_is_found_beside_every_form_of_init(tmp_path):
    run_dir = tmp_path / "run"
    write_pretraining_images(run_dir, ["a", "b", "c"])
    checkpoint = run_dir / "checkpoints" / "step_0000012"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"")
    (run_dir / ENCODER_WEIGHTS).write_bytes(b"")
    for init in (run_dir, str(run_dir / ENCODER_WEIGHTS), checkpoint, checkpoint / "model.safetensors"):
        assert pretraining_images(init) == ["a", "b", "c"], init
    assert images_seen_in_pretraining(run_dir, ["c", "c", "d"]) == 1  # an image counts once

    # No list to be found: a random init, a missing path, foreign weights in a folder without one.
    elsewhere = tmp_path / "foreign"
    elsewhere.mkdir()
    (elsewhere / "swin.safetensors").write_bytes(b"")
    for init in ("random:tiny", "random", None, tmp_path / "missing", elsewhere / "swin.safetensors"):
        assert pretraining_images(init) is None and images_seen_in_pretraining(init, ["a"]) is None, init


def test_a_pretraining_image_list_without_its_header_is_refused(tmp_path):
    (tmp_path / PRETRAINING_IMAGES).write_text("path\nx.png\n")
    with pytest.raises(ValueError, match=r"pretraining_images.csv: expected one column named 'image_id'"):
        pretraining_images(tmp_path)


def test_convert_weights_carries_the_pretraining_image_list(tmp_path, capsys):
    from vismae.cli import main

    export_encoder(SwinEncoder(encoder_config("tiny", 64)), tmp_path / "run", {"run": "test"})
    write_pretraining_images(tmp_path / "run", ["a", "b"])
    assert main(["convert-weights", str(tmp_path / "run" / ENCODER_WEIGHTS), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert pretraining_images(tmp_path / "out") == ["a", "b"]
    assert json.loads((tmp_path / "out" / ENCODER_CONFIG).read_text())["source"]["pretraining_images"] == 2
