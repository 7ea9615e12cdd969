"""The task heads: shapes at any size, skip connections from every stage, parameter groups for
layer-wise lr decay."""

import pytest
import torch
from timm.optim import param_groups_layer_decay

from vismae.engine.optim import no_weight_decay_names
from vismae.models.decoders import MirrorDecoder
from vismae.models.heads import ClassificationHead, SwinUNetDecoder, build_segmentation_decoder, build_task_model
from vismae.models.presets import encoder_config
from vismae.models.swin import SwinEncoder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two OpenMP threads
    waiting for each other make every small operation many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_encoder(size=64) -> SwinEncoder:
    torch.manual_seed(0)
    return SwinEncoder(encoder_config("tiny", size, drop_path_rate=0.0))


@pytest.mark.parametrize("size", [64, (64, 96)])
def test_classifier_gives_two_logits_per_image(size):
    model = build_task_model(tiny_encoder(size), "classify")
    height, width = (size, size) if isinstance(size, int) else size
    assert model(torch.rand(3, 1, height, width)).shape == (3, 2)


def test_concatenated_pooling_widens_the_linear_layer():
    head = ClassificationHead(in_features=16, pool="catavgmax")
    assert head.fc.in_features == 32
    assert head(torch.rand(2, 16, 4, 4)).shape == (2, 2)
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(16, pool="median")


@pytest.mark.parametrize("decoder", ["swin", "conv"])
@pytest.mark.parametrize("size", [64, (64, 96)])
def test_segmenter_gives_two_class_logits_at_the_input_size(decoder, size):
    model = build_task_model(tiny_encoder(size), "segment", decoder=decoder)
    height, width = (size, size) if isinstance(size, int) else size
    assert model(torch.rand(2, 1, height, width)).shape == (2, 2, height, width)


@pytest.mark.parametrize("decoder", ["swin", "conv"])
def test_decoder_reads_a_skip_connection_from_every_encoder_stage(decoder):
    encoder = tiny_encoder()
    head = build_segmentation_decoder(decoder, encoder.config).eval()
    with torch.no_grad():
        maps = encoder.forward_intermediates(torch.rand(1, 1, 64, 64), norm=True, intermediates_only=True)
        reference = head(maps)
        for stage in range(len(maps)):
            changed = [m + 1.0 if i == stage else m for i, m in enumerate(maps)]
            assert not torch.allclose(head(changed), reference), f"stage {stage} does not reach the output"


def test_swin_decoder_keeps_the_mae_decoder_layout():
    # Same module names and shapes as the MAE's mirror decoder, so its pretrained up path fits.
    config = encoder_config("tiny", 64)
    mirror = {k: v.shape for k, v in MirrorDecoder(config).state_dict().items() if k.startswith("layers.")}
    unet = {k: v.shape for k, v in SwinUNetDecoder(config).state_dict().items()}
    assert mirror and all(unet.get(key) == shape for key, shape in mirror.items())


def test_layer_decay_lowers_the_rate_with_depth_and_keeps_the_head_at_full_rate():
    model = build_task_model(tiny_encoder(), "classify")
    groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=no_weight_decay_names(model), layer_decay=0.5)
    scale = {}
    for group in groups:
        for param in group["params"]:
            scale[id(param)] = (group["lr_scale"], group["weight_decay"])
    named = dict(model.named_parameters())
    patch, first, last = (scale[id(named[name])][0] for name in (
        "encoder.patch_embed.proj.weight",
        "encoder.layers.0.blocks.0.attn.qkv.weight",
        "encoder.layers.3.blocks.1.attn.qkv.weight",
    ))  # fmt: skip
    assert patch < first < last < 1.0
    assert scale[id(named["head.fc.weight"])] == (1.0, 0.05)
    table = "encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    assert scale[id(named[table])][1] == 0.0  # exempt from weight decay under its full name
    assert model.no_weight_decay() <= set(named)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task"):
        build_task_model(tiny_encoder(), "detect")
