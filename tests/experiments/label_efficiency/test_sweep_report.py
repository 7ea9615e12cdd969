"""The label-efficiency report: labels saved on hand-made curves, and the files rebuilt from
sweep folders written here by hand (finished and partial), the plot's data checked against
results.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vismae.cli import main
from vismae.experiments.label_efficiency.report import aggregate, build_report, labels_saved, reached_from

FRACTIONS = (0.1, 0.5, 1.0)
INITS = ("ours", "random")


def curve(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["init", "fraction", "runs", "mean", "min", "max"])


def test_reached_from_needs_every_larger_fraction_at_the_bar():
    assert reached_from([0.1, 0.5, 1.0], [0.6, 0.8, 0.9], 0.7) == 0.5
    assert reached_from([0.1, 0.5, 1.0], [0.8, 0.6, 0.9], 0.7) == 1.0  # a chance touch at 10 % does not count
    assert reached_from([0.1, 0.5, 1.0], [0.8, 0.9, 0.6], 0.7) is None
    assert reached_from([1.0, 0.1, 0.5], [0.9, 0.75, float("nan")], 0.7) == 1.0  # unordered; NaN is not reached


def test_labels_saved_on_a_hand_example():
    table = curve(
        [
            ("random", 0.25, 3, 0.60, 0.58, 0.62), ("random", 0.5, 3, 0.65, 0.63, 0.67), ("random", 1.0, 3, 0.70, 0.68, 0.72),
            ("ours", 0.25, 3, 0.66, 0.60, 0.69), ("ours", 0.5, 3, 0.71, 0.69, 0.73), ("ours", 1.0, 3, 0.74, 0.73, 0.75),
            ("dips", 0.25, 3, 0.71, 0.70, 0.72), ("dips", 0.5, 3, 0.69, 0.66, 0.71), ("dips", 1.0, 3, 0.72, 0.71, 0.73),
            ("weak", 0.25, 3, 0.50, 0.49, 0.51), ("weak", 1.0, 3, 0.60, 0.55, 0.65),
        ]
    )  # fmt: skip
    bar, reaches = labels_saved(table, "random", ["ours", "random", "dips", "weak", "absent"])
    assert (bar.init, bar.value, bar.low, bar.high, bar.runs) == ("random", 0.70, 0.68, 0.72, 3)
    found = {reach.init: reach for reach in reaches}
    assert set(found) == {"ours", "dips", "weak"}  # the baseline is the bar, not a contender
    # ours: mean 0.71 >= 0.70 from 50 % on; best runs (0.69) beat random's worst (0.68) from
    # 25 %; worst runs (0.73) beat random's best (0.72) only at 100 %.
    ours = found["ours"]
    assert (ours.reached, ours.range_low, ours.range_high) == (0.5, 0.25, 1.0)
    assert ours.saved == pytest.approx(0.5)
    assert "with 50 % of the labels, saving 50 %" in ours.describe(bar) and "25 % to 100 %" in ours.describe(bar)
    assert found["dips"].reached == 1.0  # 0.71 at 25 % but 0.69 at 50 %
    weak = found["weak"]
    assert (weak.reached, weak.range_low, weak.range_high) == (None, None, None)
    assert "not even with its best runs" in weak.describe(bar)
    # No bar until a baseline run on all labels has finished.
    assert labels_saved(table[table["fraction"] < 1], "random", ["ours"]) == (None, [])


# --- sweep folders written by hand --------------------------------------------------------


def run_name(fraction: float, init: str, seed: int) -> str:
    return f"f{fraction:g}_init-{init}_s{seed}"


def write_sweep(folder: Path, seeds=(0, 1, 2), finished=None, failed=()) -> list[str]:
    """plan.json for FRACTIONS x INITS x seeds and a result.json per finished run; scores rise
    with the fraction, ``ours`` a little higher, seeds scatter them."""
    rng = np.random.default_rng(0)
    planned = [run_name(f, init, seed) for seed in seeds for f in FRACTIONS for init in INITS]
    plan = {"task": "classify", "score_split": "test", "metrics": ["roc_auc", "pr_auc"], "baseline": "random",
            "inits": {"ours": "runs/pretrain/encoder.safetensors", "random": "random:tiny"}, "fractions": list(FRACTIONS),
            "seeds": list(seeds), "folds": [None], "manifest": "cache/manifest.csv", "runs": planned}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    for seed in seeds:
        for fraction in FRACTIONS:
            for init in INITS:
                name = run_name(fraction, init, seed)
                if finished is not None and name not in finished:
                    continue
                auc = 0.6 + 0.15 * fraction + 0.05 * (init == "ours") + rng.normal(0, 0.02)
                row = {"run": name, "fraction": fraction, "init": init, "seed": seed, "fold": None,
                       "train_images": int(200 * fraction), "train_patients": int(50 * fraction), "train_positives": int(60 * fraction),
                       "test_roc_auc": auc, "test_pr_auc": auc - 0.2, "test_n": 120, "test_positives": 30}  # fmt: skip
                (folder / "runs" / name).mkdir(parents=True)
                (folder / "runs" / name / "result.json").write_text(json.dumps(row))
    for name in failed:
        (folder / "runs" / name).mkdir(parents=True)
        (folder / "runs" / name / "error.txt").write_text("RuntimeError: out of memory")
    return planned


def test_the_plot_and_its_data_match_results_csv(tmp_path):
    planned = write_sweep(tmp_path)
    out = build_report(tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["run"]) == planned  # every finished run, in plan order
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    curves = pd.read_csv(out / "curves.csv")
    for metric in ("roc_auc", "pr_auc"):
        # The aggregation recomputed here from results.csv alone.
        expected = results.groupby(["init", "fraction"])[f"test_{metric}"].agg(["count", "mean", "std", "min", "max"])
        got = curves[curves["metric"] == metric].set_index(["init", "fraction"]).sort_index()
        assert list(got.index) == list(expected.index)
        assert (got["runs"] == expected["count"]).all()
        for column in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(got[column], expected[column], rtol=1e-9)
    np.testing.assert_allclose(curves.query("metric == 'roc_auc' and fraction == 0.5")["train_images"], 100)

    saved = pd.read_csv(out / "labels_saved.csv").query("metric == 'roc_auc'").set_index("init")
    bar = results.query("init == 'random' and fraction == 1.0")["test_roc_auc"].mean()
    assert saved.loc["ours", "bar"] == pytest.approx(bar)
    summary = (out / "summary.md").read_text()
    assert "Complete: all 18 planned runs finished." in summary
    assert saved.loc["ours", "statement"] in summary and "test split (120 images, 30 positives)" in summary


def test_vismae_report_rebuilds_a_partial_sweep(tmp_path, capsys):
    done = [run_name(f, init, 0) for f in FRACTIONS for init in INITS] + [run_name(0.1, "ours", 1), run_name(1.0, "random", 1)]
    write_sweep(tmp_path, seeds=(0, 1), finished=set(done), failed=[run_name(0.5, "ours", 1)])
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "PARTIAL: 8 of 12 planned runs finished; 1 failed" in printed and "3 not run yet" in printed
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["run"]) == sorted(done)
    curves = pd.read_csv(tmp_path / "report" / "curves.csv").query("metric == 'roc_auc'").set_index(["init", "fraction"])
    assert curves.loc[("ours", 0.1), "runs"] == 2 and curves.loc[("ours", 0.5), "runs"] == 1
    assert (tmp_path / "report" / "label_efficiency.png").is_file()


def test_a_report_before_the_bar_exists_says_so(tmp_path):
    write_sweep(tmp_path, seeds=(0,), finished={run_name(0.1, "ours", 0), run_name(0.1, "random", 0)})
    summary = (build_report(tmp_path) / "summary.md").read_text()
    assert "no bar yet (random has no finished run with 100 % of the labels)" in summary
    assert pd.read_csv(tmp_path / "report" / "labels_saved.csv").empty


def test_vismae_report_refuses_a_folder_that_is_no_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "plan.json: no such file" in capsys.readouterr().err


def test_aggregate_leaves_undefined_scores_out():
    results = pd.DataFrame({"init": ["a"] * 3, "fraction": [0.5] * 3, "train_images": [10] * 3, "train_patients": [5] * 3,
                            "test_roc_auc": [0.6, float("nan"), 0.8]})  # fmt: skip
    row = aggregate(results, "test_roc_auc").iloc[0]
    assert (row["runs"], row["mean"], row["min"], row["max"]) == (2, pytest.approx(0.7), 0.6, 0.8)


def test_runs_whose_interval_rests_on_too_few_patients_are_marked(tmp_path):
    write_sweep(tmp_path, seeds=(0, 1))
    # Seed 1's 10 % ours run scored a test split with one malignant patient: its ROC AUC was
    # undefined in 370 of 1000 resamples. 50 of 1000 (5 %) is still a measurement.
    for name, undefined in ((run_name(0.1, "ours", 1), 370), (run_name(0.5, "ours", 1), 50)):
        path = tmp_path / "runs" / name / "result.json"
        row = json.loads(path.read_text())
        path.write_text(json.dumps({**row, "test_roc_auc_undefined": undefined, "test_pr_auc_undefined": 0, "test_n_boot": 1000}))
    out = build_report(tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["test_roc_auc_undefined"].notna().sum() == 2  # the column beside _low/_high
    curves = pd.read_csv(out / "curves.csv").set_index(["metric", "init", "fraction"])
    assert curves.loc[("roc_auc", "ours", 0.1), "unreliable_runs"] == 1
    assert curves.loc[("roc_auc", "ours", 0.5), "unreliable_runs"] == 0
    assert curves["unreliable_runs"].sum() == 1  # runs without the count (older ones) pass
    summary = (out / "summary.md").read_text()
    roc_auc = summary.split("## roc_auc")[1].split("## pr_auc")[0]
    assert "(2; UNRELIABLE interval in 1)" in roc_auc and "UNRELIABLE: in 1 of 12 runs" in roc_auc
    assert "UNRELIABLE" not in summary.split("## pr_auc")[1]


def test_a_sweep_can_score_the_papers_f_score(tmp_path):
    from vismae.config import ConfigError
    from vismae.experiments.label_efficiency.config import load_sweep_config

    given = ["manifest=cache/manifest.csv", "inits={random: random:tiny}"]
    config = load_sweep_config(None, [*given, "metrics=[f_sens_spec, f1]"])
    assert config.metric_names[:2] == ["f_sens_spec", "f1"]
    with pytest.raises(ConfigError, match="f_score"):
        load_sweep_config(None, [*given, "metrics=[f_score]"])
