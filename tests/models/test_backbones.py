"""timm backbones by name (ConvNeXtV2, the ROI paper's second model): one input channel, timm's
two-class head, random init or a local timm checkpoint file, never a download; and finetuning
one end to end on the CPU, its model rebuilt from model.json."""

from argparse import Namespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from vismae.data.manifest import read_manifest
from vismae.engine.finetune import finetune
from vismae.engine.finetune_config import load_finetune_config
from vismae.engine.predict import load_model, predict_with_run
from vismae.models.backbones import build_timm_classifier, check_backbone_name, rebuild_task_model
from vismae.synthetic.cache import CacheImage

NAME = "convnextv2_atto"  # the smallest ConvNeXtV2: 3.4 M parameters
SIZE = 64


def rgb_checkpoint(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A timm convnextv2_atto state dict as a downloaded one is: RGB input, 1000 classes."""
    import timm

    torch.manual_seed(3)
    return timm.create_model(NAME, pretrained=False, num_classes=num_classes).state_dict()


def test_random_init_takes_one_channel_and_gives_two_logits():
    model, description = build_timm_classifier(NAME, "random", (SIZE, SIZE), verbose=False)
    assert model.stem[0].in_channels == 1
    assert model(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 2)
    assert description["backbone"] == NAME and description["timm"]["in_chans"] == 1
    assert description["timm"]["num_classes"] == 2 and description["timm"]["image_size"] == [SIZE, SIZE]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_timm_file_loads_with_rgb_summed_and_a_fresh_head(tmp_path, suffix, capsys):
    state = rgb_checkpoint()
    path = tmp_path / f"atto{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # the original repositories' layout: weights under "model"

    model, _ = build_timm_classifier(NAME, str(path), (SIZE, SIZE))
    loaded = model.state_dict()
    # The RGB stem becomes one channel whose weights are the sum of the three (timm's rule).
    assert torch.allclose(loaded["stem.0.weight"], state["stem.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(loaded["stages.3.blocks.1.mlp.fc2.weight"], state["stages.3.blocks.1.mlp.fc2.weight"])
    assert torch.equal(loaded["head.norm.weight"], state["head.norm.weight"])
    # The 1000-class classifier cannot serve two classes: left out, the new one kept.
    assert loaded["head.fc.weight"].shape == (2, 320)
    printed = capsys.readouterr().out
    assert "summed into 1" in printed and "head.fc" in printed and "starts fresh" in printed

    # A gray image gives the RGB network's output on that image repeated in three channels.
    import timm

    rgb = timm.create_model(NAME, pretrained=False, num_classes=1000)
    rgb.load_state_dict(state)
    rgb.reset_classifier(0)
    model.reset_classifier(0)
    image = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model.eval()(image), rgb.eval()(image.expand(-1, 3, -1, -1)), atol=1e-4)


def test_layer_decay_follows_timms_stages_and_leaves_the_head_at_the_full_rate():
    from timm.optim import param_groups_layer_decay

    from vismae.engine.optim import no_weight_decay_names

    model, _ = build_timm_classifier(NAME, "random", (SIZE, SIZE), verbose=False)
    groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=no_weight_decay_names(model), layer_decay=0.75)
    scale = {id(parameter): group["lr_scale"] for group in groups for parameter in group["params"]}
    stem, deep, head = model.stem[0].weight, model.stages[3].blocks[1].mlp.fc2.weight, model.head.fc.weight
    assert scale[id(stem)] < scale[id(deep)] < scale[id(head)] == 1.0


def test_a_file_of_another_architecture_is_refused_naming_the_tensors(tmp_path):
    import timm

    path = tmp_path / "femto.safetensors"
    save_file(timm.create_model("convnextv2_femto", pretrained=False).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"femto.safetensors: the weights do not fit timm convnextv2_atto.*shape mismatch"):
        build_timm_classifier(NAME, str(path), (SIZE, SIZE), verbose=False)


class Hook:
    """Stands for any class a pickle may ask to build: code that a weights file could run."""


def test_a_pth_is_read_as_plain_data_only(tmp_path):
    trained = tmp_path / "trained.pth"  # a timm training checkpoint: args, and EMA weights beside the raw ones
    state = rgb_checkpoint()
    ema = {key: value + 1 if value.is_floating_point() else value for key, value in state.items()}
    torch.save({"state_dict": state, "state_dict_ema": ema, "args": Namespace(lr=1e-3), "epoch": 3}, trained)
    model, _ = build_timm_classifier(NAME, str(trained), (SIZE, SIZE), verbose=False)
    assert torch.equal(model.state_dict()["stages.2.blocks.0.conv_dw.weight"], ema["stages.2.blocks.0.conv_dw.weight"])

    hooked = tmp_path / "hooked.pth"
    torch.save({"model": state, "hook": Hook()}, hooked)
    with pytest.raises(ValueError, match=r"hooked.pth: refused to unpickle.*Hook"):
        build_timm_classifier(NAME, str(hooked), (SIZE, SIZE), verbose=False)


def test_unknown_names_and_folders_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"timm has no model 'convnextv2_tinyy'; did you mean convnextv2_tiny"):
        check_backbone_name("convnextv2_tinyy")
    with pytest.raises(ValueError, match="a folder; a timm backbone"):
        build_timm_classifier(NAME, str(tmp_path), (SIZE, SIZE), verbose=False)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        build_timm_classifier(NAME, str(tmp_path / "none.pth"), (SIZE, SIZE), verbose=False)


def test_configs_name_a_timm_backbone_and_refuse_what_cannot_work(tmp_path):
    from vismae.config import ConfigError

    config = load_finetune_config(None, [f"model.backbone={NAME}"])
    assert config.for_run("random", "classify", tmp_path).init == "random"
    assert config.for_run(f"random:{NAME}", "classify", tmp_path).init == f"random:{NAME}"
    assert config.for_run("w.safetensors", "classify", tmp_path).init.endswith("w.safetensors")
    with pytest.raises(ConfigError, match=r"did you mean convnextv2_tiny"):
        load_finetune_config(None, ["model.backbone=convnextv2_tinyy"])
    with pytest.raises(ConfigError, match=r"init: random:vismae names another architecture"):
        config.for_run("random:vismae", "classify", tmp_path)
    with pytest.raises(ConfigError, match="timm backbones classify"):
        load_finetune_config(None, [f"model.backbone={NAME}", "task=segment", "train.balance=none"])
    with pytest.raises(ConfigError, match="Swin encoder fields"):
        load_finetune_config(None, [f"model.backbone={NAME}", "model.overrides={window_size: 8}"])
    with pytest.raises(ConfigError, match="init: random needs a preset"):
        load_finetune_config(None).for_run("random", "classify", tmp_path)


def test_finetuning_a_timm_backbone_end_to_end(tmp_path, synthetic_cache):
    images = [
        CacheImage(f"p{patient:02d}", view=view, label=("malignant", "benign")[patient % 2], has_roi=True,
                   split=("train", "train", "train", "val", "test")[patient % 5], image_id=f"p{patient:02d}_{view}")
        for patient in range(20) for view in ("CC", "MLO")
    ]  # fmt: skip
    frame = read_manifest(synthetic_cache(images, size=SIZE, dataset="lesions"))
    config = load_finetune_config(None, [
        f"model.backbone={NAME}", "model.drop_path=0.1", "train.batch_size=8", "train.epochs=2",
        "train.warmup_epochs=0", "train.layer_decay=0.75", "train.mixed_precision=no", "data.num_workers=0",
        "eval.n_boot=20", "eval.threshold_rule=fixed:0.5", "checkpoint.every_epochs=0", "augment.enabled=false",
    ])  # fmt: skip
    result = finetune(frame, "random", "classify", config, tmp_path / "run")

    assert result.threshold == 0.5 and result.metrics["threshold"]["rule"] == "fixed"
    assert np.isfinite(result.metrics["test"]["roc_auc"]["value"])
    model, description = load_model(result.run_dir)
    assert description["backbone"] == NAME and type(model).__name__ == "ConvNeXt"
    assert type(rebuild_task_model(description)) is type(model)
    test = frame[frame["split"] == "test"]
    table = predict_with_run(result.run_dir, test.assign(target=(test["label"] == "malignant").astype(int)))
    saved = pd.read_csv(result.predictions, dtype={"image_id": str})
    saved = saved[saved["split"] == "test"].set_index("image_id")
    assert np.allclose(table.set_index("image_id")["probability"], saved.loc[table["image_id"], "probability"], atol=1e-6)
