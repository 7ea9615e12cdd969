"""Our exported encoder: ``encoder.safetensors`` + ``encoder.json`` (folder or file pair)."""

from __future__ import annotations

import json
from pathlib import Path

from vismae.engine import checkpoint as export
from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.tensor_files import is_safetensors, safetensors_metadata

FORMAT = "vismae-encoder"


def is_export(path: Path) -> bool:
    """Told by content: the JSON description, or the safetensors metadata, names the format."""
    if path.is_dir():
        return _describes_export(path / export.ENCODER_CONFIG)
    if path.suffix == ".json":
        return _describes_export(path)
    if is_safetensors(path):
        return safetensors_metadata(path).get("format") == export.ENCODER_FORMAT or _describes_export(
            path.with_suffix(".json")
        )
    return False


def read(path: Path) -> Checkpoint:
    config, state = export.read_exported_encoder(path)
    weights = path / export.ENCODER_WEIGHTS if path.is_dir() else path.with_suffix(".safetensors")
    note = "an exported encoder has no decoder"
    return Checkpoint(format=FORMAT, file=weights, encoder=state, config=config, decoder_note=note)


def _describes_export(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == export.ENCODER_FORMAT
    except (ValueError, AttributeError):
        return False
