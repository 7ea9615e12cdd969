"""Supervised Swin v1 checkpoints: Microsoft's official ``.pth`` (``{'model': ...}``, original
key layout, ``head.*``) and timm's (safetensors or ``.pth``/``.bin`` state dicts, ``head.fc.*``).
The classifier goes; the rest is a standard Swin (LayerNorm eps 1e-5, final norm, the window
shrunk in stages whose map is no larger than it)."""

from __future__ import annotations

from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.swin_shapes import infer_architecture, original_layout

MICROSOFT = "microsoft-swin"
TIMM = "timm-swin"

STANDARD = dict(norm_eps=1e-5, always_partition=False)


def read(file: Path, state: dict[str, Tensor]) -> Checkpoint:
    head = sorted(key for key in state if key.startswith("head."))
    encoder = {key: value for key, value in state.items() if not key.startswith("head.")}
    # Microsoft's head is a bare Linear (head.weight); timm's is a ClassifierHead (head.fc.weight).
    microsoft = original_layout(state) or "head.weight" in state
    return Checkpoint(
        format=MICROSOFT if microsoft else TIMM,
        file=file,
        encoder=encoder,
        config={**infer_architecture(encoder, str(file)), **STANDARD},
        dropped={"classifier head": head} if head else {},
        decoder_note="a supervised Swin has no MAE decoder",
        input_norm=(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    )
