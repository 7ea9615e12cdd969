"""Two recipes of the ROI experiment side by side: ours (class-weighted loss, threshold chosen
on validation) and the paper's (plain cross-entropy, arg-max), each report naming its own; and
the paper's second model, a timm backbone, accepted by the experiment's config."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from roi_synthetic import ROI_CACHE, PixelStatsEngine, roi_images

from vismae.config import ConfigError
from vismae.experiments.roi_aware.config import load_roi_aware_config
from vismae.experiments.roi_aware.experiment import run_roi_aware
from vismae.shipped_configs import shipped_config


@pytest.mark.parametrize("dataset", ["vindr", "cdd-cesm"])
def test_the_paper_recipe_configs_train_as_the_paper_says(dataset):
    paper = load_roi_aware_config(shipped_config("roi_aware", f"{dataset}-paper.yaml"))
    recipe = paper.finetune
    assert paper.recipe == "paper" and paper.paper == dataset
    assert recipe.train.balance == "none" and recipe.eval.threshold_rule == "fixed:0.5"
    assert recipe.train.lr == 1e-4 and recipe.train.epochs == 100 and recipe.data.size == 384

    ours = load_roi_aware_config(shipped_config("roi_aware", f"{dataset}.yaml"))
    assert ours.recipe == "vismae"
    assert ours.finetune.train.balance == "weighted_loss" and ours.finetune.eval.threshold_rule == "youden"
    # Only the recipe differs: the same cache, encoder, seeds and groups, in another folder.
    for key in ("manifest", "init", "seeds", "small_groups", "router", "paper"):
        assert getattr(paper, key) == getattr(ours, key), key
    assert paper.output_dir != ours.output_dir


def test_each_report_names_its_recipe(tmp_path, synthetic_cache):
    manifest = synthetic_cache(roi_images(patients=24), **ROI_CACHE)
    overrides = [f"manifest={manifest}", f"output_dir={tmp_path / 'run'}", "recipe=paper", "paper=vindr", "init=random:tiny",
                 "small_groups.min_images=4", "small_groups.min_per_class=1", "finetune.eval.n_boot=20",
                 "finetune.train.balance=none", "finetune.eval.threshold_rule=fixed:0.5"]  # fmt: skip
    folder = run_roi_aware(load_roi_aware_config(None, overrides), PixelStatsEngine())

    text = (folder / "results.md").read_text()
    assert text.startswith("# ROI-aware benign/malignant classification: paper recipe")
    assert "Recipe **paper**: backbone swin, plain cross-entropy, decision threshold fixed at 0.5" in text
    assert "(threshold fixed by the recipe (fixed:0.5))" in text  # the router's, too
    recipe = json.loads((folder / "results.json").read_text())["experiment"]["recipe"]
    assert recipe["name"] == "paper" and recipe["loss"] == "plain cross-entropy" and recipe["threshold"] == "fixed at 0.5"
    assert set(pd.read_csv(folder / "results.csv")["recipe"]) == {"paper"}
    ours = pd.read_csv(folder / "paper_comparison.csv").query("source.str.startswith('ours')")
    assert len(ours) and ours["source"].str.contains("paper recipe").all()


def test_a_timm_backbone_runs_the_experiment_from_random_init_or_a_file(tmp_path):
    base = [f"manifest={tmp_path / 'manifest.csv'}", "finetune.model.backbone=convnextv2_tiny"]
    config = load_roi_aware_config(None, [*base, "init=random"]).with_absolute_paths()
    assert config.init == "random"
    weights = load_roi_aware_config(None, [*base, "init=w/convnextv2_tiny.safetensors"]).with_absolute_paths()
    assert weights.init.endswith("w/convnextv2_tiny.safetensors") and weights.init != "w/convnextv2_tiny.safetensors"
    with pytest.raises(ConfigError, match="random:vismae names another architecture"):
        load_roi_aware_config(None, base)  # the default init is a Swin preset
    with pytest.raises(ConfigError, match="router.kind: segmenter needs the swin encoder"):
        load_roi_aware_config(None, [*base, "init=random", "router.kind=segmenter"])
    with pytest.raises(ConfigError, match="recipe: give the recipe a name"):
        load_roi_aware_config(None, [f"manifest={tmp_path / 'manifest.csv'}", "recipe=' '"])
