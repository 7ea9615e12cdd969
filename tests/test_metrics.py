import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from vismae import metrics

# A confusion matrix worked by hand: at threshold 0.5 the predictions are 1 1 0 | 1 0 0 0 0,
# so tp=2 fn=1 fp=1 tn=4. Of the 3 x 5 positive-negative pairs the positives win 5 + 4 + 2.
HAND_TRUE = [1, 1, 1, 0, 0, 0, 0, 0]
HAND_SCORE = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.4, 0.05]


def scored_patients(n_patients: int, images_per_patient: int = 1, seed: int = 0, separation: float = 1.0):
    """Patients with a label and a noisy score; each patient's images are identical copies."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    score = 1 / (1 + np.exp(-(separation * (2 * label - 1) + rng.normal(size=n_patients))))
    repeat = lambda a: np.repeat(a, images_per_patient)  # noqa: E731
    return repeat(label), repeat(score), repeat(np.arange(n_patients))


def width(interval: dict) -> float:
    return interval["high"] - interval["low"]


# --- classification ----------------------------------------------------------------------


def test_classification_metrics_on_a_hand_worked_confusion_matrix():
    m = metrics.classification_metrics(HAND_TRUE, HAND_SCORE, threshold=0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 4)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # The harmonic mean of 2/3 and 4/5, not F1: it weighs the benign class as much as the malignant.
    assert m["f_sens_spec"] == pytest.approx(2 * (2 / 3) * (4 / 5) / (2 / 3 + 4 / 5))
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["roc_auc"] == pytest.approx(11 / 15)
    assert (m["n"], m["positives"], m["negatives"], m["threshold"]) == (8, 3, 5, 0.5)


def test_f_sens_spec_edge_cases():
    assert metrics.f_sens_spec(0.0, 1.0) == 0.0  # the paper's collapsed baseline: everything benign
    assert metrics.f_sens_spec(0.0, 0.0) == 0.0  # both rates zero: nothing right, not undefined
    assert math.isnan(metrics.f_sens_spec(float("nan"), 0.8))
    assert metrics.f_sens_spec(np.array([0.5, 1.0]), np.array([0.5, 0.0])).tolist() == [0.5, 0.0]
    negatives_only = metrics.classification_metrics([0, 0], [0.1, 0.9])
    assert math.isnan(negatives_only["f_sens_spec"])


def test_the_threshold_is_inclusive():
    assert metrics.classification_metrics([1, 0], [0.5, 0.2], threshold=0.5)["sensitivity"] == 1.0


def test_classification_metrics_agree_with_scikit_learn():
    y, s, _ = scored_patients(300, seed=1)
    predicted = (s >= 0.3).astype(int)
    m = metrics.classification_metrics(y, s, threshold=0.3)
    assert m["sensitivity"] == pytest.approx(recall_score(y, predicted))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - predicted))
    assert m["f1"] == pytest.approx(f1_score(y, predicted))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))


def test_one_class_gives_nan_not_a_crash():
    negatives = metrics.classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(negatives["sensitivity"]) and math.isnan(negatives["roc_auc"])
    assert math.isnan(negatives["pr_auc"])
    assert negatives["specificity"] == pytest.approx(2 / 3)
    assert math.isnan(metrics.classification_metrics([0, 0], [0.1, 0.2])["f1"])  # 0 / 0
    positives = metrics.classification_metrics([1, 1], [0.9, 0.2])
    assert math.isnan(positives["specificity"]) and math.isnan(positives["roc_auc"])
    assert positives["sensitivity"] == 0.5


@pytest.mark.parametrize(
    "y_true, y_score, message",
    [([0, 2], [0.1, 0.2], "0 .* and 1"), ([0, 1], [0.1], "equal length"), ([0, 1], [0.1, np.nan], "non-finite"),
     ([], [], "no samples")],
)  # fmt: skip
def test_bad_classification_input_is_explained(y_true, y_score, message):
    with pytest.raises(ValueError, match=message):
        metrics.classification_metrics(y_true, y_score)


def test_youden_and_sensitivity_thresholds_on_a_hand_example():
    # At 0.6: sensitivity 2/3, fpr 0 (J 0.67); at 0.4: sensitivity 1, fpr 1/4 (J 0.75).
    y = [0, 0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert metrics.choose_threshold(y, s, "youden") == pytest.approx(0.4)
    assert metrics.choose_threshold(y, s, "sensitivity", target=0.6) == pytest.approx(0.6)
    assert metrics.choose_threshold(y, s, "sensitivity", target=0.9) == pytest.approx(0.4)
    assert metrics.choose_threshold(y, s, "sensitivity", target=1 / 3) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="both classes"):
        metrics.choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        metrics.choose_threshold(y, s, "f1")


def test_a_chosen_threshold_reaches_its_sensitivity():
    y, s, _ = scored_patients(500, seed=3)
    threshold = metrics.choose_threshold(y, s, "sensitivity", target=0.9)
    assert metrics.classification_metrics(y, s, threshold)["sensitivity"] >= 0.9
    # ...and is the most specific one that does: the next score up falls short.
    above = np.min(s[s > threshold])
    assert metrics.classification_metrics(y, s, above)["sensitivity"] < 0.9


# --- segmentation ------------------------------------------------------------------------


def dice(pred, true) -> float:
    return float(metrics.per_image_segmentation([pred], [true])["dice"].iloc[0])


def test_dice_hand_cases():
    pred = np.zeros((4, 4), bool)
    pred[:2, :2] = True  # 4 pixels
    true = np.zeros((4, 4), bool)
    true[0, :3] = True  # 3 pixels, 2 shared
    assert dice(pred, true) == pytest.approx(2 * 2 / (4 + 3))
    assert dice(pred, pred) == 1.0
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # empty-empty convention
    assert dice(np.zeros((4, 4)), true) == 0.0
    assert dice(pred.astype(np.uint8) * 255, true.astype(np.uint8)) == pytest.approx(4 / 7)


def test_dice_matches_monai():
    import torch
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    pred = rng.random((5, 16, 16)) > 0.6
    true = rng.random((5, 16, 16)) > 0.7
    true[4] = pred[4] = False  # an empty pair
    true[3] = False  # a false alarm on an image without ROI
    expected = compute_dice(
        torch.from_numpy(pred[:, None]).float(), torch.from_numpy(true[:, None]).float(), ignore_empty=False
    ).numpy()[:, 0]
    ours = metrics.per_image_segmentation(pred, true)["dice"].to_numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6)  # MONAI computes in float32
    assert ours[3] == 0.0 and ours[4] == 1.0


def test_dice_rejects_probabilities_and_mismatched_shapes():
    with pytest.raises(ValueError, match="threshold probabilities"):
        dice(np.full((2, 2), 0.7), np.ones((2, 2)))
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 predictions but 1 masks"):
        metrics.per_image_segmentation([np.ones((2, 2))] * 2, [np.ones((2, 2))])


def test_segmentation_per_image_and_pooled():
    full = np.ones((2, 2), bool)
    empty = np.zeros((2, 2), bool)
    one = np.array([[1, 0], [0, 0]], bool)
    # image 1: predicts 1 of 4 mask pixels; image 2: empty and empty; image 3: false alarm.
    preds, targets = [one, empty, one], [full, empty, empty]
    table = metrics.per_image_segmentation(preds, targets)
    np.testing.assert_allclose(table["dice"], [2 / 5, 1.0, 0.0])
    np.testing.assert_allclose(table["precision"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(table["recall"], [0.25, 1.0, np.nan])  # no mask: recall undefined
    summary = metrics.summarize_segmentation(table)
    assert summary["dice"] == pytest.approx((0.4 + 1.0 + 0.0) / 3)
    assert summary["recall"] == pytest.approx((0.25 + 1.0) / 2)  # NaN left out of the mean
    # Pooled: tp 1, fp 1, fn 3 over all pixels.
    assert summary["dice_pooled"] == pytest.approx(2 / (2 + 1 + 3))
    assert summary["precision_pooled"] == pytest.approx(0.5)
    assert summary["recall_pooled"] == pytest.approx(0.25)
    # Nothing to find and nothing found anywhere: pooled Dice 1, pooled rates undefined.
    nothing = metrics.summarize_segmentation(metrics.per_image_segmentation([empty, empty], [empty, empty]))
    assert nothing["dice_pooled"] == 1.0 and math.isnan(nothing["precision_pooled"]) and math.isnan(nothing["recall_pooled"])


def test_segmentation_pooled_dice_agrees_with_scikit_learn_f1():
    rng = np.random.default_rng(2)
    preds = rng.random((4, 8, 8)) > 0.5
    targets = rng.random((4, 8, 8)) > 0.5
    summary = metrics.summarize_segmentation(metrics.per_image_segmentation(preds, targets))
    assert summary["dice_pooled"] == pytest.approx(f1_score(targets.ravel(), preds.ravel()))
    assert summary["precision_pooled"] == pytest.approx(precision_score(targets.ravel(), preds.ravel()))


# --- bootstrap ---------------------------------------------------------------------------


def test_interval_contains_the_point_estimate_and_narrows_with_more_patients():
    few = metrics.metrics_with_ci(*scored_patients(60, seed=4), n_boot=500, seed=0)
    many = metrics.metrics_with_ci(*scored_patients(1500, seed=4), n_boot=500, seed=0)
    for name in metrics.CLASSIFICATION_METRICS:
        for result in (few, many):
            assert result[name]["low"] <= result[name]["value"] <= result[name]["high"], name
        assert width(many[name]) < 0.5 * width(few[name]), name
    assert few["patients"] == few["n"] == 60


def test_intervals_are_driven_by_patients_not_images():
    one_image = metrics.metrics_with_ci(*scored_patients(80, 1, seed=5), n_boot=400, seed=1)
    y, s, patients = scored_patients(80, 10, seed=5)  # each patient's image copied 10 times
    copies = metrics.metrics_with_ci(y, s, patients, n_boot=400, seed=1)
    as_if_independent = metrics.metrics_with_ci(y, s, np.arange(len(y)), n_boot=400, seed=1)
    for name in ("sensitivity", "roc_auc", "accuracy"):
        assert copies[name]["value"] == pytest.approx(one_image[name]["value"])
        # Ten copies of a patient add no evidence: the interval is exactly as wide...
        assert width(copies[name]) == pytest.approx(width(one_image[name]))
        # ...whereas resampling images would claim about sqrt(10) times more precision.
        assert width(as_if_independent[name]) < 0.5 * width(copies[name])
    assert copies["n"] == 800 and copies["patients"] == 80


def test_vectorized_intervals_match_the_generic_bootstrap():
    y, s, patients = scored_patients(40, 1, seed=6)
    extra = np.arange(40) % 3 == 0  # some patients with a second, different image
    y = np.concatenate([y, y[extra]])
    s = np.concatenate([s, np.clip(s[extra] + 0.2, 0, 1)])
    patients = np.concatenate([patients, patients[extra]])
    fast = metrics.metrics_with_ci(y, s, patients, threshold=0.4, n_boot=150, seed=7)
    slow = metrics.bootstrap_ci(
        lambda a, b: metrics.classification_metrics(a, b, 0.4), (y, s), groups=patients, n_boot=150, seed=7
    )
    for name in metrics.CLASSIFICATION_METRICS:
        for key in ("value", "low", "high", "undefined"):
            assert fast[name][key] == pytest.approx(slow[name][key], abs=1e-12), (name, key)


def test_undefined_resamples_are_skipped_and_counted():
    # Two positive patients among 30: many resamples draw neither.
    y = np.zeros(30, int)
    y[:2] = 1
    s = np.linspace(0, 1, 30)
    result = metrics.metrics_with_ci(y, s, np.arange(30), n_boot=300, seed=0)
    undefined = result["sensitivity"]["undefined"]
    assert 0 < undefined < 300
    assert undefined == pytest.approx(300 * (28 / 30) ** 30, rel=0.5)
    assert result["sensitivity"]["skipped"] == undefined  # the former name, for older readers
    assert result["specificity"]["undefined"] == 0
    assert result["f_sens_spec"]["undefined"] == undefined  # undefined wherever sensitivity is
    assert not math.isnan(result["sensitivity"]["low"])
    for name in metrics.CLASSIFICATION_METRICS:
        assert (result[name]["n_positive"], result[name]["n_negative"], result[name]["n_boot"]) == (2, 28, 300)
    assert (result["positives"], result["negatives"], result["n_boot"]) == (2, 28, 300)


def test_an_interval_resting_on_one_positive_is_marked_unreliable():
    # One malignant patient among 30, found: every resample that draws it says sensitivity 1.0,
    # the 1 - (29/30)^30 = 36 % that miss it have none. "1.000 [1.000, 1.000]" would be a lie.
    y = np.zeros(30, int)
    y[0] = 1
    s = np.where(y == 1, 0.9, np.linspace(0, 0.8, 30))
    result = metrics.metrics_with_ci(y, s, np.arange(30), n_boot=400, seed=0)
    sensitivity = result["sensitivity"]
    assert (sensitivity["low"], sensitivity["high"]) == (1.0, 1.0)
    assert sensitivity["undefined"] == pytest.approx(400 * (29 / 30) ** 30, rel=0.2)
    assert metrics.undefined_share(sensitivity) == sensitivity["undefined"] / 400
    problem = metrics.interval_problem(sensitivity)
    assert problem is not None and "1 positive, 29 negatives" in problem and "of 400 resamples" in problem
    text = metrics.value_with_interval(sensitivity)
    assert text.startswith("1.000 [interval unreliable: undefined in 3") and "[1.000, 1.000]" not in text
    for name in ("roc_auc", "pr_auc", "f_sens_spec"):
        assert metrics.interval_problem(result[name]) is not None, name
    # Specificity rests on 29 negatives, defined in every resample: shown as numbers.
    assert result["specificity"]["undefined"] == 0 and metrics.interval_problem(result["specificity"]) is None
    assert metrics.value_with_interval(result["specificity"]).count("[") == 1
    assert "unreliable" not in metrics.value_with_interval(result["specificity"])


def test_the_unreliable_threshold_is_five_percent_and_old_entries_pass():
    entry = {"value": 0.5, "low": 0.4, "high": 0.6, "n_boot": 1000}
    assert metrics.interval_problem({**entry, "undefined": 50}) is None
    assert metrics.interval_problem({**entry, "undefined": 51}) == "undefined in 5 % of 1000 resamples"
    assert metrics.interval_problem({**entry, "skipped": 200}) is not None  # an older file's name
    assert metrics.interval_problem({"value": 0.5, "low": 0.4, "high": 0.6}) is None  # no count kept
    assert metrics.value_with_interval({**entry, "undefined": 0}) == "0.500 [0.400, 0.600]"


def test_bootstrap_ci_on_a_frame_with_a_group_column():
    frame = pd.DataFrame({"patient": np.repeat(np.arange(50), 2), "value": np.repeat(np.arange(50.0), 2)})
    result = metrics.bootstrap_ci(lambda f: f["value"].mean(), frame, groups="patient", n_boot=300, seed=0)
    assert result["value"] == pytest.approx(24.5)
    assert result["low"] < 24.5 < result["high"]
    assert result["n_boot"] == 300 and result["undefined"] == 0
    # Standard error of a mean of 50 uniform draws on 0..49 is about 2; 95 % spans about 8.
    assert 5 < width(result) < 11


def test_bootstrap_ci_counts_resamples_where_the_metric_raises():
    def needs_two_classes(y, s):
        if y.min() == y.max():
            raise ValueError("one class only")
        return roc_auc_score(y, s)

    y = np.array([1, 0, 0, 0, 0, 0])
    result = metrics.bootstrap_ci(needs_two_classes, (y, np.arange(6.0)), groups=np.arange(6), n_boot=200, seed=0)
    assert 0 < result["undefined"] < 200


def test_bootstrap_rejects_misaligned_input():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.bootstrap_ci(np.mean, ([1, 2], [1, 2, 3]), groups=[0, 1])
    with pytest.raises(ValueError, match="groups has 3 entries for 2 rows"):
        metrics.metrics_with_ci([0, 1], [0.2, 0.8], [0, 1, 2])


# --- folds -------------------------------------------------------------------------------


def test_summarize_folds_mean_std_min_max():
    folds = [
        {"roc_auc": 0.8, "f1": 0.5, "name": "ignored"},
        {"roc_auc": 0.6, "f1": float("nan")},
        {"roc_auc": {"value": 0.7, "low": 0.6, "high": 0.8}, "f1": 0.7},
    ]
    summary = metrics.summarize_folds(folds)
    assert summary["roc_auc"] == pytest.approx({"mean": 0.7, "std": 0.1, "min": 0.6, "max": 0.8, "n": 3})
    assert summary["f1"]["mean"] == pytest.approx(0.6) and summary["f1"]["n"] == 2
    assert "name" not in summary
    with pytest.raises(ValueError, match="no folds"):
        metrics.summarize_folds([])


def test_at_chance_reads_the_interval_against_each_metrics_chance_level():
    from vismae.metrics import at_chance, chance_level

    assert chance_level("roc_auc") == 0.5 and chance_level("sensitivity") is None
    assert chance_level("pr_auc", {"n_positive": 30, "n_negative": 90}) == pytest.approx(0.25)
    assert at_chance({"value": 0.515, "low": 0.37, "high": 0.64}, "roc_auc")  # the demo's pretrained classifier
    assert not at_chance({"value": 0.805, "low": 0.70, "high": 0.89}, "roc_auc")
    # PR AUC 0.35 beats a coin's 0.5 nowhere, but a 25 % prevalence's chance: interval above 0.25.
    assert not at_chance({"value": 0.35, "low": 0.28, "high": 0.45, "n_positive": 30, "n_negative": 90}, "pr_auc")
    unreliable = {"value": 0.9, "low": 0.8, "high": 1.0, "undefined": 370, "n_boot": 1000}
    assert at_chance(unreliable, "roc_auc")  # an interval that rests on too few patients shows nothing
    assert at_chance({"value": 0.9, "low": 0.8, "high": 1.0}, "f1") is None
