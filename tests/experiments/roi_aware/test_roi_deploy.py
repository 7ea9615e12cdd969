"""`vismae predict` on an ROI-aware experiment folder: each image routed by the router's
prediction to its group's model and decided at that model's threshold, as the experiment's
deployable procedure scores its test images. The folder is laid out as the experiment leaves
it (seed_0/outcome.json naming the router and the group models); its models are real
finetuned classifiers on a synthetic cache."""

import json

import numpy as np
import pandas as pd
import pytest
from roi_synthetic import ROI_CACHE, roi_images

from vismae.data.manifest import read_manifest
from vismae.engine.finetune import finetune
from vismae.engine.finetune_config import load_finetune_config
from vismae.engine.predict import predict_with_run
from vismae.engine.predict_images import PredictSettings
from vismae.experiments.roi_aware.deploy import is_roi_aware_folder, predict_routed

SETTINGS = {
    "model.drop_path": 0.0, "train.batch_size": 8, "train.epochs": 1, "train.warmup_epochs": 0,
    "train.mixed_precision": "no", "data.num_workers": 0, "eval.n_boot": 20, "checkpoint.every_epochs": 0,
}  # fmt: skip


@pytest.fixture(scope="module")
def experiment(synthetic_cache, tmp_path_factory):
    """An experiment folder whose router and with-ROI model are the same tiny classifier (one
    model is enough to check the routing) and whose without-ROI groups are constants."""
    manifest = synthetic_cache(roi_images(24), **ROI_CACHE)
    frame = read_manifest(manifest)
    folder = tmp_path_factory.mktemp("roi_aware")
    config = load_finetune_config(None, [f"{key}={value}" for key, value in SETTINGS.items()])
    run = finetune(frame[frame["split"] != "test"], "random:tiny", "classify", config, folder / "seed_0" / "stratified" / "pooled_with_roi")
    (folder / "config.yaml").write_text("output_dir: x\n")
    groups = [{"group": f"{view}_{stratum}", "model": "pooled_with_roi" if stratum == "with_roi" else f"constant_{view}"}
              for view in ("RCC", "LCC", "RMLO", "LMLO") for stratum in ("with_roi", "without_roi")]  # fmt: skip
    models = {"pooled_with_roi": {"run_dir": "/elsewhere/seed_0/stratified/pooled_with_roi", "threshold": run.threshold}}
    models.update({f"constant_{view}": {"constant": 0.25 if view.startswith("R") else 0.75} for view in ("RCC", "LCC", "RMLO", "LMLO")})
    # The router: the same run, calling "ROI present" above its median test probability. Its run
    # folder is saved under another root, as after the experiment folder moved.
    test = frame[frame["split"] == "test"]
    scores = predict_with_run(run.run_dir, test)["probability"]
    router = {"kind": "classifier", "run_dir": str(run.run_dir), "threshold": float(np.median(scores)), "chosen_on": "test"}
    outcome = {"seed": 0, "groups": groups, "router": router, "models": models}
    (folder / "seed_0" / "outcome.json").write_text(json.dumps(outcome))
    return folder, manifest, run, outcome, test, scores.to_numpy()


def test_images_are_routed_and_scored_by_their_group_s_model(experiment, tmp_path):
    folder, manifest, run, outcome, test, scores = experiment
    assert is_roi_aware_folder(folder)
    out = predict_routed(folder, manifest, tmp_path / "out", PredictSettings(saliency=2, num_workers=0, n_boot=20, progress=False))
    images = out.images.set_index("image_id").loc[test["image_id"]]
    routed = scores >= outcome["router"]["threshold"]
    view = (test["laterality"] + test["view"]).to_numpy()
    assert (images["route"].to_numpy() == [f"{v}_{'with_roi' if r else 'without_roi'}" for v, r in zip(view, routed)]).all()
    assert np.allclose(images["router_score"], scores, atol=1e-6)
    # Routed with an ROI: the classifier's own probability and threshold; without: the constant.
    with_roi = images[routed]
    assert np.allclose(with_roi["probability"], scores[routed], atol=1e-6)
    assert (with_roi["decision"] == (with_roi["probability"] >= run.threshold)).all()
    without = images[~routed]
    expected = np.where(pd.Series(view[~routed]).str.startswith("R"), 0.25, 0.75)
    assert np.allclose(without["probability"], expected) and (without["decision"] == (expected >= 0.5)).all()
    # A breast is positive where any of its images is; metrics are threshold-free.
    breasts = out.breasts.set_index(["study_id", "laterality"])
    any_positive = out.images.groupby(["study_id", "laterality"])["decision"].max()
    assert (breasts["decision"] == any_positive.loc[breasts.index]).all()
    assert "sensitivity" not in out.metrics["levels"]["breast"] and "roc_auc" in out.metrics["levels"]["breast"]
    summary = json.loads((out.out_dir / "predict.json").read_text())
    assert summary["model"]["procedure"] == "deployable" and sum(summary["routes"].values()) == len(out.images)
    saliency = json.loads((out.out_dir / "saliency" / "saliency.json").read_text())
    assert len(saliency["images"]) == 2 and all(out.images.set_index("image_id").loc[e["image_id"], "model"] == "pooled_with_roi"
                                                for e in saliency["images"])  # constants have no map  # fmt: skip


def test_a_missing_seed_is_named(experiment, tmp_path):
    folder, manifest, *_ = experiment
    with pytest.raises(FileNotFoundError, match="seed_3"):
        predict_routed(folder, manifest, tmp_path / "out", PredictSettings(progress=False), seed=3)
