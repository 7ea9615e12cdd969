"""VIS-MAE / Swin-MAE reference checkpoints (``checkpoint-<n>.pth``).

``torch.save({'model', 'optimizer', 'epoch', 'scaler', 'args'})`` of a Swin MAE with three input
channels. Its encoder is a Swin v1 in the original key layout with three quirks an exact loader
keeps: LayerNorm eps 1e-6, no final norm, and the shifted window kept in every stage, even
where the map is no larger than the window (timm's ``always_partition``). Its sin-cos
``pos_embed`` is stored but never added, so it is dropped. The decoder mirrors the encoder
with patch-expanding stages and maps one to one onto vismae's mirror decoder.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.swin_shapes import infer_architecture, original_layout

FORMAT = "vis-mae-reference"
DECODER_PREFIXES = ("first_patch_expanding.", "layers_up.", "norm_up.", "decoder_pred.")

# What the reference code fixes that no tensor shows.
QUIRKS = dict(norm_eps=1e-6, always_partition=True)

# VIS-MAE's pretraining normalizes every channel with these (its run_pretrain.py). Swin-MAE's
# code, which writes the same keys, feeds raw [0, 1] pixels: fold these for VIS-MAE only.
INPUT_NORM = ((0.223, 0.223, 0.223), (0.202, 0.202, 0.202))


def is_reference_state(state: dict[str, Tensor]) -> bool:
    has_decoder = any(key.startswith(DECODER_PREFIXES) for key in state)
    return has_decoder or ("mask_token" in state and original_layout(state))


def read(file: Path, state: dict[str, Tensor]) -> Checkpoint:
    decoder = {key: value for key, value in state.items() if key.startswith(DECODER_PREFIXES)}
    encoder = {key: value for key, value in state.items() if key not in decoder and key != "pos_embed"}
    architecture = infer_architecture(encoder, str(file))
    dropped = {"decoder, not part of the encoder": sorted(decoder)}
    if "pos_embed" in state:
        dropped["pos_embed: stored but never added by the reference model"] = ["pos_embed"]
    mirror, note = mirror_decoder_state(decoder, len(architecture["depths"]))
    if "mask_token" in encoder:  # the reference's (1, 1, C) token; ours is (1, 1, 1, C)
        encoder["mask_token"] = encoder["mask_token"].reshape(1, 1, 1, -1)
    return Checkpoint(
        format=FORMAT,
        file=file,
        encoder=encoder,
        config={**architecture, **QUIRKS},
        dropped={reason: keys for reason, keys in dropped.items() if keys},
        decoder=mirror,
        decoder_note=note,
        input_norm=INPUT_NORM,
    )


def mirror_decoder_state(decoder: dict[str, Tensor], num_stages: int) -> tuple[dict[str, Tensor] | None, str]:
    """The reference decoder's tensors under vismae's mirror decoder names.

    The reference expands at the END of each up-stage (``first_patch_expanding`` before the
    first); ours expands at the START of each stage, as timm merges at the start. So up-stage
    k's ``upsample`` becomes our stage k + 1's, and ``first_patch_expanding`` our stage 0's.
    """
    if not decoder:
        return None, "the checkpoint holds no decoder tensors"
    renamed, unknown = {}, []
    for key, value in decoder.items():
        if key.endswith("relative_position_index"):
            continue  # a buffer, recomputed from the window
        new_key = _mirror_name(key, num_stages)
        if new_key is None:
            unknown.append(key)
        else:
            renamed[new_key] = value
    if unknown:
        return None, f"decoder keys outside the reference layout: {sorted(unknown)[:5]}"
    return renamed, "reference decoder renamed onto the mirror decoder"


def _mirror_name(key: str, num_stages: int) -> str | None:
    if key.startswith("first_patch_expanding."):
        return "layers.0.upsample." + key.removeprefix("first_patch_expanding.")
    if key.startswith("norm_up."):
        return "norm." + key.removeprefix("norm_up.")
    if key.startswith("decoder_pred."):
        return "pred." + key.removeprefix("decoder_pred.")
    match = re.match(r"^layers_up\.(\d+)\.(blocks|upsample)\.(.+)$", key)
    if not match or int(match.group(1)) > num_stages - 2:
        return None
    stage, part, rest = int(match.group(1)), match.group(2), match.group(3)
    return f"layers.{stage + 1 if part == 'upsample' else stage}.{part}.{rest}"
