import pytest
import torch

from vismae.models.masking import pixel_mask, window_mask


def units(mask: torch.Tensor, unit: int) -> torch.Tensor:
    """B x h x w -> B x units_h x units_w x unit*unit."""
    batch, height, width = mask.shape
    blocks = mask.reshape(batch, height // unit, unit, width // unit, unit).permute(0, 1, 3, 2, 4)
    return blocks.reshape(batch, height // unit, width // unit, unit * unit)


@pytest.mark.parametrize(
    "grid, unit, ratio, expected_units",
    [((16, 16), 4, 0.75, 12), ((8, 16), 4, 0.5, 4), ((16, 16), 2, 0.3, 19), ((56, 56), 4, 0.75, 147)],
)
def test_exact_ratio_and_whole_units(grid, unit, ratio, expected_units):
    mask = window_mask(6, grid, unit, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (6, *grid) and mask.dtype == torch.bool
    blocks = units(mask, unit)
    # every unit is fully masked or fully visible
    assert torch.equal(blocks.all(-1), blocks.any(-1))
    assert blocks.all(-1).flatten(1).sum(1).tolist() == [expected_units] * 6


def test_samples_differ_and_seed_reproduces():
    first = window_mask(8, (16, 16), 4, 0.75, generator=torch.Generator().manual_seed(3))
    again = window_mask(8, (16, 16), 4, 0.75, generator=torch.Generator().manual_seed(3))
    other = window_mask(8, (16, 16), 4, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(sample.flatten().tolist()) for sample in first}) == 8


def test_every_unit_is_equally_likely():
    mask = window_mask(4000, (8, 8), 4, 0.75, generator=torch.Generator().manual_seed(0))
    frequency = units(mask, 4)[..., 0].float().mean(0)
    assert torch.allclose(frequency, torch.full_like(frequency, 0.75), atol=0.04)


def test_grid_not_divisible_by_unit_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        window_mask(2, (14, 16), 4, 0.75)


def test_ratio_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="ratio"):
        window_mask(2, (16, 16), 4, 1.5)


def test_mask_is_made_on_the_generator_device():
    generator = torch.Generator(device="cpu").manual_seed(0)
    assert window_mask(1, (4, 4), 2, 0.5, generator=generator).device.type == "cpu"


def test_pixel_mask_expands_each_token_to_its_patch():
    tokens = torch.tensor([[[True, False], [False, True]]])
    pixels = pixel_mask(tokens, 4)
    assert pixels.shape == (1, 1, 8, 8)
    assert pixels[0, 0, :4, :4].all() and not pixels[0, 0, :4, 4:].any()
    assert pixels[0, 0, 4:, 4:].all() and not pixels[0, 0, 4:, :4].any()
