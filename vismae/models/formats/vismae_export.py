"""Our exported encoder, written and read: ``encoder.safetensors`` + ``encoder.json`` (a folder,
or the two files side by side). It is what pretraining leaves for finetuning and what
``vismae convert-weights`` writes; the JSON holds the ``EncoderConfig`` and where the weights
came from, so the encoder is rebuilt without guessing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vismae.io import atomic_path, write_json
from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.tensor_files import is_safetensors, safetensors_metadata
from vismae.models.swin import EncoderConfig, SwinEncoder

ENCODER_FORMAT = "vismae-encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_CONFIG = "encoder.json"
FORMAT = ENCODER_FORMAT


def export_encoder(encoder: SwinEncoder, folder: str | os.PathLike, source: dict) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` into ``folder``; return the weights path."""
    folder = Path(folder)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in encoder.state_dict().items()}
    weights = folder / ENCODER_WEIGHTS
    with atomic_path(weights) as temporary:
        save_file(tensors, str(temporary), metadata={"format": ENCODER_FORMAT})
    description = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_FORMAT_VERSION,
        "encoder": encoder.config.to_dict(),
        "source": source,
    }
    write_json(folder / ENCODER_CONFIG, description)
    return weights


def read_exported_encoder(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(encoder config dict, state dict) of an exported encoder; safetensors only, no pickle."""
    weights, description_path = _exported_files(path)
    for required in (weights, description_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: no such file (an exported encoder has {ENCODER_WEIGHTS} and {ENCODER_CONFIG})")
    description = json.loads(description_path.read_text())
    if description.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{description_path}: format is {description.get('format')!r}, expected {ENCODER_FORMAT!r}")
    if description.get("version") != ENCODER_FORMAT_VERSION:
        raise ValueError(
            f"{description_path}: version {description.get('version')!r}; this vismae reads version {ENCODER_FORMAT_VERSION}"
        )
    return description["encoder"], load_file(str(weights))


def load_exported_encoder(path: str | os.PathLike) -> SwinEncoder:
    """Rebuild a ``SwinEncoder`` from an exported folder or file, weights loaded strictly."""
    config, state = read_exported_encoder(path)
    encoder = SwinEncoder(EncoderConfig.from_dict(config))
    encoder.load_state_dict(state, strict=True)
    return encoder


# ---------------------------------------------------------------------------------------------
# As one of the formats ``load_encoder`` detects.


def is_export(path: Path) -> bool:
    """Told by content: the JSON description, or the safetensors metadata, names the format."""
    if path.is_dir():
        return _describes_export(path / ENCODER_CONFIG)
    if path.suffix == ".json":
        return _describes_export(path)
    if is_safetensors(path):
        return safetensors_metadata(path).get("format") == ENCODER_FORMAT or _describes_export(path.with_suffix(".json"))
    return False


def read(path: Path) -> Checkpoint:
    config, state = read_exported_encoder(path)
    weights = path / ENCODER_WEIGHTS if path.is_dir() else path.with_suffix(".safetensors")
    note = "an exported encoder has no decoder"
    return Checkpoint(format=FORMAT, file=weights, encoder=state, config=config, decoder_note=note)


def _exported_files(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / ENCODER_WEIGHTS, path / ENCODER_CONFIG
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    raise ValueError(f"{path}: expected an exported encoder folder, {ENCODER_WEIGHTS} or {ENCODER_CONFIG}")


def _describes_export(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == ENCODER_FORMAT
    except (ValueError, AttributeError):
        return False
