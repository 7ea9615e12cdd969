"""The ROI-aware report: files that agree with each other, the annotation flag everywhere,
seeds aggregated, the paper's numbers beside ours, rebuilt from the folder alone."""

from __future__ import annotations

import json
import math

import cv2
import pandas as pd
import pytest
import yaml
from roi_synthetic import ROI_CACHE, PixelStatsEngine, roi_images

from vismae import cli, metrics
from vismae.config import ConfigError
from vismae.experiments.roi_aware import paper_numbers
from vismae.data.manifest import ManifestError, new_frame
from vismae.engine.finetune_config import FinetuneData
from vismae.experiments.roi_aware.experiment import experiment_frame, run_roi_aware
from vismae.experiments.roi_aware.config import load_roi_aware_config
from vismae.experiments.roi_aware.plot import roc_figure
from vismae.experiments.roi_aware.markdown import fmt_interval
from vismae.experiments.roi_aware.report import CLASSIFICATION_METRICS, build_report, json_safe, scored_metrics
from vismae.experiments.roi_aware.rules import ANNOTATION_WARNING, PROCEDURES, procedures_for

OVERRIDES = [
    "seeds=[0, 1]",
    "paper=vindr",
    "init=random:tiny",
    "finetune.data.val_fraction=0.25",
    "small_groups.min_images=4",
    "small_groups.min_per_class=1",
    "finetune.eval.n_boot=100",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_cache):
    manifest = synthetic_cache(roi_images(patients=32), **ROI_CACHE)
    out = tmp_path_factory.mktemp("run")
    config = load_roi_aware_config(None, [f"manifest={manifest}", f"output_dir={out}", *OVERRIDES])
    folder = run_roi_aware(config, PixelStatsEngine())
    return config, folder


def same(csv_value: float, json_value) -> bool:
    """Equal numbers, or undefined in both: NaN in the CSV, null in the JSON."""
    return math.isnan(csv_value) if json_value is None else csv_value == json_value


def nan_for_null(entry: dict) -> dict:
    return {part: math.nan if value is None else value for part, value in entry.items()}


def test_json_csv_and_markdown_hold_the_same_numbers(finished):
    _, folder = finished
    report = json.loads((folder / "results.json").read_text())
    table = pd.read_csv(folder / "results.csv").set_index(["seed", "procedure", "scope"])
    lines = (folder / "results.md").read_text().splitlines()
    assert len(report["results"]) == len(table) == 2 * len(procedures_for("paper")) * 5  # the paper's population
    for row in report["results"]:
        csv_row = table.loc[(row["seed"], row["procedure"], row["scope"])]
        assert (csv_row["n"], csv_row["positives"]) == (row["n"], row["positives"])
        assert csv_row["negatives"] == row["negatives"] == row["n"] - row["positives"]
        for name, entry in row["metrics"].items():
            for part in ("value", "low", "high", "undefined"):
                assert same(float(csv_row[name if part == "value" else f"{name}_{part}"]), entry[part]), (row["procedure"], name, part)
            # What the interval rests on: the row's positives and negatives, the report's resamples.
            assert (entry["n_positive"], entry["n_negative"]) == (row["positives"], row["negatives"])
            assert entry["n_boot"] == report["experiment"]["n_boot"] and 0 <= entry["undefined"] <= entry["n_boot"]
        cells = [row["seed"], row["title"], row["scope"], row["n"], row["positives"]]
        cells += [fmt_interval(nan_for_null(row["metrics"][name])) for name in CLASSIFICATION_METRICS]
        assert "| " + " | ".join(map(str, cells)) + " |" in lines


def test_a_split_with_one_malignant_patient_gets_no_interval():
    # 20 patients, one malignant and found: "1.000 (1.000-1.000)" would claim certainty.
    table = pd.DataFrame({"target": [1] + [0] * 19, "patient_id": [f"p{i}" for i in range(20)]})
    table["decision"] = [1] + [0] * 17 + [1, 1]
    table["score"] = [0.9] + [0.1 * (i % 8) for i in range(19)]
    scored = scored_metrics(table, n_boot=200)
    assert (scored["n"], scored["positives"], scored["negatives"], scored["patients"]) == (20, 1, 19, 20)
    sensitivity = scored["metrics"]["sensitivity"]
    assert (sensitivity["value"], sensitivity["low"], sensitivity["high"]) == (1.0, 1.0, 1.0)
    assert (sensitivity["n_positive"], sensitivity["n_negative"], sensitivity["n_boot"]) == (1, 19, 200)
    assert sensitivity["undefined"] == pytest.approx(200 * (19 / 20) ** 20, rel=0.25)  # resamples missing p0
    text = fmt_interval(sensitivity)
    share = round(100 * sensitivity["undefined"] / 200)
    assert text == f"1.000 (interval unreliable: undefined in {share} % of resamples)"
    assert "1.000-1.000" not in text
    # Specificity rests on 19 benign patients, defined in every resample: an ordinary interval.
    specificity = scored["metrics"]["specificity"]
    assert specificity["undefined"] == 0 and fmt_interval(specificity).startswith(f"{specificity['value']:.3f} (0.")
    assert "unreliable" in fmt_interval(scored["metrics"]["roc_auc"])


def test_the_experiment_refuses_rows_that_mix_dm_and_cesm_images():
    rows = [
        {"image_id": f"{kind}{n}", "patient_id": f"p{n}", "study_id": f"p{n}", "dataset": "cdd-cesm", "path": f"/x/{kind}{n}.png",
         "view": "CC", "laterality": "L", "label": ("benign", "malignant")[n % 2], "birads": None, "has_roi": False, "roi": [],
         "split": ("train", "test")[n % 2], "image_kind": kind, "mask_path": ""}
        for n in range(4) for kind in ("DM", "CESM")
    ]  # fmt: skip
    frame = new_frame(rows)
    with pytest.raises(ManifestError, match=r"one model per view and ROI group: the rows mix image kinds \(4 CESM and 4 DM images\)"):
        experiment_frame(frame, FinetuneData())
    assert len(experiment_frame(frame[frame["image_kind"] == "DM"], FinetuneData())) == 4


def test_undefined_metrics_are_json_null():
    report = {"metrics": {"sensitivity": {"value": math.nan, "low": 0.5}}, "rows": [math.nan, 1.0, "x"]}
    assert json.loads(json.dumps(json_safe(report), allow_nan=False)) == {
        "metrics": {"sensitivity": {"value": None, "low": 0.5}},
        "rows": [None, 1.0, "x"],
    }


def test_the_roc_plot_is_a_png(finished):
    _, folder = finished
    path = folder / "roc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) > 200


def test_procedures_using_test_annotations_say_so_everywhere(finished):
    _, folder = finished
    flagged = {name for name, procedure in PROCEDURES.items() if procedure.uses_test_annotations}
    assert flagged == {"annotated", "annotation_only"}
    table = pd.read_csv(folder / "results.csv")
    assert (table["uses_test_annotations"] == table["procedure"].isin(flagged)).all()
    assert (table["title"].str.contains(ANNOTATION_WARNING, regex=False) == table["procedure"].isin(flagged)).all()
    report = json.loads((folder / "results.json").read_text())
    assert {name for name, entry in report["procedures"].items() if entry["uses_test_annotations"]} == flagged
    predictions = pd.read_csv(folder.parent / "seed_0" / "predictions.csv")
    legends = [text.get_text() for axes in roc_figure(predictions).axes for text in axes.get_legend().get_texts()]
    assert sum(ANNOTATION_WARNING in text for text in legends) == len(flagged)
    assert len(legends) == len(procedures_for("paper"))


def test_seeds_are_kept_and_summarized(finished):
    _, folder = finished
    per_seed = pd.read_csv(folder / "results.csv")
    summary = pd.read_csv(folder / "summary.csv").set_index(["procedure", "scope", "metric"])
    assert set(per_seed["seed"]) == {0, 1}
    for (procedure, scope), rows in per_seed.groupby(["procedure", "scope"]):
        for name in CLASSIFICATION_METRICS:
            values = rows[name].dropna()
            stats = summary.loc[(procedure, scope, name)]
            if len(values):
                assert stats["mean"] == pytest.approx(values.mean())
                assert stats["min"] == pytest.approx(values.min()) and stats["max"] == pytest.approx(values.max())
    # The stand-in engine fits each seed on other rows: the seeds must not all agree.
    comparative = per_seed[(per_seed["procedure"] == "comparative") & (per_seed["scope"] == "merged")]
    assert comparative["roc_auc"].nunique() > 1 or comparative["sensitivity"].nunique() > 1


def test_the_papers_numbers_stand_beside_ours(finished):
    _, folder = finished
    comparison = json.loads((folder / "results.json").read_text())["paper"]
    published = {(entry["table"], entry["procedure"]): entry["metrics"] for entry in comparison["published"]}
    assert published[(5, "annotated")] == {"sensitivity": 0.93, "specificity": 0.87, "f_sens_spec": 0.90, "accuracy": 0.87}
    assert "harmonic mean of sensitivity and specificity" in comparison["f_score"]
    assert all("f_sens_spec" in entry["metrics"] for entry in comparison["ours"])
    assert published[(6, "comparative")]["sensitivity"] == 0.00
    assert {entry["procedure"] for entry in comparison["ours"]} == {"comparative", "annotated", "annotation_only", "deployable"}
    csv = pd.read_csv(folder / "paper_comparison.csv")
    assert csv.loc[(csv["table"] == 5) & (csv["procedure"] == "annotated"), "sensitivity"].item() == 0.93
    assert csv.loc[(csv["table"] == 5) & (csv["procedure"] == "annotated"), "f_sens_spec"].item() == 0.90
    text = (folder / "results.md").read_text()
    assert "Table 5 (Swin Transformer)" in text and "F(Se, Sp)" in text and "F1 implied" not in text


# The paper's Tables 5-8 as printed (sensitivity, specificity, F-score, accuracy), columns
# without and with consideration of ROI mask presence: a check that paper_numbers holds them.
PRINTED = {
    5: ((0.00, 1.00, 0.00, 0.85), (0.93, 0.87, 0.90, 0.87)),
    6: ((0.00, 1.00, 0.00, 0.85), (0.90, 0.86, 0.88, 0.87)),
    7: ((0.29, 0.68, 0.41, 0.48), (0.65, 0.65, 0.65, 0.65)),
    8: ((0.65, 0.65, 0.65, 0.65), (0.74, 0.61, 0.67, 0.68)),
}


def test_paper_numbers_hold_the_printed_tables():
    assert {table.table for table in paper_numbers.TABLES} == set(PRINTED)
    for table in paper_numbers.TABLES:
        comparative, stratified = PRINTED[table.table]
        assert tuple(table.comparative[m] for m in paper_numbers.PUBLISHED_METRICS) == comparative
        assert tuple(table.stratified[m] for m in paper_numbers.PUBLISHED_METRICS) == stratified


def implied_f1(row: dict[str, float], test_set: paper_numbers.TestSet) -> dict[str, float]:
    """The F1 that a published sensitivity and specificity would give on the published test
    set: binary (malignant as positive) and support-weighted over both classes; what shows
    that the paper's F-score is not an F1."""
    positives, negatives = test_set.positives, test_set.n - test_set.positives
    tp = row["sensitivity"] * positives
    tn = row["specificity"] * negatives
    fn, fp = positives - tp, negatives - tn

    def f1(hits: float, false_alarms: float, misses: float) -> float:
        denominator = 2 * hits + false_alarms + misses
        return 2 * hits / denominator if denominator else float("nan")

    malignant, benign = f1(tp, fp, fn), f1(tn, fn, fp)
    return {"binary": malignant, "weighted": (malignant * positives + benign * negatives) / test_set.n}


def test_the_papers_f_score_is_the_harmonic_mean_of_sensitivity_and_specificity():
    cells = [(table, row) for table in paper_numbers.TABLES for row in (table.comparative, table.stratified)]
    assert len(cells) == 8
    binary_misses = 0
    for table, row in cells:
        reproduced = metrics.f_sens_spec(row["sensitivity"], row["specificity"])
        assert round(reproduced, 2) == pytest.approx(row["f_sens_spec"]), (table.table, row)
        implied = implied_f1(row, paper_numbers.TEST_SETS[table.dataset])
        binary_misses += round(implied["binary"], 2) != row["f_sens_spec"]
    assert binary_misses > 0  # binary F1 is not the paper's F-score


def test_implied_f1_of_a_published_table():
    table5 = paper_numbers.published_for("vindr")[0]
    assert table5.table == 5
    implied = implied_f1(table5.stratified, paper_numbers.TEST_SETS["vindr"])
    # 0.93 x 198 malignant found, 0.13 x 1120 benign called malignant.
    tp, fp, fn = 0.93 * 198, 0.13 * 1120, 0.07 * 198
    assert implied["binary"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert implied["binary"] == pytest.approx(0.698, abs=1e-3) and implied["weighted"] == pytest.approx(0.890, abs=1e-3)
    with pytest.raises(ValueError, match="cbis"):
        paper_numbers.published_for("cbis-ddsm")


def test_the_report_rebuilds_from_the_folder_and_a_changed_config_is_refused(finished, tmp_path):
    config, folder = finished
    before = json.loads((folder / "results.json").read_text())
    (folder / "results.json").unlink()
    (folder / "roc.png").unlink()
    config_file = tmp_path / "experiment.yaml"
    config_file.write_text(yaml.safe_dump({"manifest": config.manifest, "output_dir": config.output_dir}))
    assert cli.main(["roi-aware", "--config", str(config_file), "--report-only", *OVERRIDES]) == 0
    assert json.loads((folder / "results.json").read_text()) == before
    assert (folder / "roc.png").is_file()
    assert build_report(config.with_absolute_paths()) == folder
    places = [f"manifest={config.manifest}", f"output_dir={config.output_dir}"]
    changed = load_roi_aware_config(None, [*places, *OVERRIDES, "small_groups.rule=constant"])
    with pytest.raises(ConfigError, match="small_groups.rule"):
        run_roi_aware(changed, PixelStatsEngine())
