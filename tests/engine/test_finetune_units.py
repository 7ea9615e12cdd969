"""Finetuning pieces without training: the config, which rows are used, class balancing,
augmentation that moves masks with pixels, the threshold rule and the run-folder guard."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from vismae.config import ConfigError, to_dict
from vismae.data.labelled_dataset import (
    BalancedEpochSampler,
    LabelledImages,
    MammogramAugmentation,
    prepare_task_rows,
    select_task_rows,
)
from vismae.data.manifest import new_frame
from vismae.engine.finetune import check_saved_run, decide_threshold, training_loader, training_loss
from vismae.engine.finetune_config import FinetuneConfig, FinetuneData, load_finetune_config
from vismae.engine.finetune_loop import class_weights
from vismae.io import write_json, write_text
from vismae.shipped_configs import shipped_config

CONFIGS = shipped_config("finetune")


def rows(labels, views=None, with_roi=None, split="train", folder: Path | None = None) -> pd.DataFrame:
    records = []
    for index, label in enumerate(labels):
        roi = bool(with_roi[index]) if with_roi is not None else label != "normal"
        records.append({
            "image_id": f"i{index}", "patient_id": f"p{index}", "study_id": f"s{index}", "dataset": "t",
            "path": str(folder / f"i{index}.png") if folder else f"/nowhere/i{index}.png",
            "view": (views or ["CC"] * len(labels))[index], "laterality": "L", "label": label, "birads": None,
            "has_roi": roi, "roi": [{"type": "point", "cx": 1, "cy": 1}] if roi else [], "split": split, "mask_path": "",
        })  # fmt: skip
    return new_frame(records)


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_finetune_config(path)
    assert config.task in ("classify", "segment")
    assert config.select_by in ("auc", "dice", "loss")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=segment", "train.balance=weighted_loss"], "weighted_loss is for classification"),
        (["train.select_by=dice"], "dice is for segmentation"),
        (["data.positive=[malignant]", "data.negative=[malignant]"], "share"),
        (["data.negative=[cancer]"], "unknown labels"),
        (["model.overrides={drop_path_rate: 0.2}"], "model.drop_path"),
        (["model.pool=median"], "model.pool"),
        (["train.layer_decay=0"], "layer_decay"),
    ],
)
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(None, overrides)


def test_auto_selection_follows_the_task():
    assert FinetuneConfig(task="classify").select_by == "auc"
    assert load_finetune_config(None, ["task=segment", "train.balance=none"]).select_by == "dice"


# --- rows ----------------------------------------------------------------------------------


def test_classification_keeps_the_configured_labels_and_counts_the_rest():
    frame = rows(["benign", "malignant", "normal", "normal", "unknown", "malignant"])
    kept, left_out = select_task_rows(frame, "classify", FinetuneData())
    assert kept["label"].tolist() == ["benign", "malignant", "malignant"]
    assert kept["target"].tolist() == [0, 1, 1]
    assert left_out == {"label normal": 2, "label unknown": 1}

    kept, _ = select_task_rows(frame, "classify", FinetuneData(negative=["benign", "normal"]))
    assert kept["target"].tolist() == [0, 1, 0, 0, 1]


def test_views_and_roi_presence_filter_rows():
    frame = rows(["benign", "malignant", "benign", "malignant"], views=["CC", "MLO", "MLO", "CC"], with_roi=[1, 1, 0, 0])
    kept, left_out = select_task_rows(frame, "classify", FinetuneData(views=["LMLO"], roi="with"))
    assert kept["image_id"].tolist() == ["i1"]
    assert left_out == {"other views": 2, "not with ROI": 1}


def test_segmentation_keeps_every_label_and_targets_roi_presence():
    frame = rows(["benign", "normal", "malignant"], with_roi=[1, 0, 1])
    kept, left_out = select_task_rows(frame, "segment", FinetuneData())
    assert kept["target"].tolist() == [1, 0, 1] and not left_out


def test_unreadable_images_are_left_out_and_counted(tmp_path):
    image = np.zeros((32, 32), np.uint8)
    frame = rows(["benign", "malignant"] * 4, folder=tmp_path)
    frame["patient_id"] = [f"p{i // 2}" for i in range(8)]
    frame["split"] = ["train"] * 6 + ["val"] * 2
    for index, path in enumerate(frame["path"]):
        if index == 2:
            Path(path).write_bytes(b"not a png")
        else:
            cv2.imwrite(path, image)
    kept, notes = prepare_task_rows(frame, "classify", FinetuneData())
    assert len(kept) == 7 and notes["left_out"] == {"unreadable image": 1}
    assert notes["unreadable"] == [frame["path"][2]] and notes["cache_image_size"] == [32, 32]
    assert notes["validation"] == "given" and notes["splits"]["val"]["images"] == 2

    cv2.imwrite(frame["path"][3], np.zeros((16, 16), np.uint8))  # a cache image of another size
    with pytest.raises(ValueError, match="16x16"):
        prepare_task_rows(frame, "classify", FinetuneData())


def test_rows_without_cache_columns_are_refused():
    with pytest.raises(ValueError, match="mask_path"):
        select_task_rows(rows(["benign"]).drop(columns="mask_path"), "classify", FinetuneData())


# --- balancing -----------------------------------------------------------------------------


def test_weighted_loss_uses_inverse_class_frequencies():
    targets = np.array([0] * 9 + [1] * 3)
    weights = class_weights(targets)
    assert torch.allclose(weights, torch.tensor([12 / 18, 12 / 6]))
    # Weighted, a minority error costs as much in total as a majority one.
    assert weights[0] * 9 == pytest.approx(weights[1] * 3)
    with pytest.raises(ValueError, match=r"no images of class \[1\]"):
        class_weights(np.zeros(4, dtype=int))
    # Three classes, scikit-learn's "balanced" rule: n / (classes x count).
    assert torch.equal(class_weights(np.array([0, 0, 1, 2, 2, 2]), num_classes=3), torch.tensor([1.0, 2.0, 2 / 3]))


@pytest.mark.parametrize("balance, weighted", [("weighted_loss", True), ("sampler", False), ("none", False)])
def test_balance_setting_chooses_the_loss_weights(balance, weighted):
    config = load_finetune_config(None, [f"train.balance={balance}"])
    loss = training_loss(config, np.array([0, 0, 0, 1]))
    assert (loss.weight is not None) == weighted
    # A batch of one majority and one minority image: weighting shifts the loss toward the minority.
    logits, target = torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0, 1])
    unweighted = torch.nn.functional.cross_entropy(logits, target)
    assert (loss(logits, target) < unweighted - 1e-3) == weighted


@pytest.mark.parametrize("balance", ["sampler", "weighted_loss", "none"])
def test_balance_setting_chooses_the_sampler(tmp_path, balance):
    frame = rows(["benign"] * 18 + ["malignant"] * 2, folder=tmp_path)
    kept, _ = select_task_rows(frame, "classify", FinetuneData())
    config = load_finetune_config(None, [f"train.balance={balance}"])
    _, sampler = training_loader(kept, config, (64, 64), batch_size=4, processes=1, use_cuda=False)
    drawn = kept["target"].to_numpy()[[index for index, _ in sampler]]
    if balance == "sampler":
        assert isinstance(sampler, BalancedEpochSampler) and drawn.mean() > 0.3
    else:  # every image once per epoch
        assert sorted(index for index, _ in sampler) == list(range(20))


def test_balanced_sampler_draws_each_class_equally_often():
    groups = np.array([0] * 90 + [1] * 10)
    sampler = BalancedEpochSampler(groups, samples_per_step=8, seed=3)
    draws = np.array([index for index, _ in sampler])
    assert len(draws) == 96  # whole steps only
    assert 0.4 < groups[draws].mean() < 0.6
    again = [index for index, _ in BalancedEpochSampler(groups, 8, seed=3)]
    assert draws.tolist() == again  # a function of (seed, epoch)
    sampler.set_epoch(1)
    assert [index for index, _ in sampler] != draws.tolist()


# --- images and augmentation ---------------------------------------------------------------


def write_image(folder: Path, name: str, pixels: np.ndarray) -> str:
    path = folder / name
    cv2.imwrite(str(path), pixels)
    return str(path)


def test_dataset_reads_16_bit_images_masks_and_empty_masks(tmp_path):
    image = np.full((32, 32), 65535, np.uint16)
    image[:, 16:] = 0
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 255
    frame = pd.DataFrame({
        "path": [write_image(tmp_path, "a.png", image)] * 2,
        "mask_path": [write_image(tmp_path, "m.png", mask), ""],
    })  # fmt: skip
    dataset = LabelledImages(frame, (16, 16), np.array([1, 0]), with_masks=True)
    first, second = dataset[0], dataset[1]
    assert first["image"].shape == (1, 16, 16) and first["image"].dtype == torch.float32
    assert first["image"][0, 0, 0] == 1.0 and first["image"][0, 0, -1] == 0.0
    assert first["mask"].sum() == 4 and set(first["mask"].unique().tolist()) == {0, 1}  # resized, still binary
    assert second["mask"].sum() == 0 and second["target"] == 0


def test_augmentation_moves_the_mask_with_the_pixels():
    augment = MammogramAugmentation(affine_prob=1.0, rotate_deg=15, zoom=0.15, translate=0.1, intensity_prob=0.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    image = mask.astype(np.float32)
    for seed in range(5):
        moved_image, moved_mask = augment(image, mask, np.random.default_rng(seed))
        assert not np.array_equal(moved_mask, mask)
        # Where the image is clearly inside (or outside) the moved square, so is the mask.
        assert (moved_mask[moved_image > 0.9] == 1).all() and (moved_mask[moved_image < 0.1] == 0).all()


def test_augmentation_keeps_the_chest_wall_on_the_left_and_pixels_in_range():
    image = np.zeros((64, 64), np.float32)
    image[:, :24] = 0.8  # a breast against the left edge
    augment = MammogramAugmentation(affine_prob=1.0, translate=0.0, intensity_prob=1.0, noise_std=0.05)
    for seed in range(5):
        moved, _ = augment(image, None, np.random.default_rng(seed))
        assert moved.min() >= 0.0 and moved.max() <= 1.0
        assert moved[16:48, 0].mean() > 0.3 and moved[16:48, -1].mean() < 0.1  # never mirrored
    first, _ = augment(image, None, np.random.default_rng(7))
    again, _ = augment(image, None, np.random.default_rng(7))
    assert np.array_equal(first, again)


# --- threshold and run folder --------------------------------------------------------------


def test_threshold_follows_the_rule_and_falls_back_on_one_class():
    table = pd.DataFrame({"target": [0, 0, 1, 1, 1], "probability": [0.1, 0.4, 0.35, 0.8, 0.9]})
    youden = decide_threshold(table, FinetuneConfig())
    assert youden["threshold"] == pytest.approx(0.8) and youden["chosen_on"] == "val"
    sensitive = decide_threshold(table, load_finetune_config(None, ["eval.threshold_rule=sensitivity", "eval.target_sensitivity=1.0"]))
    assert sensitive["threshold"] == pytest.approx(0.35)
    single = decide_threshold(table.assign(target=1), FinetuneConfig())
    assert single["threshold"] == 0.5 and single["rule"] == "default" and "one class" in single["note"]


def test_a_fixed_threshold_ignores_the_validation_predictions():
    """fixed:T, the ROI paper's arg-max at 0.5: the same threshold whatever validation says,
    recorded as fixed (threshold.json and metrics.json hold this decision)."""
    table = pd.DataFrame({"target": [0, 0, 1, 1, 1], "probability": [0.1, 0.4, 0.35, 0.8, 0.9]})
    config = load_finetune_config(None, ["eval.threshold_rule=fixed:0.5"])
    decision = decide_threshold(table, config)
    assert decision["threshold"] == 0.5 and decision["rule"] == "fixed" and decision["chosen_on"] == "config"
    assert decide_threshold(table.assign(target=1), config)["threshold"] == 0.5  # no fallback needed
    assert decide_threshold(table, load_finetune_config(None, ["eval.threshold_rule=fixed:0.25"]))["threshold"] == 0.25


@pytest.mark.parametrize(
    "rule, message",
    [("fixed:1.5", "outside \\(0, 1\\)"), ("fixed:0", "outside \\(0, 1\\)"), ("fixed:half", "no number after fixed:"),
     ("median", "unknown rule 'median'; expected youden, sensitivity or fixed:T")],
)  # fmt: skip
def test_bad_threshold_rules_are_refused_naming_the_key(rule, message):
    with pytest.raises(ConfigError, match=f"override 'eval.threshold_rule={rule}': eval.threshold_rule: .*{message}"):
        load_finetune_config(None, [f"eval.threshold_rule={rule}"])


def test_run_folder_with_another_config_or_rows_is_refused(tmp_path):
    import yaml

    config = FinetuneConfig().for_run("random:tiny", "classify", tmp_path)
    write_text(tmp_path / "config.yaml", yaml.safe_dump(to_dict(config)))
    write_json(tmp_path / "data.json", {"digest": "abc"})
    check_saved_run(tmp_path, config, "abc")
    relocated = load_finetune_config(None, ["data.num_workers=7"]).for_run("random:tiny", "classify", tmp_path / "x")
    check_saved_run(tmp_path, relocated, "abc")  # neutral keys may differ
    with pytest.raises(ConfigError, match="train.lr"):
        check_saved_run(tmp_path, load_finetune_config(None, ["train.lr=0.1"]).for_run("random:tiny", "classify", tmp_path), "abc")
    with pytest.raises(ConfigError, match="other rows"):
        check_saved_run(tmp_path, config, "def")


def test_a_run_folder_that_another_process_holds_is_refused_before_anything_is_read(tmp_path):
    from accelerate.state import AcceleratorState, GradientState
    from held_folder import held_by_another_process

    from vismae.engine.finetune import finetune
    from vismae.run_folder import FolderInUseError

    try:
        with held_by_another_process(tmp_path / "run") as pid:
            with pytest.raises(FolderInUseError, match=f"process {pid} on "):
                finetune(pd.DataFrame(), "random:tiny", "classify", FinetuneConfig(), tmp_path / "run")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
