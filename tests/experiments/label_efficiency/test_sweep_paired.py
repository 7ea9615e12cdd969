"""Labels saved only where the data show them: the report's paired comparisons on sweep folders
written here by hand, each run with a predictions.csv whose scores carry as much of the label
as the test says. The controls are scores independent of the label (chance) and the same
scores for both inits (no difference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vismae.paired import compare_points, pr_aucs, roc_aucs
from vismae.experiments.label_efficiency.report import build_report

FRACTIONS = (0.25, 1.0)
PATIENTS = 80  # two test images each


@pytest.mark.parametrize("decimals", [1, 8])  # many ties, and almost none
def test_vectorized_aucs_match_sklearn(decimals):
    rng = np.random.default_rng(decimals)
    target = rng.integers(0, 2, 50)
    scores = np.round(rng.random((4, 50)), decimals)
    np.testing.assert_allclose(roc_aucs(target, scores), [roc_auc_score(target, row) for row in scores], rtol=1e-12)
    np.testing.assert_allclose(pr_aucs(target, scores), [average_precision_score(target, row) for row in scores], rtol=1e-12)
    assert np.isnan(roc_aucs(np.ones(5, dtype=int), scores[:, :5])).all()


def images_and_patients():
    patients = np.repeat([f"p{i:03d}" for i in range(PATIENTS)], 2)
    target = np.repeat(np.arange(PATIENTS) % 2, 2)  # a patient's two views share the label
    return patients, target


def predictions(signal: float, seed: int) -> pd.DataFrame:
    """A run's test predictions: probability = signal x label + noise (signal 0: chance)."""
    patients, target = images_and_patients()
    noise = np.random.default_rng(seed).normal(0, 1, len(target))
    probability = 1 / (1 + np.exp(-(signal * target + noise)))
    image_ids = [f"{patient}_{view}" for patient, view in zip(patients, ["CC", "MLO"] * PATIENTS)]
    return pd.DataFrame({"image_id": image_ids, "patient_id": patients, "split": "test", "target": target, "probability": probability})


def write_sweep(folder: Path, signal: dict[tuple[str, float], float], seeds=(0, 1, 2)) -> None:
    """plan.json and, per run, predictions.csv and the result.json computed from it."""
    inits = sorted({init for init, _ in signal})
    runs = [f"f{f:g}_init-{init}_s{seed}" for seed in seeds for f in FRACTIONS for init in inits]
    plan = {"task": "classify", "score_split": "test", "metrics": ["roc_auc", "pr_auc"], "baseline": "random",
            "inits": {init: f"{init}.safetensors" if init != "random" else "random:tiny" for init in inits},
            "fractions": list(FRACTIONS), "seeds": list(seeds), "folds": [None], "manifest": "cache/manifest.csv", "runs": runs}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    for index, name in enumerate(runs):
        fraction, init, seed = float(name.split("_")[0][1:]), name.split("_")[1][5:], int(name.split("_s")[-1])
        table = predictions(signal[(init, fraction)], seed=1000 * seed + index)
        (folder / "runs" / name).mkdir(parents=True)
        table.to_csv(folder / "runs" / name / "predictions.csv", index=False)
        row = {"run": name, "fraction": fraction, "init": init, "seed": seed, "fold": None, "train_images": int(200 * fraction),
               "train_patients": int(50 * fraction), "test_roc_auc": roc_auc_score(table["target"], table["probability"]),
               "test_pr_auc": 0.5, "test_n": len(table), "test_positives": int(table["target"].sum())}  # fmt: skip
        (folder / "runs" / name / "result.json").write_text(json.dumps(row))


def statement(folder: Path, init: str = "ours") -> pd.Series:
    saved = pd.read_csv(folder / "report" / "labels_saved.csv")
    return saved[(saved["metric"] == "roc_auc") & (saved["init"] == init)].iloc[0]


def test_a_clear_gain_is_claimed_and_chance_noise_is_not(tmp_path):
    # ours at 25 % as good as random at 100 %, and far better than random at 25 %.
    helps = {("ours", 0.25): 2.0, ("ours", 1.0): 2.2, ("random", 0.25): 0.3, ("random", 1.0): 2.0}
    write_sweep(tmp_path / "helps", helps)
    build_report(tmp_path / "helps")
    shown = statement(tmp_path / "helps")
    assert shown["shown"] and shown["labels_saved"] == pytest.approx(0.75)
    assert "saving 75 %" in shown["statement"] and "beats random on the same labels by +" in shown["statement"]

    # The control: every score independent of the label. The means still cross by luck (the
    # demo's 0.514 against 0.499), but no saving may be claimed and every point is at chance.
    chance = {key: 0.0 for key in helps}
    write_sweep(tmp_path / "chance", chance)
    build_report(tmp_path / "chance")
    claimed = statement(tmp_path / "chance")
    assert not claimed["shown"] and pd.isna(claimed["labels_saved"])
    assert "saving" not in claimed["statement"] and "scores at chance" in claimed["statement"]
    paired = pd.read_csv(tmp_path / "chance" / "report" / "paired.csv").query("metric == 'roc_auc'")
    assert paired["at_chance"].all() and not pd.read_csv(tmp_path / "helps" / "report" / "paired.csv").query(
        "metric == 'roc_auc' and fraction == 1.0")["at_chance"].any()  # fmt: skip
    summary = (tmp_path / "chance" / "report" / "summary.md").read_text()
    assert "AT CHANCE" in summary and "saving" not in summary.split("How labels saved are defined")[0]


def test_means_that_reach_the_bar_without_a_paired_difference_are_not_distinguishable(tmp_path):
    # Both inits learn, ours a shade better: its mean at 25 % reaches random's 100 % score, but
    # the paired difference at 25 % holds zero.
    same = {("ours", 0.25): 1.6, ("ours", 1.0): 1.7, ("random", 0.25): 1.5, ("random", 1.0): 1.5}
    write_sweep(tmp_path, same)
    build_report(tmp_path)
    paired = pd.read_csv(tmp_path / "report" / "paired.csv").set_index(["metric", "init", "fraction"])
    ours = paired.loc[("roc_auc", "ours", 0.25)]
    assert ours["versus_baseline_low"] < 0 < ours["versus_baseline_high"]
    assert not ours["at_chance"]
    row = statement(tmp_path)
    assert row["reached"] == 0.25 and not row["shown"] and pd.isna(row["labels_saved"])
    assert "not distinguishable from random trained on the same labels" in row["statement"]
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Paired differences, mean roc_auc minus random's" in summary


def test_a_paired_difference_cancels_what_both_runs_share():
    # Two inits whose scores differ by a small constant shift on the positives: the patients'
    # shared difficulty cancels, so the paired interval is narrower than either AUC's.
    patients, target = images_and_patients()
    shared = np.random.default_rng(0).normal(0, 1, len(target)) + 0.8 * target
    a = pd.DataFrame({"image_id": np.arange(len(target)).astype(str), "patient_id": patients, "target": target, "probability": shared + 0.3 * target})
    b = a.assign(probability=shared)
    result = compare_points("classify", "roc_auc", {"a": [a], "b": [b]}, {"difference": ("a", "b")}, n_boot=300)
    assert result["difference"]["value"] == pytest.approx(result["a"]["value"] - result["b"]["value"])
    difference_width = result["difference"]["high"] - result["difference"]["low"]
    assert difference_width < result["a"]["high"] - result["a"]["low"]
    assert result["difference"]["low"] > 0  # shown better, though the AUCs' own intervals overlap
    assert result["a"]["low"] < result["b"]["high"]
    same = compare_points("classify", "roc_auc", {"a": [b], "b": [b]}, {"difference": ("a", "b")}, n_boot=50)
    assert (same["difference"]["low"], same["difference"]["high"]) == (0.0, 0.0)
