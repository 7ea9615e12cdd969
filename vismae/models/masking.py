"""Window masking (VIS-MAE): square units of patch tokens are masked together, so that a masked
16 px area cannot be filled in from its own neighbouring 4 px patches."""

from __future__ import annotations

import torch


def window_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    unit: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.BoolTensor:
    """B x h x w mask over the patch-token grid, True = masked.

    Each sample masks exactly ``round(ratio * n_units)`` of its ``unit x unit`` token units,
    chosen independently per sample. Drawn on ``device`` in one batched call (the generator,
    if given, must live on that device).
    """
    height, width = grid_size
    if unit < 1 or height % unit or width % unit:
        raise ValueError(f"token grid {height}x{width} is not divisible by the masking unit {unit}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if device is None and generator is not None:
        device = generator.device
    units_h, units_w = height // unit, width // unit
    n_units = units_h * units_w
    n_masked = round(ratio * n_units)

    # The n_masked units with the largest noise are masked: a uniform random subset per sample.
    noise = torch.rand(batch_size, n_units, generator=generator, device=device)
    masked = torch.zeros(batch_size, n_units, dtype=torch.bool, device=device)
    masked.scatter_(1, noise.topk(n_masked, dim=1).indices, True)
    masked = masked.view(batch_size, units_h, units_w)
    return masked.repeat_interleave(unit, dim=1).repeat_interleave(unit, dim=2)


def pixel_mask(token_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B x h x w token mask -> B x 1 x H x W pixel mask with the same truth values."""
    pixels = token_mask.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    return pixels.unsqueeze(1)
