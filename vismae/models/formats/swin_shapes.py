"""A Swin encoder's architecture read from its tensors' shapes.

Works on both key layouts in circulation: the original one (Microsoft, VIS-MAE), where
``layers.{i}.downsample`` closes stage i, and timm's, where it opens stage i + 1. Only block
tensors are read, and those are named the same in both.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")

# The one key every Swin state dict has; used to tell a Swin from anything else.
PATCH_WEIGHT = "patch_embed.proj.weight"


def looks_like_swin(state: dict[str, Tensor]) -> bool:
    return PATCH_WEIGHT in state and any(_BLOCK.match(key) for key in state)


def original_layout(state: dict[str, Tensor]) -> bool:
    """True when patch merging closes each stage (stage 0 has one), as in Microsoft's code."""
    return "layers.0.downsample.reduction.weight" in state


def infer_architecture(state: dict[str, Tensor], where: str) -> dict:
    """EncoderConfig fields that the shapes fix: patch size, widths, depths, heads, window,
    MLP ratio, final norm. ``where`` names the file in error messages."""
    if PATCH_WEIGHT not in state:
        raise ValueError(f"{where}: no {PATCH_WEIGHT}; not a Swin encoder (keys start {sorted(state)[:5]})")
    patch = state[PATCH_WEIGHT]
    if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
        raise ValueError(f"{where}: {PATCH_WEIGHT} has shape {tuple(patch.shape)}; expected a square conv kernel")
    embed_dim = patch.shape[0]

    depths = _stage_depths(state, where)
    num_heads = []
    for stage in range(len(depths)):
        width = state[f"layers.{stage}.blocks.0.norm1.weight"].shape[0]
        if width != embed_dim * 2**stage:
            raise ValueError(
                f"{where}: stage {stage} is {width} wide; a Swin doubles the embed dim {embed_dim} per stage"
            )
        num_heads.append(state[_table(stage)].shape[1])

    fc1 = state["layers.0.blocks.0.mlp.fc1.weight"]
    return dict(
        patch_size=patch.shape[-1],
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        # Stage 0's table: later stages may have shrunk their window to a small map.
        window_size=_window_from_table(state[_table(0)], where),
        mlp_ratio=fc1.shape[0] / embed_dim,
        final_norm="norm.weight" in state,
    )


def source_in_chans(state: dict[str, Tensor]) -> int:
    return state[PATCH_WEIGHT].shape[1]


def _stage_depths(state: dict[str, Tensor], where: str) -> list[int]:
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _BLOCK.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise ValueError(f"{where}: no layers.<stage>.blocks.<block> tensors; not a Swin encoder")
    stages = sorted(blocks)
    if stages != list(range(len(stages))):
        raise ValueError(f"{where}: stages {stages} are not numbered 0..{len(stages) - 1}")
    depths = []
    for stage in stages:
        indices = sorted(blocks[stage])
        if indices != list(range(len(indices))):
            raise ValueError(f"{where}: stage {stage} has blocks {indices}; expected 0..{len(indices) - 1}")
        depths.append(len(indices))
    for stage in stages:
        for name in ("norm1.weight", "mlp.fc1.weight"):
            if f"layers.{stage}.blocks.0.{name}" not in state:
                raise ValueError(f"{where}: layers.{stage}.blocks.0.{name} is missing")
        if _table(stage) not in state:
            raise ValueError(f"{where}: {_table(stage)} is missing")
    return depths


def _table(stage: int) -> str:
    return f"layers.{stage}.blocks.0.attn.relative_position_bias_table"


def _window_from_table(table: Tensor, where: str) -> int:
    """A (2w - 1)^2 x heads table belongs to a w x w window."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(
            f"{where}: relative_position_bias_table has {table.shape[0]} rows; "
            "expected (2w - 1)^2 for a square window w"
        )
    return (side + 1) // 2
