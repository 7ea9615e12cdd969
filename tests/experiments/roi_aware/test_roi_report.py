"""The ROI-aware report: files that agree with each other, the annotation flag everywhere,
seeds aggregated, the paper's numbers beside ours, rebuilt from the folder alone."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
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
from vismae.experiments.roi_aware.layout import PREDICTIONS_FILE, seed_dir
from vismae.experiments.roi_aware.plot import roc_figure
from vismae.experiments.roi_aware.markdown import fmt_interval
from vismae.experiments.roi_aware.report import (
    CLASSIFICATION_METRICS,
    MODEL_FREE,
    RANKING_METRICS,
    build_report,
    difference_verdict,
    json_safe,
    scored_metrics,
)
from vismae.experiments.roi_aware.rules import ANNOTATION_WARNING, PROCEDURES, procedure_label, procedures_for

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
        for name in RANKING_METRICS:
            entry = row["metrics"][name]
            # The flag is the metrics module's rule on the entry's own numbers, the same in both files.
            assert entry["at_chance"] == (None if entry["value"] is None else metrics.at_chance(nan_for_null(entry), name))
            flag = csv_row[f"{name}_at_chance"]
            assert pd.isna(flag) if entry["at_chance"] is None else flag == entry["at_chance"]
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
    # An AUC whose interval cannot be given is not shown better than chance either.
    assert scored["metrics"]["roc_auc"]["at_chance"] is True and fmt_interval(scored["metrics"]["roc_auc"]).endswith("(at chance)")


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


# ---------------------------------------------------------------------------------------------
# At chance: the finished run's predictions with the models' scores replaced, and the report
# rebuilt from them. The annotation-only floor reads annotations, not a model: it is kept.

MACHINERY_ONLY = "every model scores at chance on this data: this report shows the machinery only, not the method"
MODELS = ("comparative", "annotated", "deployable")  # the procedures a model scores, paper population


def noise(rows: pd.DataFrame) -> np.ndarray:
    """The control: each image's score drawn from a generator seeded by its id, independent of
    the target, and the same whichever procedure or seed scores it (one draw, not one per row)."""
    return np.array([np.random.default_rng(zlib.crc32(image_id.encode())).random() for image_id in rows["image_id"]])


def separating(rows: pd.DataFrame) -> np.ndarray:
    """Scores that separate the classes: every positive above every negative."""
    return 0.25 + 0.5 * rows["target"].to_numpy() + 0.2 * noise(rows)


def aware_learns(rows: pd.DataFrame) -> np.ndarray:
    """The ROI-aware procedures' scores separate the classes; the plain (comparative) one scores
    every image alike: no information, ROC AUC 0.5 in every resample."""
    return np.full(len(rows), 0.5) if rows["procedure"].iloc[0] == "comparative" else separating(rows)


def rescored(finished, folder: Path, score) -> Path:
    """The finished run copied to ``folder``, every model's score replaced by ``score(rows)``
    (its decision at 0.5), and its report rebuilt; returns the report folder."""
    config, _ = finished
    shutil.copytree(config.output_dir, folder)
    for seed in config.seeds:
        path = seed_dir(folder, seed) / PREDICTIONS_FILE
        table = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
        for procedure, rows in table.groupby("procedure"):
            if procedure not in MODEL_FREE:
                table.loc[rows.index, "score"] = score(rows)
        table["decision"] = np.where(table["procedure"].isin(MODEL_FREE), table["decision"], table["score"] >= 0.5).astype(int)
        table.to_csv(path, index=False)
    return build_report(dataclasses.replace(config, output_dir=str(folder)))


@pytest.fixture(scope="module")
def rescored_reports(finished, tmp_path_factory):
    """Report folders of the finished run rescored: noise, separating, aware_learns."""
    root = tmp_path_factory.mktemp("rescored")
    return {score.__name__: rescored(finished, root / score.__name__, score) for score in (noise, separating, aware_learns)}


def cells(lines: list[str], *first: object) -> list[str]:
    """The cells of the one markdown table row whose first cells are ``first``."""
    start = "| " + " | ".join(map(str, first)) + " |"
    rows = [line for line in lines if line.startswith(start)]
    assert len(rows) == 1, (start, rows)
    return [cell.strip() for cell in rows[0].strip("|").split(" | ")]


def test_noise_scores_are_marked_at_chance_and_the_report_says_it_shows_the_machinery_only(rescored_reports):
    roc_column = 5 + CLASSIFICATION_METRICS.index("roc_auc")  # after seed, procedure, scope, n, positives
    for name in ("noise", "separating"):  # the control, and scores that learn the target
        folder, chance = rescored_reports[name], name == "noise"
        report = json.loads((folder / "results.json").read_text())
        lines = (folder / "results.md").read_text().splitlines()
        models = [row for row in report["results"] if row["scope"] == "merged" and row["procedure"] in MODELS]
        assert len(models) == 2 * len(MODELS)
        for row in models:
            # The headline metric. PR AUC's flag follows the same rule (checked against the
            # metrics module above); on 6 test patients a noise draw clears it now and then.
            assert row["metrics"]["roc_auc"]["at_chance"] is chance, (name, row["seed"], row["procedure"])
            assert chance or row["metrics"]["pr_auc"]["at_chance"] is False
            roc_cell = cells(lines, row["seed"], row["title"], "merged")[roc_column]
            assert roc_cell.endswith("(at chance)") is chance, (name, roc_cell)
        table = pd.read_csv(folder / "results.csv")
        merged = table[(table["scope"] == "merged") & table["procedure"].isin(MODELS)]
        assert (merged["roc_auc_at_chance"] == chance).all() and (chance or not merged["pr_auc_at_chance"].any())
        summary = pd.read_csv(folder / "summary.csv")
        summary = summary[(summary["scope"] == "merged") & (summary["metric"] == "roc_auc")].set_index("procedure")
        ours = pd.read_csv(folder / "paper_comparison.csv").dropna(subset=["roc_auc"]).set_index("procedure")
        for procedure in MODELS:
            assert summary.loc[procedure, "at_chance"] == chance and summary.loc[procedure, "seeds_at_chance"] == 2 * chance
            spread = cells(lines, procedure_label(procedure), "merged", 2)[3 + CLASSIFICATION_METRICS.index("roc_auc")]
            assert spread.endswith("(at chance)") is chance
            assert ours.loc[procedure, "roc_auc_at_chance"] == chance
        # The headline, second only to the title.
        assert (MACHINERY_ONLY in lines[2]) is chance and report["headline"]["every_model_at_chance"] is chance
        assert ("every model's merged ROC AUC is above chance" in lines[2]) is not chance
    # The floor scores no pixels, the same in both: ROI presence tells the label in this cache
    # (no malignant image without an ROI), so it is above chance even beside noise, and the
    # machinery-only line does not count it.
    floors = [
        [row["metrics"]["roc_auc"] for row in json.loads((rescored_reports[name] / "results.json").read_text())["results"]
         if row["procedure"] == "annotation_only" and row["scope"] == "merged"]
        for name in ("noise", "separating")
    ]  # fmt: skip
    assert floors[0] == floors[1] and not any(entry["at_chance"] for entry in floors[0])


def test_the_headline_names_the_models_at_chance(rescored_reports):
    lines = (rescored_reports["aware_learns"] / "results.md").read_text().splitlines()
    assert MACHINERY_ONLY not in lines[2] and "at chance on this data" in lines[2]
    assert procedure_label("comparative") in lines[2] and procedure_label("deployable") not in lines[2]


def test_roi_aware_is_called_better_than_plain_only_where_a_paired_interval_says_so(rescored_reports, finished):
    _, folder = finished
    verdicts = {}
    for name, report_folder in {**rescored_reports, "finished": folder}.items():
        differences = json.loads((report_folder / "results.json").read_text())["differences"]
        assert {(row["seed"], row["procedure"], row["baseline"]) for row in differences} == {
            (seed, aware, "comparative") for seed in (0, 1) for aware in ("annotated", "deployable")
        }
        verdicts[name] = {row["verdict"] for row in differences}
        lines = (report_folder / "results.md").read_text().splitlines()
        for row in differences:
            # The verdict is what the paired interval says, never what the two values alone say.
            expected = "higher" if row["low"] > 0 else "lower" if row["high"] < 0 else "not distinguishable"
            assert row["verdict"] == expected
            words = {"higher": "ROI-aware higher", "lower": "ROI-aware lower"}.get(expected, expected)
            assert cells(lines, row["seed"], row["title"], row["baseline_title"])[-1] == words
    # The same scores, or both perfect: no difference to claim. ROI-aware separating, plain
    # uninformative: a real gap, claimed.
    assert verdicts["noise"] == verdicts["separating"] == {"not distinguishable"} and verdicts["aware_learns"] == {"higher"}


@pytest.mark.parametrize(
    ("value", "low", "high", "undefined", "verdict"),
    [
        (0.15, -0.20, 0.55, 0, "not distinguishable"),  # a gap in the values the interval does not support
        (0.15, 0.01, 0.30, 0, "higher"),
        (-0.15, -0.30, -0.01, 0, "lower"),
        (0.15, 0.01, 0.30, 40, "not distinguishable"),  # 40 % of resamples undefined: unreliable
        (math.nan, math.nan, math.nan, 100, "undefined"),
    ],
)
def test_a_difference_is_claimed_only_where_its_interval_excludes_zero(value, low, high, undefined, verdict):
    entry = {"value": value, "low": low, "high": high, "undefined": undefined, "n_boot": 100, "n_positive": 3, "n_negative": 9}
    assert difference_verdict(entry) == verdict
