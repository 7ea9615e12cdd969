"""Checkpoint readers, one per format, and the detector that picks one from a file's content
(never from its name). Each reader returns a ``Checkpoint``: encoder tensors plus what the
format says about the architecture; fitting them into a model is ``vismae.models.weights``'s job."""

from __future__ import annotations

import os
from pathlib import Path

from vismae.models.formats import reference_mae, swin_imagenet, vismae_export, vismae_run
from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.swin_shapes import looks_like_swin
from vismae.models.formats.tensor_files import read_tensor_file

__all__ = ["Checkpoint", "read_checkpoint"]

# Weight files a folder may hold when it is not one of ours (a Hugging Face timm model folder).
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")


def read_checkpoint(source: str | os.PathLike) -> Checkpoint:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        path = _weights_in_folder(path)
        if path.is_dir():  # an exported encoder folder
            return vismae_export.read(path)
    if vismae_export.is_export(path):
        return vismae_export.read(path)

    state, _ = read_tensor_file(path)  # the rest of a training checkpoint (optimizer, args) is not used
    if vismae_run.is_pretrain_state(state):
        return vismae_run.read(path, state)
    if reference_mae.is_reference_state(state):
        return reference_mae.read(path, state)
    if looks_like_swin(state):
        return swin_imagenet.read(path, state)
    raise ValueError(
        f"{path}: not a Swin checkpoint vismae knows (no patch_embed.proj.weight and layers.<i>.blocks.<j> "
        f"tensors, nor encoder.* ones); its keys start {sorted(state)[:6]}"
    )


def _weights_in_folder(folder: Path) -> Path:
    """The file to read in ``folder``, or the folder itself when it is an exported encoder.

    A run folder's newest checkpoint comes first: a finished run also holds its exported
    encoder, but a later, interrupted session may have left newer checkpoints.
    """
    newest = vismae_run.checkpoint_in_folder(folder)
    if newest is not None:
        return newest
    if vismae_export.is_export(folder):
        return folder
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(
        f"{folder}: found no weights; expected an exported encoder (encoder.json + encoder.safetensors), "
        "a pretraining run or checkpoint folder (checkpoints/step_*/model.safetensors), "
        f"or one of {list(_FOLDER_WEIGHTS)}"
    )
