import json

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from vismae.models.masking import pixel_mask, window_mask
from vismae.models.presets import PRESETS, encoder_config
from vismae.models.swin import EncoderConfig, SwinEncoder


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return SwinEncoder(encoder_config("tiny", 64, drop_path_rate=0.0)).eval()


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 64)])
def test_feature_shapes_square_and_rectangular(size):
    encoder = SwinEncoder(encoder_config("tiny", size)).eval()
    images = torch.rand(2, 1, *size)
    maps = encoder.forward_intermediates(images, norm=True, intermediates_only=True)
    for info, feature_map in zip(encoder.feature_info, maps):
        assert feature_map.shape == (2, info["num_chs"], size[0] // info["reduction"], size[1] // info["reduction"])
    features = encoder.forward_features(images)
    assert features.shape == (2, encoder.num_features, size[0] // 32, size[1] // 32)
    assert torch.equal(features, maps[-1])


def test_forward_intermediates_keeps_timms_contract(tiny_encoder):
    # timm's feature API (indices, norm, stop_early, (final, intermediates)) must work unchanged.
    images = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        final, maps = tiny_encoder.forward_intermediates(images)
        assert [m.shape[1:] for m in maps] == [(24, 16, 16), (48, 8, 8), (96, 4, 4), (192, 2, 2)]
        assert final.shape == (1, 2, 2, 192)  # timm's final features: NHWC, normed
        assert torch.equal(final.permute(0, 3, 1, 2), tiny_encoder.forward_features(images))
        assert not torch.equal(maps[-1], tiny_encoder.forward_features(images))  # norm=False by default
        first_two = tiny_encoder.forward_intermediates(images, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(first_two, maps[:2])] == [True, True]
        last = tiny_encoder.forward_intermediates(images, indices=1, norm=True, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], tiny_encoder.forward_features(images))


def test_timm_features_only_wrapper_runs_on_the_encoder():
    from timm.models._features import FeatureGetterNet

    encoder = SwinEncoder(encoder_config("tiny", 64)).eval()
    features = FeatureGetterNet(encoder, out_indices=(1, 3))
    with torch.no_grad():
        maps = features(torch.rand(1, 1, 64, 64))
    assert [m.shape for m in maps] == [(1, 48, 8, 8), (1, 192, 2, 2)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_describe_consistent_encoders(preset):
    config = encoder_config(preset, 224)
    assert config.grid_size == (56, 56)
    assert config.stage_dims[-1] == config.embed_dim * 8
    assert len(config.depths) == len(config.num_heads) == 4


def test_vismae_preset_matches_the_paper():
    encoder = SwinEncoder(encoder_config("vismae", 224))
    assert encoder.num_features == 768
    assert [info["num_chs"] for info in encoder.feature_info] == [96, 192, 384, 768]
    assert [len(stage.blocks) for stage in encoder.layers] == [2, 2, 2, 2]
    assert encoder.patch_embed.proj.in_channels == 1


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="swin-t"):
        encoder_config("swin-xxl", 224)


def test_state_dict_keys_are_timms_plus_mask_token():
    config = encoder_config("tiny", 64)
    ours = SwinEncoder(config)
    timm_model = SwinTransformer(
        img_size=64, in_chans=1, num_classes=0, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4
    )
    assert set(ours.state_dict()) == set(timm_model.state_dict()) | {"mask_token"}
    assert ours.mask_token.shape == (1, 1, 1, 24)


def test_reference_format_options_reach_timm():
    encoder = SwinEncoder(encoder_config("vismae-reference", 224))
    last_block = encoder.layers[-1].blocks[-1]
    assert last_block.shift_size == (3, 3)  # kept in the 7x7 stage
    assert isinstance(encoder.norm, torch.nn.Identity)
    assert encoder.layers[0].blocks[0].norm1.eps == 1e-6
    default = SwinEncoder(encoder_config("vismae", 224))
    assert default.layers[-1].blocks[-1].shift_size == (0, 0)
    assert default.norm.eps == 1e-5


def test_masked_pixels_reach_the_features_only_through_the_mask_token(tiny_encoder):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 64, 64, generator=generator)
    token_mask = window_mask(2, (16, 16), 4, 0.75, generator=generator)
    masked_pixels = pixel_mask(token_mask, 4)
    with torch.no_grad():
        masked = tiny_encoder.forward_features_masked
        reference = masked(images, token_mask)
        inside = masked(torch.where(masked_pixels, torch.rand_like(images), images), token_mask)
        outside = masked(torch.where(masked_pixels, images, torch.rand_like(images)), token_mask)
        tiny_encoder.mask_token.add_(1.0)
        other_token = masked(images, token_mask)
        tiny_encoder.mask_token.sub_(1.0)
        unmasked = masked(images, None)
    assert torch.equal(reference, inside)
    assert not torch.allclose(reference, outside)
    assert not torch.allclose(reference, other_token)
    assert torch.equal(unmasked, tiny_encoder(images))


def test_set_input_size_resizes_in_place_and_keeps_windows():
    encoder = SwinEncoder(encoder_config("tiny", 64)).eval()
    table = encoder.layers[0].blocks[1].attn.relative_position_bias_table.detach().clone()
    encoder.set_input_size((128, 96))
    assert encoder.config.img_size == (128, 96) and encoder.config.window_size == 4
    assert encoder.layers[0].blocks[1].window_size == (4, 4)
    assert encoder(torch.rand(1, 1, 128, 96)).shape == (1, 192, 4, 3)
    assert torch.equal(encoder.layers[0].blocks[1].attn.relative_position_bias_table, table)
    with pytest.raises(ValueError, match="divisible"):
        encoder.set_input_size((100, 96))
    assert encoder.config.img_size == (128, 96)


def test_token_mask_of_wrong_shape_is_rejected(tiny_encoder):
    with pytest.raises(ValueError, match="token_mask"):
        tiny_encoder.forward_features_masked(torch.rand(1, 1, 64, 64), torch.zeros(1, 8, 8, dtype=torch.bool))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    encoder = SwinEncoder(encoder_config("tiny", 64, drop_path_rate=0.0))
    images = torch.rand(2, 1, 64, 64)

    def gradient():
        encoder.zero_grad()
        encoder(images).square().mean().backward()
        return encoder.patch_embed.proj.weight.grad.clone()

    plain = gradient()
    encoder.set_grad_checkpointing(True)
    assert torch.allclose(plain, gradient(), atol=1e-6)


def test_config_round_trips_through_json():
    config = encoder_config("vismae-reference", (512, 384), drop_path_rate=0.2)
    restored = EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.img_size == (512, 384) and restored.depths == (2, 2, 2, 2)


def test_config_rejects_unknown_keys_and_bad_shapes():
    with pytest.raises(ValueError, match="windw_size"):
        EncoderConfig.from_dict({"windw_size": 7})
    with pytest.raises(ValueError, match="divisible by patch_size"):
        EncoderConfig(img_size=(224, 200))
    with pytest.raises(ValueError, match="equal length"):
        EncoderConfig(depths=(2, 2), num_heads=(3, 6, 12))
    with pytest.raises(ValueError, match="num_heads"):
        EncoderConfig(embed_dim=100, num_heads=(3, 6, 12, 24))


def test_no_weight_decay_names_exist(tiny_encoder):
    names = tiny_encoder.no_weight_decay()
    assert "mask_token" in names
    assert names <= dict(tiny_encoder.named_parameters()).keys()
