"""Training checkpoints (atomic, last k kept, newest found) and the exported encoder.

A checkpoint is Accelerate's ``save_state`` folder (model as safetensors, optimizer, grad
scaler, every process's RNG state) plus ``trainer_state.json`` (where the loop stands). It is
written as ``.tmp-step_XXXXXXX`` and renamed to ``step_XXXXXXX`` only when complete, so a run
killed while saving leaves the previous checkpoint as the newest. All processes must see the
same run folder (a shared file system on several machines), as Accelerate's ``load_state``
needs anyway.

The exported encoder is what finetuning reads: ``encoder.safetensors`` and ``encoder.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vismae.io import atomic_path, write_json

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{7,})$")
_TEMPORARY_PREFIX = ".tmp-"

ENCODER_FORMAT = "vismae-encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_CONFIG = "encoder.json"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1][1] if checkpoints else None


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete half-written checkpoints left by a run that was killed while saving."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(_TEMPORARY_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    for _, path in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(path)


def save_checkpoint(accelerator, folder: str | os.PathLike, step: int, trainer_state: dict, keep: int) -> Path:
    """Save the full training state at optimizer step ``step``; every process must call this."""
    folder = Path(folder)
    final = folder / checkpoint_name(step)
    temporary = folder / f"{_TEMPORARY_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Our own folder names instead of Accelerate's automatic naming: no iteration counter to
    # keep in step with after a resume, and the step is in the name.
    accelerator.save_state(output_dir=str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(temporary / STATE_FILE, trainer_state)
        if final.exists():  # the same step saved by an earlier, interrupted session
            shutil.rmtree(final)
        os.replace(temporary, final)
        prune_checkpoints(folder, keep)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# The exported encoder.


def export_encoder(encoder, folder: str | os.PathLike, source: dict) -> Path:
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


def _exported_files(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / ENCODER_WEIGHTS, path / ENCODER_CONFIG
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    raise ValueError(f"{path}: expected an exported encoder folder, {ENCODER_WEIGHTS} or {ENCODER_CONFIG}")


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


def load_exported_encoder(path: str | os.PathLike):
    """Rebuild a ``SwinEncoder`` from an exported folder or file, weights loaded strictly."""
    from vismae.models.swin import EncoderConfig, SwinEncoder

    config, state = read_exported_encoder(path)
    encoder = SwinEncoder(EncoderConfig.from_dict(config))
    encoder.load_state_dict(state, strict=True)
    return encoder
