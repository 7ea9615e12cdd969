import json

import pytest
import torch

from vismae.models.mae import MAEConfig, SwinMAE, build_mae, patch_mean_std
from vismae.models.presets import encoder_config


def tiny_mae(decoder="mirror", size=64, **overrides) -> SwinMAE:
    torch.manual_seed(0)
    return build_mae("tiny", size, decoder=decoder, drop_path_rate=0.0, **overrides)


@pytest.fixture
def images():
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("decoder", ["mirror", "light"])
@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_both_decoders_reconstruct_in_image_layout(decoder, size):
    model = tiny_mae(decoder, size)
    output = model(torch.rand(2, 1, *size))
    assert output.reconstruction.shape == (2, 1, *size)
    assert output.pixel_mask.shape == (2, 1, *size)
    assert output.token_mask.shape == (2, size[0] // 4, size[1] // 4)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.pixel_mask.mean().item() == pytest.approx(0.75)


def test_loss_is_the_mean_squared_error_over_masked_pixels_only(images):
    model = tiny_mae()
    token_mask = model.draw_mask(2, generator=torch.Generator().manual_seed(1))
    prediction = torch.rand_like(images)
    output = model.reconstruction_loss(images, prediction, token_mask)
    masked = output.pixel_mask.bool()
    assert output.loss.item() == pytest.approx((prediction - images)[masked].square().mean().item(), rel=1e-6)

    noise = torch.rand_like(images)
    visible_prediction_changed = torch.where(masked, prediction, noise)
    visible_target_changed = torch.where(masked, images, noise)
    assert model.reconstruction_loss(images, visible_prediction_changed, token_mask).loss == output.loss
    assert model.reconstruction_loss(visible_target_changed, prediction, token_mask).loss == output.loss
    masked_prediction_changed = torch.where(masked, noise, prediction)
    assert model.reconstruction_loss(images, masked_prediction_changed, token_mask).loss != output.loss


def test_norm_pix_loss_targets_each_patch_normalized(images):
    model = tiny_mae(norm_pix_loss=True)
    token_mask = model.draw_mask(2, generator=torch.Generator().manual_seed(1))
    patch = images[0, 0, 4:8, 8:12]
    expected = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
    mean, std = patch_mean_std(images, 4)
    assert torch.allclose(((images - mean) / std)[0, 0, 4:8, 8:12], expected, atol=1e-5)

    perfect = model.reconstruction_loss(images, (images - mean) / std, token_mask)
    assert perfect.loss.item() < 1e-10
    assert torch.allclose(perfect.reconstruction, images, atol=1e-5)  # mapped back to image space
    assert model.reconstruction_loss(images, images, token_mask).loss.item() > 0.1


def test_gradient_reaches_the_mask_token_and_every_decoder_parameter(images):
    model = tiny_mae()
    model(images, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert model.encoder.mask_token.grad.abs().sum() > 0
    for name, parameter in model.decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_same_generator_seed_gives_same_mask_and_loss(images):
    model = tiny_mae().eval()
    first = model(images, generator=torch.Generator().manual_seed(5))
    second = model(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.token_mask, second.token_mask)
    assert first.loss == second.loss


def test_a_few_optimizer_steps_reduce_the_loss(images):
    model = tiny_mae()
    token_mask = model.draw_mask(2, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(images, token_mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_grad_checkpointing_keeps_the_loss(images):
    model = tiny_mae().eval()
    token_mask = model.draw_mask(2, generator=torch.Generator().manual_seed(0))
    plain = model(images, token_mask).loss
    model.set_grad_checkpointing(True)
    assert torch.allclose(model(images, token_mask).loss, plain)


def test_no_weight_decay_covers_encoder_and_decoder_tables():
    model = tiny_mae()
    names = model.no_weight_decay()
    assert "encoder.mask_token" in names
    assert any(name.startswith("decoder.") for name in names)
    assert names <= dict(model.named_parameters()).keys()


def test_config_round_trips_through_json():
    config = MAEConfig(encoder_config("tiny", (64, 128)), decoder="light", mask_ratio=0.6, norm_pix_loss=True)
    assert MAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_build_mae_sends_overrides_to_the_right_config():
    model = build_mae("tiny", 64, decoder="light", mask_ratio=0.5, window_size=2)
    assert model.config.mask_ratio == 0.5 and model.config.encoder.window_size == 2
    assert model.config.decoder == "light"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"decoder": "unet"}, "decoder"),
        ({"mask_unit_px": 6}, "multiple of the patch size"),
        ({"mask_unit_px": 64}, "masking unit"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
    ],
)
def test_config_rejects_bad_values(change, message):
    encoder = encoder_config("tiny", (64, 96))
    with pytest.raises(ValueError, match=message):
        MAEConfig(encoder, **change)


def test_config_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="mask_ration"):
        MAEConfig.from_dict({"encoder": {}, "mask_ration": 0.5})
    with pytest.raises(ValueError, match="encoder"):
        MAEConfig.from_dict({"decoder": "mirror"})
