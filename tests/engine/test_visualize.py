"""Reconstruction grids: what each column shows."""

import cv2
import torch

from vismae.engine.visualize import MASK_COLOUR, reconstruction_panels, save_reconstruction_grid


def test_panels_show_input_masked_input_and_pasted_reconstruction():
    images = torch.rand(2, 1, 8, 8)
    reconstruction = torch.rand(2, 1, 8, 8) * 2 - 0.5  # out of range on purpose
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1  # top half masked
    panels = torch.from_numpy(reconstruction_panels(images, reconstruction, mask))
    assert panels.shape == (2, 3, 8, 8, 3)
    gray = images[:, 0, :, :, None].expand(-1, -1, -1, 3)
    assert torch.equal(panels[:, 0], gray)
    assert torch.equal(panels[:, 1, 4:], gray[:, 4:])  # visible: the input
    assert torch.allclose(panels[:, 1, :4], MASK_COLOUR.expand(2, 4, 8, 3))  # masked: the mask colour
    assert torch.equal(panels[:, 2, 4:], gray[:, 4:])  # visible pixels pasted from the input
    assert torch.equal(panels[:, 2, :4, :, 0], reconstruction[:, 0, :4].clamp(0, 1))  # masked: the model's output


def test_the_grid_is_written_as_a_png(tmp_path):
    path = save_reconstruction_grid(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16), torch.ones(3, 1, 16, 16), tmp_path / "g.png")
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[0] > picture.shape[1]  # three rows of three panels, plus titles
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temporary file left behind
