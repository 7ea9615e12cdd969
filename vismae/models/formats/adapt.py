"""Fitting a checkpoint's tensors into a model. timm's own Swin adapter does the layout work
(patch merging moved to the start of the next stage, relative-position tables resized to the
window, patch kernels resampled); this adds the input-channel fold and a key-by-key comparison
that names every tensor that does not fit."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models import adapt_input_conv
from timm.models.swin_transformer import checkpoint_filter_fn
from torch import Tensor, nn

from vismae.models.formats.swin_shapes import PATCH_WEIGHT, original_layout

# Recomputed from the window by the model itself; older checkpoints saved them anyway.
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
TABLE = "relative_position_bias_table"
PATCH_BIAS = "patch_embed.proj.bias"


@dataclass
class Fit:
    state: dict[str, Tensor]  # tensors that fit the model, under its names and shapes
    notes: list[str] = field(default_factory=list)  # how tensors were changed on the way
    buffers: list[str] = field(default_factory=list)  # saved buffers skipped (recomputed)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"


def fit_encoder(tensors: dict[str, Tensor], encoder: nn.Module, input_norm=None) -> Fit:
    """Swin encoder tensors in either key layout -> ``encoder``'s names, window and channels.

    ``input_norm`` ((mean per channel), (std per channel)) is folded into the patch embedding
    first, so that the encoder takes raw [0, 1] pixels where the source took normalized ones.
    """
    tensors, buffers = _without_buffers(tensors)
    notes = []
    modules = dict(encoder.named_modules())
    # timm's adapter looks up the module of every bias table; a table for a block this model
    # lacks is kept aside and reported as unexpected.
    strays = {key: value for key, value in tensors.items() if key.endswith(TABLE) and _owner(key) not in modules}
    tensors = {key: value for key, value in tensors.items() if key not in strays}
    if original_layout(tensors):
        moved = sum(".downsample." in key for key in tensors)
        notes.append(f"patch merging moved from the end of stage i to the start of stage i+1 ({moved} tensors renamed)")

    source_patch = tensors.get(PATCH_WEIGHT)
    if source_patch is not None and input_norm is not None:
        tensors = {**tensors, **_fold_input_norm(tensors, input_norm, notes)}
    fitted = checkpoint_filter_fn(tensors, encoder)
    notes += _table_notes(tensors, fitted)
    if PATCH_WEIGHT in fitted:
        fitted[PATCH_WEIGHT] = _fit_patch_channels(fitted[PATCH_WEIGHT], encoder.patch_embed.proj, notes)
        if fitted[PATCH_WEIGHT].shape[-1] != source_patch.shape[-1]:
            notes.append(f"patch kernel resampled from {source_patch.shape[-1]} to {fitted[PATCH_WEIGHT].shape[-1]} px")

    fit = compare(fitted, encoder)
    fit.unexpected += sorted(strays)
    fit.notes, fit.buffers = notes, buffers
    return fit


def fit_decoder(tensors: dict[str, Tensor], decoder: nn.Module, source_in_chans: int, target_in_chans: int) -> Fit:
    """Decoder tensors already under vismae's names -> ``decoder``'s windows and channels."""
    tensors, buffers = _without_buffers(tensors)
    notes = []
    modules = dict(decoder.named_modules())
    target = decoder.state_dict()
    source_tables = {key: value for key, value in tensors.items() if key.endswith(TABLE)}
    for key, value in source_tables.items():
        attention = modules.get(_owner(key))
        if key in target and value.shape != target[key].shape and attention is not None:
            tensors[key] = resize_rel_pos_bias_table(value, attention.window_size, target[key].shape)
    notes += _table_notes(source_tables, tensors)
    pred_is_linear = "pred.bias" in tensors and tensors.get("pred.weight", torch.empty(0)).ndim == 2
    if source_in_chans != target_in_chans and pred_is_linear:
        tensors["pred.weight"] = _fold_pred(tensors["pred.weight"], source_in_chans, target_in_chans)
        tensors["pred.bias"] = _fold_pred(tensors["pred.bias"], source_in_chans, target_in_chans)
        notes.append(f"decoder prediction averaged over {source_in_chans} channels into {target_in_chans}")
    fit = compare(tensors, decoder)
    fit.notes, fit.buffers = notes, buffers
    return fit


def compare(tensors: dict[str, Tensor], module: nn.Module) -> Fit:
    target = module.state_dict()
    fit = Fit(state={})
    for key, value in tensors.items():
        if key not in target:
            fit.unexpected.append(key)
        elif value.shape != target[key].shape:
            fit.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
        else:
            fit.state[key] = value
    fit.missing = [key for key in target if key not in tensors]
    fit.unexpected.sort()
    return fit


def _without_buffers(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    buffers = sorted(key for key in tensors if key.endswith(BUFFER_SUFFIXES))
    return {key: value for key, value in tensors.items() if not key.endswith(BUFFER_SUFFIXES)}, buffers


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _fit_patch_channels(weight: Tensor, conv: nn.Conv2d, notes: list[str]) -> Tensor:
    """timm's input adapter: 3 -> 1 channel sums the kernels, which is exact for a gray image
    fed as three equal channels; 1 -> 3 repeats and rescales them."""
    source, target = weight.shape[1], conv.in_channels
    if source == target:
        return weight
    how = "summed into 1" if target == 1 else f"spread over {target}"
    notes.append(f"{PATCH_WEIGHT}: {source} input channels {how}")
    return adapt_input_conv(target, weight, base_chans=source)


def _fold_input_norm(tensors: dict[str, Tensor], input_norm, notes: list[str]) -> dict[str, Tensor]:
    """conv((x - mean) / std) == conv'(x) with w' = w / std and b' = b - sum(w * mean / std):
    exact for a patch embedding, whose kernel equals its stride (no padding)."""
    weight, bias = tensors[PATCH_WEIGHT], tensors.get(PATCH_BIAS)
    mean, std = (torch.tensor(values, dtype=weight.dtype) for values in input_norm)
    if len(mean) != weight.shape[1]:
        notes.append(f"input normalization not folded: it has {len(mean)} channels, the patch kernel {weight.shape[1]}")
        return {}
    scaled = weight / std.view(1, -1, 1, 1)
    shift = (scaled * mean.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    bias = (bias if bias is not None else torch.zeros(weight.shape[0])) - shift
    mean_values, std_values = (list(values) for values in input_norm)
    notes.append(f"input normalization mean {mean_values} std {std_values} folded into the patch embedding")
    return {PATCH_WEIGHT: scaled, PATCH_BIAS: bias}


def _fold_pred(tensor: Tensor, source_in_chans: int, target_in_chans: int) -> Tensor:
    """Per-pixel outputs are ordered (row, column, channel): average the channels, then repeat."""
    rest = tensor.shape[1:]
    per_pixel = tensor.reshape(-1, source_in_chans, *rest).mean(dim=1, keepdim=True)
    return per_pixel.expand(-1, target_in_chans, *rest).reshape(-1, *rest).contiguous()


def _table_notes(before: dict[str, Tensor], after: dict[str, Tensor]) -> list[str]:
    changes: dict[tuple, int] = {}
    for key, value in after.items():
        if key.endswith(TABLE) and key in before and before[key].shape != value.shape:
            change = (before[key].shape[0], value.shape[0])
            changes[change] = changes.get(change, 0) + 1
    return [
        f"{count} relative position tables resized from {source} to {target} positions (window changed)"
        for (source, target), count in sorted(changes.items())
    ]
