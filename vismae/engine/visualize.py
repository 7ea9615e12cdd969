"""Reconstruction grids: one row per image, columns input | masked input | reconstruction
(the model's output where masked, the input where visible, as the MAE papers show it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vismae.io import atomic_path

# Masked areas are drawn in a colour: any grey could be mistaken for tissue or background.
MASK_COLOUR = torch.tensor([0.2, 0.45, 0.75])


def reconstruction_panels(images: torch.Tensor, reconstruction: torch.Tensor, pixel_mask: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W x RGB array in [0, 1]: input, masked input, reconstruction with the visible
    pixels pasted from the input."""
    images, reconstruction, mask = (t.detach().float().cpu()[:, 0, :, :, None] for t in (images, reconstruction, pixel_mask))
    gray = images.expand(-1, -1, -1, 3)
    masked_input = gray * (1 - mask) + MASK_COLOUR * mask
    pasted = (images * (1 - mask) + reconstruction.clamp(0, 1) * mask).expand(-1, -1, -1, 3)
    return torch.stack([gray, masked_input, pasted], dim=1).numpy()


def save_reconstruction_grid(
    images: torch.Tensor, reconstruction: torch.Tensor, pixel_mask: torch.Tensor, path: str | os.PathLike, title: str = ""
) -> Path:
    """Write the grid as a PNG (atomically) and return its path."""
    panels = reconstruction_panels(images, reconstruction, pixel_mask)
    rows = panels.shape[0]
    height, width = panels.shape[2:4]
    panel_inches = 2.0
    figure = Figure(figsize=(3 * panel_inches * width / height, rows * panel_inches + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        for column, name in enumerate(("input", "masked input", "reconstruction")):
            axis = axes[row, column]
            axis.imshow(panels[row, column], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path
