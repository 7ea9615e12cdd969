"""What every checkpoint reader hands back, whatever the file looked like."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor


@dataclass
class Checkpoint:
    format: str  # vismae-encoder, vismae-pretrain, vis-mae-reference, microsoft-swin, timm-swin
    file: Path  # the file the tensors came from
    encoder: dict[str, Tensor]  # encoder tensors, still in the source's own Swin key layout
    config: dict  # EncoderConfig fields: the architecture from the shapes, the rest from the format
    dropped: dict[str, list[str]] = field(default_factory=dict)  # why -> keys that are not encoder weights
    decoder: dict[str, Tensor] | None = None  # in vismae's decoder key layout, when the format has one
    decoder_note: str = ""  # what was done to the decoder, or why there is none
    # Per-channel (mean, std) the source model's inputs were normalized with, when known; they
    # can be folded into the patch embedding so that it takes raw [0, 1] pixels.
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    notes: list[str] = field(default_factory=list)  # anything else the user should know
