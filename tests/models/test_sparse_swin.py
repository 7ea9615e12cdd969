"""The sparse encoder equals the dense encoder with attention restricted to visible tokens.

The reference runs the dense encoder's own modules on the whole grid, stage by stage, block by
block, with timm's window partition and shifted-window mask, and the attention written out by
hand (no scaled_dot_product_attention) with masked keys pushed to -1e9: masked queries compute
garbage that no visible token ever reads."""

import json
import math

import pytest
import torch
from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse

from vismae.engine.optim import build_optimizer, no_weight_decay_names
from vismae.models.mae import build_mae
from vismae.models.presets import encoder_config
from vismae.models.sparse_layout import pack, window_plan
from vismae.models.sparse_swin import SparseSwinEncoder, check_sparse_masking
from vismae.models.swin import SwinEncoder

# name -> (encoder overrides at 64 px, masking unit in tokens)
CONFIGS = {
    # 4 stages (maps 16, 8, 4, 2): units of 8 tokens; a unit is 2x2 windows at stage 0 and one
    # window at stage 1; the last two stages have a single unshifted window.
    "tiny": (dict(), 8),
    # 3 stages, timm's always_partition: the shift is kept in the last 4x4 map (one shifted window).
    "three-stages-always-partition": (dict(depths=(2, 2, 2), num_heads=(1, 2, 4), always_partition=True), 4),
    # 2 stages, units of 2 tokens in windows of 4: most windows are partly visible.
    "units-smaller-than-windows": (dict(depths=(2, 2), num_heads=(2, 4)), 2),
}


def build(name, encoder_class, seed=0, **extra):
    overrides, _ = CONFIGS[name]
    torch.manual_seed(seed)
    return encoder_class(encoder_config("tiny", 64, **{"drop_path_rate": 0.0, **overrides, **extra}))


def unit_mask(units: torch.Tensor, unit: int) -> torch.Tensor:
    """B x U x U bool units -> B x h x w token mask (True = masked)."""
    return units.repeat_interleave(unit, 1).repeat_interleave(unit, 2)


def random_mask(name, batch, seed, ratio=0.6):
    _, unit = CONFIGS[name]
    side = 16 // unit
    generator = torch.Generator().manual_seed(seed)
    units = torch.rand(batch, side, side, generator=generator) < ratio
    units[:, 0, 0] = False  # at least one visible unit per sample
    return unit_mask(units, unit)


def reference_block(block, x, visible):
    """timm's SwinTransformerBlock.forward with masked keys excluded from the attention."""
    batch, height, width, channels = x.shape
    attn = block.attn
    shift = block.shift_size
    y = block.norm1(x)
    keys = visible
    if any(shift):
        y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        keys = torch.roll(keys, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(y, block.window_size).reshape(-1, block.window_area, channels)
    key_visible = window_partition(keys.unsqueeze(-1).float(), block.window_size).reshape(-1, 1, 1, block.window_area)
    count, area, _ = windows.shape
    q, k, v = attn.qkv(windows).reshape(count, area, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    logits = logits + table.view(area, area, -1).permute(2, 0, 1)
    if block.attn_mask is not None:
        per_image = block.attn_mask.shape[0]
        logits = (logits.view(-1, per_image, attn.num_heads, area, area) + block.attn_mask.unsqueeze(1)).view_as(logits)
    logits = logits.masked_fill(key_visible == 0, -1e9)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(count, area, -1)
    out = attn.proj(out).view(-1, *block.window_size, channels)
    out = window_reverse(out, block.window_size, height, width)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    x = x + block.drop_path1(out)
    x = x.reshape(batch, -1, channels)
    x = x + block.drop_path2(block.mlp(block.norm2(x)))
    return x.reshape(batch, height, width, channels)


def reference_forward(encoder, images, token_mask):
    """(last-stage visible features N x C in raster order, last-stage visibility)."""
    visible = ~token_mask
    x = encoder.patch_embed(images)
    for stage in encoder.layers:
        if not isinstance(stage.downsample, torch.nn.Identity):
            x = stage.downsample(x)
            visible = visible[:, ::2, ::2]
        for block in stage.blocks:
            x = reference_block(block, x, visible)
    return encoder.norm(x)[visible], visible


def parameter_grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def assert_close_to_scale(actual, expected, name, tolerance=1e-5):
    """Agreement to ``tolerance`` of the tensor's own scale: a gradient summed over thousands of
    float32 terms (up to ~200 here) carries rounding far above 1e-5 in absolute terms."""
    scale = max(expected.abs().max().item(), 1.0)
    error = (actual - expected).abs().max().item()
    assert error <= tolerance * scale, f"{name}: max error {error:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sparse_equals_the_restricted_dense_reference_with_gradients(name):
    encoder = build(name, SparseSwinEncoder)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    token_mask = random_mask(name, 3, seed=2)

    sparse = encoder.forward_visible(images, token_mask)
    weights = torch.randn(sparse.features.shape, generator=torch.Generator().manual_seed(3))
    (sparse.features * weights).sum().backward()
    sparse_grads = parameter_grads(encoder)
    encoder.zero_grad(set_to_none=True)

    expected, visible = reference_forward(encoder, images, token_mask)
    (expected * weights).sum().backward()
    reference_grads = parameter_grads(encoder)

    assert torch.equal(sparse.packing.visible, visible)
    torch.testing.assert_close(sparse.features, expected, rtol=1e-5, atol=1e-5)
    assert sparse_grads.keys() == reference_grads.keys()
    assert "mask_token" not in sparse_grads  # the sparse path never uses it
    for key, grad in reference_grads.items():
        assert_close_to_scale(sparse_grads[key], grad, key)
    assert any(g.abs().sum() > 0 for k, g in sparse_grads.items() if "relative_position_bias_table" in k)


def test_drop_path_draws_match_the_dense_blocks():
    # One draw per sample and block, in the dense order: the same seed drops the same paths.
    encoder = build("tiny", SparseSwinEncoder, drop_path_rate=0.5).train()
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    token_mask = random_mask("tiny", 4, seed=5)
    torch.manual_seed(7)
    sparse = encoder.forward_visible(images, token_mask).features
    torch.manual_seed(7)
    expected, _ = reference_forward(encoder, images, token_mask)
    torch.testing.assert_close(sparse, expected, rtol=1e-5, atol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(encoder.forward_visible(images, token_mask).features, sparse)


def test_a_wholly_masked_window_is_skipped_and_the_rest_still_match():
    # Units of 4 tokens = one stage-0 window: masking unit (0, 0) empties that window.
    name = "three-stages-always-partition"
    encoder = build(name, SparseSwinEncoder).eval()
    units = torch.zeros(2, 4, 4, dtype=torch.bool)
    units[0, 0, 0] = True
    units[1] = True
    units[1, 3, 3] = False  # sample 1: a single visible unit, 15 empty windows
    token_mask = unit_mask(units, 4)
    plan = window_plan(pack(~token_mask), (4, 4), (0, 0), get_relative_position_index(4, 4))
    assert plan.windows == 15 + 1
    assert [batch.gather.shape for batch in plan.batches] == [(16, 16)]
    assert plan.batches[0].mask.isinf().sum() == 0  # the remaining unshifted windows are wholly visible

    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sparse = encoder.forward_visible(images, token_mask)
        expected, _ = reference_forward(encoder, images, token_mask)
    assert sparse.features.shape[0] == 15 + 1  # last stage 4x4: one token per unit
    torch.testing.assert_close(sparse.features, expected, rtol=1e-5, atol=1e-5)


def test_a_wholly_masked_batch_encodes_to_no_rows():
    encoder = build("tiny", SparseSwinEncoder)
    visible = encoder.forward_visible(torch.rand(2, 1, 64, 64), torch.ones(2, 16, 16, dtype=torch.bool))
    assert visible.features.shape == (0, 192) and not visible.packing.visible.any()


def test_partly_visible_windows_are_compacted_batched_and_padded():
    # 8 x 8 tokens, windows of 4 (2 x 2 units of 2 tokens); 0 = visible unit. Windows hold
    # 8 (top left), 4 (top right), 12 (bottom left) and 16 (bottom right) visible tokens.
    units = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    token_mask = unit_mask(units.unsqueeze(0), 2)
    packing = pack(~token_mask)
    index = get_relative_position_index(4, 4)
    plan = window_plan(packing, (4, 4), (0, 0), index)
    # Batched by visible count in (2^(k-1), 2^k], each padded to its largest count.
    assert [tuple(batch.gather.shape) for batch in plan.batches] == [(1, 4), (1, 8), (2, 16)]

    batch = plan.batches[2]  # bottom left (12 visible, 4 padding slots), then bottom right
    window_visible = ~token_mask[0, 4:, :4].reshape(16)
    position = window_visible.nonzero().squeeze(1)  # visible slots, in slot order
    assert torch.equal(batch.gather[0, :12], packing.index[0, 4:, :4].reshape(16)[position])
    assert (batch.gather[0, 12:] == packing.count).all()  # padding reads the zero row
    assert torch.equal(batch.pairs[0, :12, :12], index[position][:, position])
    blocked = batch.mask[0].isinf()
    assert not blocked[:, :12].any()  # every visible key is seen
    assert torch.equal(blocked[:, 12:], ~torch.eye(16, dtype=torch.bool)[:, 12:])  # padding only by itself
    assert not batch.mask[1].isinf().any()  # a wholly visible window has no padding

    # Every visible token comes back from exactly its own slot.
    joined = torch.cat([batch.gather.reshape(-1) for batch in plan.batches])
    assert torch.equal(joined[plan.scatter], torch.arange(packing.count))


def test_shifted_windows_add_timms_region_mask():
    encoder = build("tiny", SparseSwinEncoder)
    block = encoder.layers[0].blocks[1]
    assert block.shift_size == (2, 2) and block.attn_mask is not None
    token_mask = torch.zeros(1, 16, 16, dtype=torch.bool)  # all visible: only regions mask
    index = block.attn.relative_position_index
    plan = window_plan(pack(~token_mask), block.window_size, block.shift_size, index, block.attn_mask)
    (batch,) = plan.batches
    assert torch.equal(batch.mask, block.attn_mask)
    assert torch.equal(batch.pairs, index.expand(16, -1, -1))


def test_state_dict_and_dense_path_are_the_dense_encoders():
    sparse, dense = build("tiny", SparseSwinEncoder), build("tiny", SwinEncoder)
    assert list(sparse.state_dict()) == list(dense.state_dict())
    assert all(torch.equal(value, dense.state_dict()[key]) for key, value in sparse.state_dict().items())
    dense.load_state_dict(sparse.state_dict(), strict=True)
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(sparse.eval()(images), dense.eval()(images))


def test_grad_checkpointing_gives_the_same_gradients():
    name = "tiny"
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    token_mask = random_mask(name, 2, seed=4)
    grads = []
    for enable in (False, True):
        encoder = build(name, SparseSwinEncoder)
        encoder.set_grad_checkpointing(enable)
        encoder.forward_visible(images, token_mask).features.square().sum().backward()
        grads.append(parameter_grads(encoder))
    for key, grad in grads[0].items():
        assert_close_to_scale(grads[1][key], grad, key)


def test_misaligned_masks_and_configs_are_refused():
    encoder = build("tiny", SparseSwinEncoder)
    images = torch.rand(1, 1, 64, 64)
    split_group = torch.zeros(1, 16, 16, dtype=torch.bool)
    split_group[0, :4, :4] = True  # 16 px unit: splits a 2x2 merging group of the 4x4 stage-2 map
    with pytest.raises(ValueError, match="partly masked"):
        encoder.forward_visible(images, split_group)
    with pytest.raises(ValueError, match="B x h x w"):
        encoder.forward_visible(images, split_group[:, :8])

    check_sparse_masking(encoder_config("vismae", 224), 32)
    with pytest.raises(ValueError, match="multiple of 32 px"):
        check_sparse_masking(encoder_config("vismae", 224), 16)
    with pytest.raises(ValueError, match="stage 3 block 0 has a 2x2 map"):
        build("tiny", SparseSwinEncoder, always_partition=True)  # window 4 on the last 2x2 map: timm pads


# ---------------------------------------------------------------------------------------------
# The sparse MAE: model, config key, a pretraining run, its exported encoder.


def sparse_mae(decoder, sparse=True, **overrides):
    torch.manual_seed(0)
    return build_mae("tiny", 64, decoder=decoder, drop_path_rate=0.0, mask_unit_px=32, sparse=sparse, **overrides)


@pytest.mark.parametrize("decoder", ["mirror", "light"])
def test_a_sparse_mae_step_trains_the_encoder_through_either_decoder(decoder):
    model = sparse_mae(decoder)
    assert type(model.encoder) is SparseSwinEncoder
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    output = model(images, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(output.loss) and output.reconstruction.shape == images.shape
    output.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    # The loss on masked pixels must depend on what the encoder saw (the light decoder alone
    # would predict masked pixels from the mask token only).
    trained = ("encoder.patch_embed.proj.weight", "encoder.layers.3.blocks.1.mlp.fc2.weight", "latent_grid.mask_token")
    for name in trained:
        assert grads[name].abs().sum() > 0, name
    assert "encoder.mask_token" not in grads
    assert ("latent_grid.mixer.attn.qkv.weight" in grads) == (decoder == "light")

    optimizer = build_optimizer(model, weight_decay=0.05, betas=(0.9, 0.95))
    assert {"latent_grid.mask_token"} <= no_weight_decay_names(model)
    before = model.encoder.patch_embed.proj.weight.detach().clone()
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    optimizer.step()
    assert not torch.equal(before, model.encoder.patch_embed.proj.weight)
    assert torch.isfinite(model(images, generator=torch.Generator().manual_seed(2)).loss)


def test_sparse_and_dense_maes_start_from_the_same_weights():
    sparse, dense = sparse_mae("mirror").state_dict(), sparse_mae("mirror", sparse=False).state_dict()
    assert sorted(set(sparse) - set(dense)) == ["latent_grid.mask_token"]
    assert all(torch.equal(value, sparse[key]) for key, value in dense.items())


def test_sparse_masking_units_must_cover_last_stage_tokens():
    with pytest.raises(ValueError, match="multiple of 32 px"):
        build_mae("tiny", 64, sparse=True)  # VIS-MAE's 16 px units
    assert build_mae("tiny", 64, sparse=True, mask_unit_px=64).config.sparse


def test_sparse_pretraining_runs_and_exports_an_encoder_the_dense_loader_reads(
    tmp_path, pretrain_cache, fresh_accelerate_state
):
    from safetensors.torch import load_file

    from vismae.config import load_pretrain_config
    from vismae.engine.pretrain import build_model, run
    from vismae.models.weights import load_encoder
    from vismae.shipped_configs import shipped_config

    overrides = {
        "output_dir": tmp_path / "run",
        "data.manifests": f"[{pretrain_cache}]",
        "model.sparse": "true",
        "model.mask_unit_px": 32,
        "train.max_steps": 2,
    }
    config = load_pretrain_config(
        shipped_config("pretrain", "tiny-test.yaml"), [f"{key}={value}" for key, value in overrides.items()]
    )
    assert config.model.sparse and type(build_model(config).encoder) is SparseSwinEncoder
    run_dir = run(config)

    losses = [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    encoder = load_encoder(run_dir / "encoder.safetensors", verbose=False)
    assert type(encoder) is SwinEncoder
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    trained = load_file(str(checkpoint / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, trained[f"encoder.{name}"]), name
