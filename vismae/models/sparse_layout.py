"""Index bookkeeping for encoding only the visible tokens of a masked image (sparse MAE).

The visible tokens of a batch are packed into one N x C matrix: sample after sample, each in
raster order. Everything else is integer indices computed once per stage from the visibility
grid, so that the network itself only gathers rows:

- ``pack``: where each grid position's token sits in the packed matrix (-1 where masked).
- ``merge_groups``: the four packed rows that one 2 x 2 patch merging reads, in timm's order.
- ``window_plan``: the (shifted) attention windows that hold a visible token, each compacted to
  its visible tokens, batched with windows of similar counts, padded to the batch's largest
  count; with each (query, key) pair's relative position index and an additive mask that lets
  a query see only the visible keys of its window (and of its region, for shifted windows).

Compacting matters because masking units and windows rarely line up (7-token windows, 8-token
units at 224 px): most windows are partly visible, and padding them to full windows would cost
about as much attention work as the dense encoder. Compacted, the attention product shrinks
with the visible share like the projections and MLPs do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packing:
    """Where the visible tokens of a B x h x w grid sit in the packed N x C matrix."""

    index: Tensor  # B x h x w long: packed row of each position, -1 where masked
    batch: Tensor  # N long: the sample each packed row belongs to

    @property
    def count(self) -> int:
        return self.batch.shape[0]

    @property
    def visible(self) -> Tensor:
        return self.index >= 0


def pack(visible: Tensor) -> Packing:
    """Packing of the True positions of ``visible`` (B x h x w bool), sample-major raster order,
    the order of ``tensor[visible]``."""
    batch_size, height, width = visible.shape
    flat = visible.reshape(-1)
    index = torch.cumsum(flat, 0) - 1
    index = torch.where(flat, index, torch.full_like(index, -1)).view(batch_size, height, width)
    positions = flat.nonzero().squeeze(1)
    return Packing(index=index, batch=torch.div(positions, height * width, rounding_mode="floor"))


def merge_groups(packing: Packing) -> tuple[Tensor, Packing]:
    """(N' x 4 packed rows, packing of the half-resolution grid) for 2 x 2 patch merging.

    The four rows of each group are in timm's PatchMerging channel order: (0, 0), (1, 0),
    (0, 1), (1, 1) as (row, column) offsets. A group must be wholly visible or wholly masked:
    merging a visible token with a masked one has no sparse equivalent.
    """
    index = packing.index
    batch_size, height, width = index.shape
    if height % 2 or width % 2:
        raise ValueError(f"sparse patch merging needs an even token grid, got {height}x{width}")
    # The same reshape and permute timm applies to the features, applied to the row numbers.
    groups = index.reshape(batch_size, height // 2, 2, width // 2, 2).permute(0, 1, 3, 4, 2).flatten(3)
    present = groups >= 0
    merged_visible = present.all(-1)
    if bool((present.any(-1) & ~merged_visible).any()):
        raise ValueError(
            f"a 2x2 patch merging group of the {height}x{width} token grid is partly masked: the sparse "
            "encoder needs masking units that cover whole tokens of every stage"
        )
    return groups[merged_visible], pack(merged_visible)


@dataclass
class WindowBatch:
    """Windows of similar visible counts, each compacted to its visible tokens and padded to
    the batch's largest count L."""

    gather: Tensor  # W x L long: packed row of each token; N (a zero padding row) for padding
    pairs: Tensor  # W x L x L long: relative position index of each (query, key) pair
    mask: Tensor  # W x L x L float: 0 where a query may attend to a key, -inf or timm's -100 elsewhere


@dataclass
class WindowPlan:
    """The attention windows of one stage layout (window size, shift) that hold a visible token."""

    batches: list[WindowBatch]
    scatter: Tensor  # N long: where each packed row's output sits in the batches' outputs, flattened and joined

    @property
    def windows(self) -> int:
        return sum(batch.gather.shape[0] for batch in self.batches)


def window_plan(
    packing: Packing,
    window_size: tuple[int, int],
    shift_size: tuple[int, int],
    relative_position_index: Tensor,
    region_mask: Tensor | None = None,
) -> WindowPlan:
    """Windows as timm's Swin block forms them: roll by -shift, then cut into window_size tiles
    in raster order. ``relative_position_index`` (L x L) is timm's table index of each slot
    pair; ``region_mask`` (windows-per-image x L x L, 0 / negative) is timm's shifted-window
    mask, gathered unchanged so that the sparse attention equals the dense one.

    Each window keeps only its visible tokens, in slot order; windows are batched by visible
    count (bounds at powers of two), so that a mostly masked window does not pay for a full
    one, and windows with nothing visible are dropped. A padding query attends to itself only,
    which keeps every softmax row finite (its output is never read).
    """
    index = packing.index
    device = index.device
    batch_size, height, width = index.shape
    win_h, win_w = window_size
    if height % win_h or width % win_w:
        raise ValueError(f"a {height}x{width} token grid does not tile into {win_h}x{win_w} windows")
    if any(shift_size):
        index = torch.roll(index, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    area = win_h * win_w
    windows_per_image = (height // win_h) * (width // win_w)
    slots = index.reshape(batch_size, height // win_h, win_h, width // win_w, win_w)
    slots = slots.permute(0, 1, 3, 2, 4).reshape(batch_size * windows_per_image, area)
    counts = (slots >= 0).sum(1)
    occupied = counts > 0
    window_in_image = torch.arange(slots.shape[0], device=device)[occupied] % windows_per_image
    slots, counts = slots[occupied], counts[occupied]
    # Slot positions with the visible ones first, each group in slot order.
    order = torch.sort((slots < 0).to(torch.uint8), dim=1, stable=True).indices
    sizes = torch.ceil(torch.log2(counts.float())).long()  # batch k holds counts in (2^(k-1), 2^k]

    region = None if region_mask is None else region_mask.to(device=device, dtype=torch.float32)
    batches, outputs, offset = [], [], 0
    for size in sorted(set(sizes.tolist())):
        chosen = (sizes == size).nonzero().squeeze(1)
        length = int(counts[chosen].max())
        position = order[chosen, :length]  # W x L slot positions
        valid = torch.arange(length, device=device) < counts[chosen].unsqueeze(1)
        rows = slots[chosen].gather(1, position)
        gather = torch.where(valid, rows, torch.full_like(rows, packing.count))
        query, key = position.unsqueeze(2), position.unsqueeze(1)
        pairs = relative_position_index.to(device)[query, key]
        blocked = ~(valid.unsqueeze(1) | torch.eye(length, dtype=torch.bool, device=device))
        mask = torch.zeros(blocked.shape, dtype=torch.float32, device=device).masked_fill(blocked, float("-inf"))
        if region is not None:
            mask = mask + region[window_in_image[chosen].view(-1, 1, 1), query, key]
        batches.append(WindowBatch(gather=gather, pairs=pairs, mask=mask))
        flat = valid.reshape(-1).nonzero().squeeze(1)
        outputs.append((rows.reshape(-1)[flat], flat + offset))
        offset += gather.numel()

    scatter = torch.empty(packing.count, dtype=torch.long, device=device)
    for rows, flat in outputs:
        scatter[rows] = flat
    return WindowPlan(batches=batches, scatter=scatter)
