"""Loading encoders from every supported checkpoint format; each checkpoint is built here."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer, get_relative_position_index
from torch import nn

from vismae.cli import main
from vismae.models.decoders import MirrorDecoder
from vismae.models.formats.vismae_export import export_encoder
from vismae.models.formats.vismae_run import MAE_DESCRIPTION_FILE, read_mae_description, write_mae_description
from vismae.models.mae import MAEConfig, build_mae
from vismae.models.swin import EncoderConfig
from vismae.models.weights import load_encoder, load_encoder_with_report, load_mae_init

SIZE = 64
TINY = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
# 64 px maps are 16, 8, 4, 2 tokens: a window of 2 tiles every stage, as 7 does at 224.
REFERENCE_WINDOW = 2


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (LayerNorms and biases start at 1 and 0)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def timm_swin(in_chans=3, window=REFERENCE_WINDOW, always_partition=False, eps=1e-5, final_norm=True, num_classes=0):
    model = SwinTransformer(
        img_size=SIZE, patch_size=4, in_chans=in_chans, num_classes=num_classes, window_size=window,
        always_partition=always_partition, norm_layer=partial(nn.LayerNorm, eps=eps), **TINY,
    )
    if not final_norm:
        model.norm = nn.Identity()
    return randomize(model)


def to_original_layout(state: dict, window: int) -> dict:
    """timm keys -> Microsoft / VIS-MAE keys: patch merging closes stage i instead of opening
    stage i + 1, and every block saves its relative position index."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = get_relative_position_index(window, window)
    return out


def gray_features(encoder, gray):
    with torch.no_grad():
        return encoder.eval().forward_features(gray)


def timm_features(model, images):
    with torch.no_grad():
        return model.forward_features(images).permute(0, 3, 1, 2)


@pytest.fixture
def gray():
    return torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# VIS-MAE / Swin-MAE reference format


def reference_decoder_keys(decoder: nn.Module) -> dict:
    """Our mirror decoder's tensors under the reference's names (it expands at the end of each
    up-stage, after a first_patch_expanding)."""
    out = {}
    for key, value in decoder.state_dict().items():
        stage = re.match(r"^layers\.(\d+)\.(blocks|upsample)\.(.*)$", key)
        if key.startswith("layers.0.upsample."):
            key = "first_patch_expanding." + key.removeprefix("layers.0.upsample.")
        elif stage and stage.group(2) == "blocks":
            key = f"layers_up.{stage.group(1)}.blocks.{stage.group(3)}"
        elif stage:
            key = f"layers_up.{int(stage.group(1)) - 1}.upsample.{stage.group(3)}"
        else:
            key = key.replace("norm.", "norm_up.").replace("pred.", "decoder_pred.")
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = get_relative_position_index(REFERENCE_WINDOW, REFERENCE_WINDOW)
    return out


@pytest.fixture
def reference(tmp_path):
    """A checkpoint-N.pth as the reference code writes it, from a 3-channel model."""
    encoder = timm_swin(always_partition=True, eps=1e-6, final_norm=False)
    decoder_config = EncoderConfig(
        img_size=SIZE, in_chans=3, window_size=REFERENCE_WINDOW, norm_eps=1e-6, always_partition=True, **TINY
    )
    decoder = randomize(MirrorDecoder(decoder_config))
    model = {
        "pos_embed": torch.randn(1, (SIZE // 4) ** 2, 24),  # sin-cos in the original, never added
        "mask_token": torch.randn(1, 1, 24),
        **to_original_layout(encoder.state_dict(), REFERENCE_WINDOW),
        **reference_decoder_keys(decoder),
    }
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(model="swin_mae", input_size=SIZE, lr=1e-3, mask_ratio=0.75)
    torch.save({"model": model, "optimizer": {"state": {}}, "epoch": 799, "scaler": {"scale": 1024.0}, "args": args}, path)
    return path, encoder, decoder, model


def test_reference_checkpoint_gives_the_reference_features(reference, gray):
    path, three_channel, _, saved = reference
    encoder, report = load_encoder_with_report(path, verbose=False)

    assert report.format == "vis-mae-reference"
    config = encoder.config
    assert (config.in_chans, config.norm_eps, config.always_partition, config.final_norm) == (1, 1e-6, True, False)
    assert (config.window_size, config.depths, config.img_size) == (REFERENCE_WINDOW, TINY["depths"], (SIZE, SIZE))
    # Channel folding promises: one gray channel == three identical copies of it.
    expected = timm_features(three_channel, gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(gray_features(encoder, gray), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(encoder.mask_token.flatten(), saved["mask_token"].flatten())
    assert report.dropped["pos_embed: stored but never added by the reference model"] == ["pos_embed"]
    assert all(key.startswith(("first_patch_expanding", "layers_up", "norm_up", "decoder_pred"))
               for key in report.dropped["decoder, not part of the encoder"])
    assert report.missing == [] and report.unexpected == []


def test_reference_input_normalization_can_be_folded(reference, gray):
    path, three_channel, _, _ = reference
    encoder = load_encoder(path, verbose=False, fold_input_norm=True)
    # The reference normalizes with mean 0.223, std 0.202; the folded encoder takes raw pixels.
    normalized = ((gray - 0.223) / 0.202).expand(-1, 3, -1, -1)
    torch.testing.assert_close(gray_features(encoder, gray), timm_features(three_channel, normalized), atol=1e-4, rtol=1e-4)


def test_reference_decoder_initializes_the_mirror_decoder(reference):
    path, _, three_channel_decoder, _ = reference
    mae = build_mae("tiny", SIZE, window_size=REFERENCE_WINDOW, norm_eps=1e-6, always_partition=True, final_norm=False)
    report = load_mae_init(path, mae, verbose=False)

    assert report.decoder.startswith("loaded")
    latent = torch.randn(2, 192, 2, 2)
    with torch.no_grad():
        expected = three_channel_decoder(latent).mean(dim=1, keepdim=True)  # gray = mean of equal channels
        torch.testing.assert_close(mae.decoder.eval()(latent), expected, atol=1e-5, rtol=1e-5)


def test_decoder_of_another_structure_is_reported_not_loaded(reference):
    path, three_channel, _, _ = reference
    mae = build_mae("tiny", SIZE, decoder="light", window_size=REFERENCE_WINDOW, norm_eps=1e-6,
                    always_partition=True, final_norm=False)
    before = {key: value.clone() for key, value in mae.decoder.state_dict().items()}
    report = load_mae_init(path, mae, verbose=False)

    assert report.decoder.startswith("NOT LOADED") and "light decoder" in report.decoder
    assert all(torch.equal(before[key], value) for key, value in mae.decoder.state_dict().items())
    assert len(report.loaded) > 100  # the encoder still loaded


def test_init_with_another_architecture_fails_naming_it(reference):
    mae = build_mae("tiny", SIZE, window_size=REFERENCE_WINDOW)
    mae_wider = build_mae("vismae", SIZE, window_size=REFERENCE_WINDOW)
    load_mae_init(reference[0], mae, verbose=False, allow_missing=True)  # same shapes: fine
    with pytest.raises(ValueError, match="embed_dim 24 vs 96"):
        load_mae_init(reference[0], mae_wider, verbose=False)


# ---------------------------------------------------------------------------------------------
# Our own formats


def test_exported_encoder_round_trip(tmp_path, gray):
    original = load_encoder("random:tiny", img_size=SIZE, verbose=False, norm_eps=1e-6, drop_path_rate=0.0)
    export_encoder(original, tmp_path / "export", {"producer": "test"})

    for source in (tmp_path / "export", tmp_path / "export" / "encoder.safetensors", tmp_path / "export" / "encoder.json"):
        loaded, report = load_encoder_with_report(source, verbose=False)
        assert report.format == "vismae-encoder"
        assert loaded.config == original.config
        assert report.missing == [] and report.fresh == [] and report.skipped == 0
        torch.testing.assert_close(gray_features(loaded, gray), gray_features(original, gray), atol=0, rtol=0)


def write_run(tmp_path, mae, step=12, legacy=False):
    """A pretraining run as the engine leaves it: each checkpoint with its mae.json. A legacy run
    (written before mae.json existed) has only the run's config.yaml to tell the settings."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / f"step_{step:07d}"
    checkpoint.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in mae.state_dict().items()}, str(checkpoint / "model.safetensors"))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": step}))
    if legacy:
        overrides = "{norm_eps: 1.0e-06, always_partition: true}"
    else:
        write_mae_description(mae, checkpoint)
        overrides = "{}"  # settings that disagree with the model: mae.json must win
    (run / "config.yaml").write_text(
        f"model:\n  preset: tiny\n  overrides: {overrides}\n"
        f"data:\n  size: {SIZE}\n  manifests: [cache/manifest.csv]\n"
    )
    return run, checkpoint


@pytest.mark.parametrize("legacy", [False, True], ids=["mae.json", "legacy config.yaml"])
def test_pretraining_run_and_checkpoint_folders(tmp_path, gray, legacy):
    mae = randomize(build_mae("tiny", SIZE, norm_eps=1e-6, always_partition=True))
    run, checkpoint = write_run(tmp_path, mae, legacy=legacy)
    # A newer step that never finished (no trainer state) is not a checkpoint.
    (run / "checkpoints" / "step_0000099").mkdir()

    for source in (run, checkpoint, checkpoint / "model.safetensors"):
        encoder, report = load_encoder_with_report(source, verbose=False)
        assert report.format == "vismae-pretrain" and report.file == str(checkpoint / "model.safetensors")
        # Settings no tensor shows come from the checkpoint's mae.json, or else the run's config.yaml.
        assert (encoder.config.norm_eps, encoder.config.always_partition) == (1e-6, True)
        assert any(note.startswith("encoder settings from") and note.endswith("config.yaml" if legacy else "mae.json")
                   for note in report.notes), report.notes  # fmt: skip
        assert report.missing == [] and report.unexpected == []
        torch.testing.assert_close(gray_features(encoder, gray), gray_features(mae.encoder, gray), atol=0, rtol=0)


def test_checkpoint_description_rebuilds_the_mae(tmp_path):
    mae = build_mae("tiny", SIZE, decoder="light", mask_ratio=0.6, mask_unit_px=8, norm_pix_loss=True, norm_eps=1e-6)
    write_mae_description(mae, tmp_path)
    description = json.loads((tmp_path / MAE_DESCRIPTION_FILE).read_text())
    assert description["format"] == "vismae-mae" and description["version"] == 1
    assert MAEConfig.from_dict(read_mae_description(tmp_path)) == mae.config
    assert read_mae_description(tmp_path / "absent") is None  # a checkpoint written before descriptions


def test_a_foreign_checkpoint_description_is_named_and_not_used(tmp_path):
    mae = randomize(build_mae("tiny", SIZE, norm_eps=1e-6, always_partition=True))
    _, checkpoint = write_run(tmp_path, mae)
    (checkpoint / MAE_DESCRIPTION_FILE).write_text(json.dumps({"format": "other", "mae": {}}))
    with pytest.raises(ValueError, match="mae.json: format is 'other'"):
        read_mae_description(checkpoint)
    encoder, report = load_encoder_with_report(checkpoint, verbose=False)
    assert any("format is 'other'" in note for note in report.notes)
    assert encoder.config.norm_eps == 1e-5  # the default: neither file's settings were taken


def test_pretraining_checkpoint_initializes_encoder_and_decoder(tmp_path):
    source = randomize(build_mae("tiny", SIZE, norm_eps=1e-6, always_partition=True))
    run, _ = write_run(tmp_path, source)
    target = build_mae("tiny", SIZE, norm_eps=1e-6, always_partition=True)
    report = load_mae_init(run, target, verbose=False)

    assert report.decoder.startswith("loaded")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------
# Supervised Swin checkpoints (ImageNet inits)


def test_microsoft_swin_loads_and_matches_its_features(tmp_path, gray):
    classifier = timm_swin(window=4, num_classes=10)
    state = to_original_layout(classifier.state_dict(), 4)
    state["head.weight"], state["head.bias"] = state.pop("head.fc.weight"), state.pop("head.fc.bias")
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)  # official Swin saves its shift masks
    torch.save({"model": state}, tmp_path / "swin_tiny_patch4_window4.pth")

    encoder, report = load_encoder_with_report(tmp_path / "swin_tiny_patch4_window4.pth", img_size=SIZE, verbose=False)
    assert report.format == "microsoft-swin"
    assert report.dropped["classifier head"] == ["head.bias", "head.weight"]
    assert report.fresh == ["mask_token"] and report.missing == []
    assert (encoder.config.norm_eps, encoder.config.always_partition, encoder.config.final_norm) == (1e-5, False, True)
    expected = timm_features(classifier, gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(gray_features(encoder, gray), expected, atol=1e-5, rtol=1e-5)

    # Another window: every relative position table is resized to it, and the model runs.
    resized, report = load_encoder_with_report(tmp_path / "swin_tiny_patch4_window4.pth", img_size=SIZE, window_size=2, verbose=False)
    table = resized.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (9, 1) and any("resized from 49 to 9" in note for note in report.notes)
    assert gray_features(resized, gray).shape == (2, 192, 2, 2)


def test_timm_swin_safetensors_and_hub_folder(tmp_path, gray):
    classifier = timm_swin(window=2, num_classes=5)
    hub_folder = tmp_path / "hub"
    hub_folder.mkdir()
    save_file(classifier.state_dict(), str(hub_folder / "model.safetensors"))

    encoder, report = load_encoder_with_report(hub_folder, verbose=False, window_size=4, img_size=128)
    assert report.format == "timm-swin"
    assert report.dropped["classifier head"] == ["head.fc.bias", "head.fc.weight"]
    assert encoder.config.img_size == (128, 128)
    assert encoder.layers[0].blocks[0].attn.relative_position_bias_table.shape == (49, 1)
    assert gray_features(encoder, torch.rand(1, 1, 128, 128)).shape == (1, 192, 4, 4)

    # At its own window the features are the 3-channel model's on a gray image.
    same = load_encoder(hub_folder / "model.safetensors", verbose=False)
    torch.testing.assert_close(gray_features(same, gray), timm_features(classifier, gray.expand(-1, 3, -1, -1)),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Names, bad weights, unsafe files


def test_random_by_name():
    encoder, report = load_encoder_with_report("random:tiny", img_size=SIZE, verbose=False)
    assert report.format == "random" and encoder.config.embed_dim == 24
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*tiny"):
        load_encoder("random:huge", verbose=False)


def test_partial_weights_fail_naming_the_keys(tmp_path):
    state = timm_swin().state_dict()
    del state["layers.1.blocks.0.attn.qkv.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))

    with pytest.raises(ValueError, match=r"missing 1: layers\.1\.blocks\.0\.attn\.qkv\.weight"):
        load_encoder(tmp_path / "partial.safetensors", verbose=False)
    encoder, report = load_encoder_with_report(tmp_path / "partial.safetensors", verbose=False, allow_missing=True)
    assert report.missing == ["layers.1.blocks.0.attn.qkv.weight"]
    assert torch.equal(encoder.layers[1].blocks[0].attn.qkv.bias, state["layers.1.blocks.0.attn.qkv.bias"])


def test_wrong_weights_fail_naming_the_keys(tmp_path):
    state = timm_swin().state_dict()
    state["absolute_pos_embed"] = torch.zeros(1, 256, 24)  # a Swin variant this encoder does not have
    state["layers.2.blocks.1.mlp.fc2.weight"] = torch.zeros(96, 100)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected 1: absolute_pos_embed.*layers\.2\.blocks\.1\.mlp\.fc2\.weight"):
        load_encoder(tmp_path / "wrong.safetensors", verbose=False)

    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7)}, str(tmp_path / "resnet.safetensors"))
    with pytest.raises(ValueError, match="not a Swin checkpoint.*conv1.weight"):
        load_encoder(tmp_path / "resnet.safetensors", verbose=False)
    with pytest.raises(ValueError, match="cannot be overridden"):
        load_encoder(tmp_path / "wrong.safetensors", verbose=False, embed_dim=48)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "absent.pth", verbose=False)


class Payload:
    """Unpickling this runs ``exec``: a checkpoint that would take over the machine."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    armed = tmp_path / "plain_pickle_ran_it"
    pickle.loads(pickle.dumps(Payload(armed)))  # the payload is real: plain unpickling runs it
    assert armed.exists()

    marker = tmp_path / "payload_ran"
    state = {key: value for key, value in timm_swin().state_dict().items()}
    torch.save({"model": state, "args": Payload(marker)}, tmp_path / "checkpoint-1.pth")
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump({"model": state, "extra": Payload(marker)}, handle)

    with pytest.raises(ValueError, match="refused to unpickle .it asks for exec"):
        load_encoder(tmp_path / "checkpoint-1.pth", verbose=False)
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_encoder(tmp_path / "plain.pkl", verbose=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The command and the package entry point


def test_convert_weights_command(reference, tmp_path, capsys, gray):
    path, three_channel, _, _ = reference
    assert main(["convert-weights", str(path), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "vis-mae-reference"
    assert summary["loaded"] > 100 and summary["skipped"] > 0 and summary["missing"] == []

    described = json.loads((tmp_path / "out" / "encoder.json").read_text())
    assert described["source"]["format"] == "vis-mae-reference" and len(described["source"]["sha256"]) == 64
    reloaded = load_encoder(tmp_path / "out", verbose=False)
    expected = timm_features(three_channel, gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(gray_features(reloaded, gray), expected, atol=1e-5, rtol=1e-5)

    # An existing export is never silently replaced.
    assert main(["convert-weights", str(path), str(tmp_path / "out")]) == 2
    assert "--force" in capsys.readouterr().err


def test_load_encoder_is_at_the_top_but_import_vismae_stays_light():
    import vismae
    from vismae.models import weights

    assert vismae.load_encoder is weights.load_encoder
    subprocess.run([sys.executable, "-c", "import sys, vismae; assert 'torch' not in sys.modules"], check=True)
