"""Sparse Swin encoding for MAE pretraining: the encoder computes on the visible tokens only.

The dense MAE pass (``SwinEncoder.forward_features_masked``, VIS-MAE's) replaces masked tokens
by a mask token and encodes the whole grid. ``SparseSwinEncoder.forward_visible`` runs the same
modules, with the same weights, on the visible tokens alone:

- patch embedding, LayerNorms, MLPs, projections: per token, so on the packed visible tokens;
- window attention (shifted windows included): each visible query attends to the visible keys
  of its window; windows are compacted to their visible tokens and batched by size, with the
  relative position bias gathered for each (query, key) pair and timm's shifted-window region
  mask added, as the dense block does (``sparse_layout``);
- patch merging: on complete 2 x 2 groups of visible tokens.

It equals the dense encoder with attention restricted to visible keys, exactly, provided every
2 x 2 merging group at every stage is wholly visible or wholly masked. That is what "aligned"
means here: the masking unit must cover whole tokens of the last stage, i.e. ``mask_unit_px``
a multiple of patch_size x 2^(stages-1) (32 px for the Swin presets at patch 4; VIS-MAE's
16 px units are refused). Windows need not line up with units: a partly visible window is
compacted to its visible tokens, and the alignment of windows with units only changes how the
windows batch. One more requirement: every stage's map must tile into its windows, because
timm pads a map that does not with zero tokens that the dense attention reads as keys, which a
sparse encoder cannot reproduce.

The encoder's state_dict is the dense encoder's: the exported encoder loads and finetunes like
any other, and the dense methods (``forward_features`` ...) still work on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vismae.models.sparse_layout import Packing, WindowPlan, merge_groups, pack, window_plan
from vismae.models.swin import EncoderConfig, SwinEncoder


def check_sparse_masking(config: EncoderConfig, mask_unit_px: int) -> None:
    """Refuse a masking unit that would split a 2 x 2 patch merging group at some stage."""
    stride = config.total_stride
    if mask_unit_px % stride:
        raise ValueError(
            f"sparse encoding needs mask_unit_px to be a multiple of {stride} px (patch_size {config.patch_size} "
            f"x 2^(stages-1)), so that every 2x2 patch merging group is wholly visible or wholly masked; "
            f"got mask_unit_px {mask_unit_px}"
        )


@dataclass
class VisibleTokens:
    """The encoder's output for the visible tokens: the last stage, after the final norm."""

    features: Tensor  # N x C, sample after sample, each in raster order
    packing: Packing  # where they sit on the last stage's B x h x w grid

    def to_grid(self, fill: Tensor) -> Tensor:
        """B x h x w x C with the visible features in place and ``fill`` (C values) elsewhere."""
        index = self.packing.index
        padded = torch.cat([self.features, self.features.new_zeros(1, self.features.shape[1])])
        rows = padded[torch.where(index >= 0, index, self.packing.count)]
        return torch.where(self.packing.visible.unsqueeze(-1), rows, fill.reshape(-1).to(rows.dtype))


class SparseSwinEncoder(SwinEncoder):
    """``SwinEncoder`` plus ``forward_visible``; same modules, same state_dict keys."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.check_windows()

    def set_input_size(self, *args, **kwargs) -> None:
        super().set_input_size(*args, **kwargs)
        self.check_windows()

    def check_windows(self) -> None:
        for stage_index, stage in enumerate(self.layers):
            for block_index, block in enumerate(stage.blocks):
                resolution, window = tuple(block.input_resolution), tuple(block.window_size)
                if any(r % w for r, w in zip(resolution, window)):
                    raise ValueError(
                        f"sparse encoding: stage {stage_index} block {block_index} has a "
                        f"{resolution[0]}x{resolution[1]} map that does not tile into {window[0]}x{window[1]} "
                        "windows (timm would pad it with zero tokens that the dense attention reads); choose "
                        "window_size and img_size so that every stage's map is a multiple of its window"
                    )

    def forward_visible(self, x: Tensor, token_mask: Tensor) -> VisibleTokens:
        """Encode the tokens that ``token_mask`` (B x h x w, True = masked) leaves visible."""
        tokens = self.patch_embed(x)  # B x h x w x C; a 4 px patch's embedding is cheap
        if token_mask.shape != tokens.shape[:3]:
            expected = tuple(tokens.shape[:3])
            raise ValueError(f"token_mask must be B x h x w = {expected}, got {tuple(token_mask.shape)}")
        visible = ~token_mask.bool()
        packing = pack(visible)
        features = tokens[visible]
        for stage in self.layers:
            if not isinstance(stage.downsample, nn.Identity):  # timm merges at the start of a stage
                rows, packing = merge_groups(packing)
                merging = stage.downsample
                features = merging.reduction(merging.norm(features[rows].flatten(1)))
            plans: dict[tuple, WindowPlan] = {}  # blocks of a stage alternate between two layouts
            for block in stage.blocks:
                key = (tuple(block.window_size), tuple(block.shift_size))
                if key not in plans:
                    region = _region_mask(block, features.device)
                    plans[key] = window_plan(packing, *key, block.attn.relative_position_index, region)
                if stage.grad_checkpointing and torch.is_grad_enabled():
                    features = checkpoint(sparse_block, block, features, packing, plans[key], use_reentrant=False)
                else:
                    features = sparse_block(block, features, packing, plans[key])
        return VisibleTokens(features=self.norm(features), packing=packing)


def sparse_block(block: nn.Module, x: Tensor, packing: Packing, plan: WindowPlan) -> Tensor:
    """timm's ``SwinTransformerBlock.forward`` on packed visible tokens (N x C)."""
    batch_size = packing.index.shape[0]
    x = x + _drop_path(block.drop_path1, _window_attention(block.attn, block.norm1(x), plan), packing.batch, batch_size)
    x = x + _drop_path(block.drop_path2, block.mlp(block.norm2(x)), packing.batch, batch_size)
    return x


def _window_attention(attn: nn.Module, x: Tensor, plan: WindowPlan) -> Tensor:
    """timm's ``WindowAttention`` over the visible tokens of each window."""
    qkv = attn.qkv(x)
    # One zero row at the end stands for every padding slot: gathered, never scattered back.
    qkv = torch.cat([qkv, qkv.new_zeros(1, qkv.shape[1])])
    table = attn.relative_position_bias_table
    dropout = attn.attn_drop.p if attn.training else 0.0
    outputs = []
    for batch in plan.batches:
        windows, length = batch.gather.shape
        q, k, v = qkv[batch.gather].view(windows, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # The relative position bias of every (query, key) pair, plus the visibility and region mask.
        mask = (table[batch.pairs].permute(0, 3, 1, 2) + batch.mask.unsqueeze(1)).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=attn.scale)
        outputs.append(out.transpose(1, 2).reshape(windows * length, -1))
    if not outputs:  # nothing visible in the whole batch: N = 0 rows in, N = 0 rows out
        return attn.proj(x)
    out = torch.cat(outputs)[plan.scatter]
    return attn.proj_drop(attn.proj(out))


def _region_mask(block: nn.Module, device) -> Tensor | None:
    """timm's shifted-window mask (windows x L x L, 0 within a region, -100 across)."""
    if not any(block.shift_size):
        return None
    if getattr(block, "dynamic_mask", False) or block.attn_mask is None:
        return block.get_attn_mask(device=device, dtype=torch.float32)
    return block.attn_mask


def _drop_path(module: nn.Module, x: Tensor, batch: Tensor, batch_size: int) -> Tensor:
    """timm's per-sample drop path on packed rows: one draw per sample, as the dense block makes."""
    if isinstance(module, nn.Identity):
        return x
    if not isinstance(module, DropPath):
        raise TypeError(f"sparse encoding knows timm's DropPath and Identity, not {type(module).__name__}")
    if not module.training or module.drop_prob == 0.0:
        return x
    keep = 1.0 - module.drop_prob
    factor = x.new_empty(batch_size, 1).bernoulli_(keep)
    if keep > 0.0 and module.scale_by_keep:
        factor.div_(keep)
    return x * factor[batch]
