"""Our pretraining checkpoints: Accelerate's ``model.safetensors`` holding the whole SwinMAE
(``encoder.*``, ``decoder.*``), inside ``RUN/checkpoints/step_XXXXXXX/``, beside the run's
``config.yaml``."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from vismae.models.formats.checkpoint_types import Checkpoint

FORMAT = "vismae-pretrain"
MODEL_FILE = "model.safetensors"
RUN_CONFIG = "config.yaml"


def checkpoint_in_folder(folder: Path) -> Path | None:
    """The weights file of a run folder's newest checkpoint, or of a checkpoint folder itself."""
    from vismae.engine.checkpoint import newest_checkpoint

    newest = newest_checkpoint(folder / "checkpoints")
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
    config, notes = _run_encoder_config(file)
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


def _run_encoder_config(file: Path) -> tuple[dict, list[str]]:
    """The run's encoder settings (norm eps, window partitioning, image size ...) from its
    config.yaml; empty without one (the tensor shapes then say all that can be known)."""
    run_config = file.parent.parent.parent / RUN_CONFIG  # RUN/checkpoints/step_X/model.safetensors
    if not run_config.is_file():
        return {}, [f"no {RUN_CONFIG} two folders up from {file}: settings beyond the shapes are defaults"]
    from vismae.config import ConfigError, DataSection, ModelSection, from_dict, read_yaml
    from vismae.models.presets import encoder_config

    try:
        raw = read_yaml(run_config)
        model = from_dict(ModelSection, raw.get("model") or {}, "model.")
        size = DataSection(size=(raw.get("data") or {}).get("size", DataSection.size)).image_size
        saved = encoder_config(model.preset, size, **model.overrides).to_dict()
    except (ConfigError, ValueError, TypeError) as error:
        return {}, [f"{run_config} could not be read ({error}): settings beyond the shapes are defaults"]
    return saved, [f"encoder settings from {run_config}"]
