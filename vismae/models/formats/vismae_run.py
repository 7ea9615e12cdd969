"""Our pretraining checkpoints: Accelerate's ``model.safetensors`` holding the whole SwinMAE
(``encoder.*``, ``decoder.*``) inside ``RUN/checkpoints/step_XXXXXXX/``, with ``mae.json``
beside it: the ``MAEConfig`` that rebuilds the model (encoder settings, decoder kind, masking).

Checkpoints written before ``mae.json`` existed are still read: their encoder settings come
from the run's ``config.yaml``, three folders up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from torch import Tensor

from vismae.io import write_json
from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.presets import encoder_config
from vismae.models.swin import EncoderConfig

FORMAT = "vismae-pretrain"
MODEL_FILE = "model.safetensors"
MAE_DESCRIPTION_FILE = "mae.json"
MAE_DESCRIPTION_FORMAT = "vismae-mae"
MAE_DESCRIPTION_VERSION = 1
RUN_CONFIG = "config.yaml"
CHECKPOINTS_FOLDER = "checkpoints"
# A checkpoint folder is complete once the trainer has written its state. The names are those
# vismae.run_folder gives checkpoints (step_ + at least 7 digits, trainer_state.json written
# last); that module reads configs, which the models may not import, hence this small copy.
_CHECKPOINT_NAME = re.compile(r"^step_(\d{7,})$")
_COMPLETE_MARKER = "trainer_state.json"


# ---------------------------------------------------------------------------------------------
# Writing: the model description saved with every checkpoint.


def describe_mae(model) -> dict:
    """What rebuilds ``model`` (a ``SwinMAE``): its ``MAEConfig`` as JSON-safe data."""
    return {"format": MAE_DESCRIPTION_FORMAT, "version": MAE_DESCRIPTION_VERSION, "mae": model.config.to_dict()}


def write_mae_description(model, checkpoint_folder: str | Path) -> Path:
    """Write ``mae.json`` into a checkpoint folder (atomically); return its path."""
    return write_json(Path(checkpoint_folder) / MAE_DESCRIPTION_FILE, describe_mae(model))


def read_mae_description(checkpoint_folder: str | Path) -> dict | None:
    """The ``MAEConfig`` fields saved in a checkpoint folder, or None for a checkpoint written
    before descriptions existed. Raises ValueError naming the file when it is not ours."""
    path = Path(checkpoint_folder) / MAE_DESCRIPTION_FILE
    if not path.is_file():
        return None
    try:
        description = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != MAE_DESCRIPTION_FORMAT:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ValueError(f"{path}: format is {found!r}, expected {MAE_DESCRIPTION_FORMAT!r}")
    if description.get("version") != MAE_DESCRIPTION_VERSION:
        raise ValueError(
            f"{path}: version {description.get('version')!r}; this vismae reads version {MAE_DESCRIPTION_VERSION}"
        )
    if not isinstance(description.get("mae"), dict) or not isinstance(description["mae"].get("encoder"), dict):
        raise ValueError(f"{path}: expected an 'mae' mapping with an 'encoder' mapping inside")
    return description["mae"]


# ---------------------------------------------------------------------------------------------
# Reading, as one of the formats ``load_encoder`` detects.


def newest_checkpoint_folder(checkpoints: Path) -> Path | None:
    """The complete ``step_*`` folder with the highest step in ``checkpoints``, if any."""
    if not checkpoints.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in checkpoints.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and (path / _COMPLETE_MARKER).is_file()
    ]
    return max(found)[1] if found else None


def checkpoint_in_folder(folder: Path) -> Path | None:
    """The weights file of a run folder's newest checkpoint, or of a checkpoint folder itself."""
    newest = newest_checkpoint_folder(folder / CHECKPOINTS_FOLDER)
    if newest is not None and (newest / MODEL_FILE).is_file():
        return newest / MODEL_FILE
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    return None


def is_pretrain_state(state: dict[str, Tensor]) -> bool:
    return any(key.startswith("encoder.") for key in state)


def read(file: Path, state: dict[str, Tensor]) -> Checkpoint:
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    decoder = {key.removeprefix("decoder."): value for key, value in state.items() if key.startswith("decoder.")}
    others = sorted(key for key in state if not key.startswith(("encoder.", "decoder.")))
    config, notes = _saved_encoder_config(file)
    return Checkpoint(
        format=FORMAT,
        file=file,
        encoder=encoder,
        config=config,
        dropped={"not part of the MAE model": others} if others else {},
        decoder=decoder or None,
        decoder_note="" if decoder else "the checkpoint holds no decoder.* tensors",
        notes=notes,
    )


def _saved_encoder_config(file: Path) -> tuple[dict, list[str]]:
    """The encoder settings (norm eps, window partitioning, image size ...) saved with the
    checkpoint; empty when none can be found (the tensor shapes then say all that can be known)."""
    try:
        saved = read_mae_description(file.parent)
        if saved is not None:
            return EncoderConfig.from_dict(saved["encoder"]).to_dict(), [f"encoder settings from {file.parent / MAE_DESCRIPTION_FILE}"]
    except (ValueError, TypeError) as error:
        return {}, [f"{error}: settings beyond the shapes are defaults"]
    return _encoder_config_from_run_yaml(file.parent.parent.parent / RUN_CONFIG, file)


def _encoder_config_from_run_yaml(run_config: Path, file: Path) -> tuple[dict, list[str]]:
    """For checkpoints written before ``mae.json``: the encoder from the run's resolved
    config.yaml (``model.preset``, ``model.overrides``, ``data.size``).

    Read as plain YAML on purpose: the models sit below the config schemas (vismae.config) in
    the package's layers, and these three keys are all the encoder depends on. The file is the
    run's resolved config, so every key is written out and no default is needed here.
    """
    if not run_config.is_file():
        return {}, [f"no {MAE_DESCRIPTION_FILE} beside {file} nor {RUN_CONFIG} two folders up: settings beyond the shapes are defaults"]
    try:
        raw = yaml.safe_load(run_config.read_text()) or {}
        model, data = raw.get("model") or {}, raw.get("data") or {}
        if "preset" not in model or "size" not in data:
            raise ValueError("expected model.preset and data.size")
        sides = [data["size"]] if isinstance(data["size"], int) else list(data["size"])
        saved = encoder_config(model["preset"], (sides[0], sides[-1]), **(model.get("overrides") or {})).to_dict()
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, IndexError) as error:
        return {}, [f"{run_config} could not be read ({error}): settings beyond the shapes are defaults"]
    return saved, [f"encoder settings from {run_config}"]
