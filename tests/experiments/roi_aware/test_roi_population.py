"""The population the ROI-aware numbers are of: the paper's (benign and malignant test images
only) said in every report, the screening one (normal, BI-RADS 1, test images added as
negatives to the deployable procedure) scored beside it on request; and an encoder pretrained on
test images marked in the report. With the stand-in engine of roi_synthetic.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from roi_synthetic import ROI_CACHE, PixelStatsEngine, roi_images

from vismae.config import ConfigError
from vismae.data.manifest import read_manifest
from vismae.experiments.roi_aware.config import load_roi_aware_config
from vismae.experiments.roi_aware.experiment import experiment_frame, run_roi_aware, screening_normals
from vismae.experiments.roi_aware.rules import BLIND_COLUMNS
from vismae.models.formats.vismae_export import write_pretraining_images


def experiment_config(manifest, output_dir, *overrides):
    return load_roi_aware_config(
        None,
        [f"manifest={manifest}", f"output_dir={output_dir}", "init=random:tiny", "finetune.data.val_fraction=0.25",
         "small_groups.min_images=4", "small_groups.min_per_class=1", "finetune.eval.n_boot=50", *overrides],
    )  # fmt: skip


@pytest.fixture(scope="module")
def manifest(synthetic_cache):
    # 60 patients: two of them (29 and 59) are test patients with a normal left breast.
    return synthetic_cache(roi_images(patients=60), **ROI_CACHE)


@pytest.fixture(scope="module")
def normal_test_ids(manifest) -> set[str]:
    rows = read_manifest(manifest)
    return set(rows.loc[(rows["label"] == "normal") & (rows["split"] == "test"), "image_id"])


@pytest.fixture(scope="module")
def screening(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("screening")
    engine = PixelStatsEngine()
    folder = run_roi_aware(experiment_config(manifest, out, "population=screening"), engine)
    predictions = pd.read_csv(out / "seed_0" / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    outcome = json.loads((out / "seed_0" / "outcome.json").read_text())
    return SimpleNamespace(out=out, folder=folder, engine=engine, predictions=predictions, outcome=outcome)


def test_screening_adds_the_normal_test_images_to_the_deployable_procedure_only(screening, normal_test_ids):
    assert len(normal_test_ids) == 4
    predictions = screening.predictions
    deployable = predictions[predictions["procedure"] == "deployable"].set_index("image_id")
    wider = predictions[predictions["procedure"] == "deployable_screening"].set_index("image_id")
    assert set(wider.index) == set(deployable.index) | normal_test_ids and not normal_test_ids & set(deployable.index)
    # The paper's images keep the very scores and decisions of the deployable procedure.
    same = wider.loc[deployable.index]
    assert (same["score"] == deployable["score"]).all() and (same["decision"] == deployable["decision"]).all()
    # The normal ones are negatives, routed by the router and scored by the model their route names.
    normals = wider.loc[sorted(normal_test_ids)]
    assert (normals["target"] == 0).all()
    model_of = {plan["group"]: plan["model"] for plan in screening.outcome["groups"]}
    assert (normals["model"] == normals["route"].map(model_of)).all()
    # Every other procedure is the paper's population alone.
    others = predictions[~predictions["procedure"].isin(["deployable_screening"])]
    assert not normal_test_ids & set(others["image_id"])


def test_normal_images_never_reach_training_and_are_scored_blind(screening, normal_test_ids):
    for frame in screening.engine.trained:
        assert "normal" not in set(frame["label"]) and not normal_test_ids & set(frame["image_id"])
    scored = [rows for rows in screening.engine.predicted if normal_test_ids & set(rows["image_id"])]
    assert scored  # the router and the models they were routed to
    for rows in scored:
        assert list(rows.columns) == list(BLIND_COLUMNS)


def test_the_report_shows_both_populations_side_by_side(screening):
    table = pd.read_csv(screening.folder / "results.csv")
    merged = table[table["scope"] == "merged"].set_index("procedure")
    paper, wider = merged.loc["deployable"], merged.loc["deployable_screening"]
    assert (paper["population"], wider["population"]) == ("paper", "screening")
    assert wider["n"] == paper["n"] + 4 and wider["positives"] == paper["positives"]
    assert wider["negatives"] == paper["negatives"] + 4
    text = (screening.folder / "results.md").read_text()
    assert "Population: the benign and malignant images only (BI-RADS 2-5" in text and "as in the paper (here 4 test images)" in text
    assert "A deployed model does not get to assume this" in text
    assert "Screening population (population: screening)" in text and "(4 added)" in text
    assert sum("screening population: normal (BI-RADS 1) test images added as negatives" in line for line in text.splitlines()) >= 2
    report = json.loads((screening.folder / "results.json").read_text())
    assert report["experiment"]["population"] == "screening" and "deployable_screening" in report["procedures"]


def test_the_paper_population_says_what_it_leaves_out_and_screening_can_be_added_later(manifest, tmp_path):
    folder = run_roi_aware(experiment_config(manifest, tmp_path), PixelStatsEngine())
    text = (folder / "results.md").read_text()
    assert "Population: the benign and malignant images only" in text and "as in the paper (here 4 test images)" in text
    assert "(population: screening scores the deployable procedure" in text
    table = pd.read_csv(folder / "results.csv")
    assert set(table["population"]) == {"paper"} and "deployable_screening" not in set(table["procedure"])
    # population changes no trained model: the same folder takes it.
    folder = run_roi_aware(experiment_config(manifest, tmp_path, "population=screening"), PixelStatsEngine())
    assert "deployable_screening" in set(pd.read_csv(folder / "results.csv")["procedure"])


def test_screening_needs_normal_test_images_that_are_not_a_class(manifest, tmp_path):
    with pytest.raises(ConfigError, match="population: screening adds the 'normal' test images as negatives"):
        experiment_config(manifest, tmp_path, "population=screening", "finetune.data.negative=[benign,normal]")
    rows = read_manifest(manifest)
    without = rows[~((rows["label"] == "normal") & (rows["split"] == "test"))]
    frame = experiment_frame(without, experiment_config(manifest, tmp_path).finetune.data)
    with pytest.raises(ValueError, match="test split holds no normal"):
        screening_normals(without, frame)


def test_an_encoder_pretrained_on_test_images_is_marked_everywhere(manifest, tmp_path):
    rows = read_manifest(manifest)
    tested = sorted(rows.loc[(rows["split"] == "test") & (rows["label"] != "normal"), "image_id"])
    encoder = tmp_path / "encoder"
    write_pretraining_images(encoder, tested[:3] + ["elsewhere"])
    (encoder / "encoder.safetensors").write_bytes(b"")  # the stand-in engine never loads it
    folder = run_roi_aware(experiment_config(manifest, tmp_path / "run", f"init={encoder}"), PixelStatsEngine())
    assert json.loads((tmp_path / "run" / "data.json").read_text())["test_images_seen_in_pretraining"] == 3
    text = (folder / "results.md").read_text()
    assert f"WARNING: the encoder {encoder} was pretrained on 3 of the {len(tested)} test images" in text
    result_rows = [line for line in text.splitlines() if line.startswith("| 0 | ")]
    assert result_rows and all("[3 SEEN IN PRETRAINING]" in line for line in result_rows)
    # An init without a list marks nothing.
    plain = run_roi_aware(experiment_config(manifest, tmp_path / "plain"), PixelStatsEngine())
    assert "SEEN IN PRETRAINING" not in (plain / "results.md").read_text()
