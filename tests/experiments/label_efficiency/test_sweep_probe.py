"""The label-efficiency sweep with ``method: probe``: linear probes on frozen encoders, on the
subsets a finetuning sweep draws, into the layout its report reads.

Every sweep here is real (random:tiny encoders on 64 px synthetic caches), and each claim is
checked against a computation made in the test: the probe against scikit-learn's pipeline fitted
directly on the same rows, and the probe's reading of a visible finding against the same probe
taught a label that the images do not carry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vismae.config import ConfigError
from vismae.data.manifest import read_manifest
from vismae.data.splits import fraction_name
from vismae.engine.predict import CLASSIFICATION_COLUMNS
from vismae.engine.probe import PROBE_CS, embed, load_images
from vismae.experiments.label_efficiency import probe_runs
from vismae.experiments.label_efficiency.config import load_sweep_config, plan_method
from vismae.experiments.label_efficiency.sweep import RunSpec, plan_sweep, run_sweep
from vismae.metrics import choose_threshold, metrics_with_ci
from vismae.models.weights import load_encoder
from vismae.synthetic.cache import CacheImage

N_BOOT = 20


def images(patients: int = 40, lesions: bool = False) -> list[CacheImage]:
    """Two views of one breast per patient; every third patient malignant, every seventh normal
    (not a classification row); every fifth a test patient. ``lesions``: every other patient
    malignant, with a drawn lesion, and no normal ones: a finding any encoder can see."""
    rows = []
    for patient in range(patients):
        if lesions:
            label, roi = ("malignant", True) if patient % 2 == 0 else ("benign", False)
        else:
            label, roi = ("normal" if patient % 7 == 6 else "malignant" if patient % 3 == 0 else "benign"), False
        split = "test" if patient % 5 == 4 else "train"
        rows += [CacheImage(f"p{patient:02d}", view=view, label=label, has_roi=roi, split=split) for view in ("CC", "MLO")]
    return rows


@pytest.fixture(scope="module")
def manifest(synthetic_cache) -> Path:
    return synthetic_cache(images())


def probe_config(manifest: Path, out: Path, **overrides):
    values = {"output_dir": out, "manifest": manifest, "method": "probe", "inits": "{ours: random:tiny, random: random:tiny}",
              "fractions": "[0.25, 0.5, 1.0]", "seeds": "[0, 1]", "folds": 0, "finetune.eval.n_boot": N_BOOT, **overrides}  # fmt: skip
    return load_sweep_config(None, [f"{key}={value}" for key, value in values.items()])


class CountingEmbedder:
    """``probe_runs.embed_images`` that records which images each init embedded."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.embed = probe_runs.embed_images

    def __call__(self, source, paths, *args, **kwargs):
        self.calls.append((source, list(paths)))
        return self.embed(source, paths, *args, **kwargs)


@pytest.fixture(scope="module")
def probe_sweep(manifest, tmp_path_factory):
    """One probe sweep (3 fractions x 2 inits x 2 seeds) and the embedding calls it made."""
    out = tmp_path_factory.mktemp("probe-sweep")
    counter = CountingEmbedder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_runs, "embed_images", counter)
        outcome = run_sweep(probe_config(manifest, out))
    return out, outcome, counter


def subset(out: Path, spec: RunSpec) -> pd.DataFrame:
    """The rows the sweep gave a run, as it saved them."""
    return read_manifest(out / "subsets" / spec.subsets / fraction_name(spec.fraction) / "manifest.csv")


def test_a_probe_sweep_leaves_finetunings_layout_for_every_run(manifest, probe_sweep):
    out, outcome, _ = probe_sweep
    assert len(outcome.ran) == 12 and not outcome.failed
    assert json.loads((out / "plan.json").read_text())["method"] == "probe"
    results = pd.read_csv(out / "results.csv").set_index("run")
    assert sorted(results.index) == sorted(outcome.ran)
    specs = {run.name: run for run in plan_sweep(probe_config(manifest, out)).runs}
    for name in outcome.ran:
        spec = specs[name]
        rows, run_dir = subset(out, spec), out / "runs" / name
        predictions = pd.read_csv(run_dir / "predictions.csv")
        assert list(predictions.columns) == CLASSIFICATION_COLUMNS  # finetuning's columns, in its order
        # One row per val and test image of the run's subset, nothing else.
        for split in ("val", "test"):
            predicted = predictions.loc[predictions["split"] == split, "image_id"]
            assert sorted(predicted) == sorted(rows.loc[rows["split"] == split, "image_id"])
        assert set(predictions["split"]) == {"val", "test"}
        # The threshold is finetuning's rule (Youden) on the val predictions alone, and makes the predictions.
        val = predictions[predictions["split"] == "val"]
        threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
        assert threshold == choose_threshold(val["target"].to_numpy(), val["probability"].to_numpy(), "youden", 0.9)
        assert (predictions["prediction"] == (predictions["probability"] >= threshold)).all()
        # results.csv carries the run's test metrics as metrics.json has them.
        engine = json.loads((run_dir / "metrics.json").read_text())
        assert engine["method"] == "probe" and engine["probe"]["C"] in PROBE_CS
        assert results.loc[name, "test_roc_auc"] == pytest.approx(engine["test"]["roc_auc"]["value"])
        test = predictions[predictions["split"] == "test"]
        assert results.loc[name, "test_roc_auc"] == pytest.approx(roc_auc_score(test["target"], test["probability"]))
        assert results.loc[name, "test_n"] == len(test) and results.loc[name, "train_images"] == (rows["split"] == "train").sum()
    assert (out / "report" / "summary.md").is_file()
    assert run_sweep(probe_config(manifest, out), report=False).ran == []  # finished probes are not fitted again


def test_each_init_embeds_the_sweeps_images_once(manifest, probe_sweep):
    out, outcome, counter = probe_sweep
    task_images = read_manifest(manifest).query("label != 'normal'")["path"]
    # Two inits, twelve runs: two embedding passes, each over every image the runs use.
    assert [source for source, _ in counter.calls] == ["random:tiny", "random:tiny"]
    for _, paths in counter.calls:
        assert sorted(paths) == sorted(task_images)


def test_a_probe_run_is_the_reference_pipeline_fitted_on_its_rows(manifest, probe_sweep):
    out, _, _ = probe_sweep
    spec = RunSpec(0.5, "ours", 1)
    rows = subset(out, spec).query("label != 'normal'").reset_index(drop=True)
    target = rows["label"].eq("malignant").astype(int).to_numpy()
    # The reference: the random encoder drawn as the runner draws it, every stage pooled, ...
    torch.manual_seed(probe_runs.RANDOM_INIT_SEED)
    encoder = load_encoder("random:tiny", img_size=64, verbose=False)
    features = embed(encoder, load_images(rows["path"].tolist(), (64, 64)), [0, 1, 2, 3])
    train, val, test = (rows["split"].to_numpy() == split for split in ("train", "val", "test"))
    # ... scikit-learn's pipeline for each C on the training rows, C chosen by validation AUC.
    fitted = {
        c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(features[train], target[train]) for c in PROBE_CS
    }
    aucs = {c: roc_auc_score(target[val], model.predict_proba(features[val])[:, 1]) for c, model in fitted.items()}
    chosen = max(aucs, key=aucs.get)
    expected = pd.Series(fitted[chosen].predict_proba(features[test])[:, 1], index=rows.loc[test, "image_id"])

    run_dir = out / "runs" / spec.name
    assert json.loads((run_dir / "probe.json").read_text())["C"] == chosen
    predictions = pd.read_csv(run_dir / "predictions.csv").set_index("image_id")
    np.testing.assert_allclose(predictions.loc[expected.index, "probability"], expected, rtol=1e-5, atol=1e-7)
    # Test metrics: finetuning's patient bootstrap, seeded with the run's seed.
    tested = predictions[predictions["split"] == "test"]
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    reference = metrics_with_ci(tested["target"], tested["probability"], tested["patient_id"], threshold, N_BOOT, seed=spec.seed)
    result = json.loads((run_dir / "result.json").read_text())
    for metric in ("roc_auc", "sensitivity"):
        for end in ("", "_low", "_high"):
            assert result[f"test_{metric}{end}"] == pytest.approx(reference[metric][end.lstrip("_") or "value"])


def test_the_probe_reads_a_visible_finding_and_not_a_label_the_images_do_not_carry(tmp_path, synthetic_cache):
    manifest = synthetic_cache(images(60, lesions=True))
    config = probe_config(manifest, tmp_path / "sweep", inits="{random: random:tiny}", fractions="[1.0]", seeds="[0]",
                          **{"finetune.eval.n_boot": 200})  # fmt: skip
    plan = plan_sweep(config)
    rows, spec = plan.bases[None], plan.runs[0]
    # The control: train and val labels independent of the lesions by construction (half of
    # each class's patients called malignant); the test rows keep their true labels.
    fitted = rows["split"] != "test"
    number = rows["patient_id"].str[1:].astype(int)
    unrelated = rows.copy()
    unrelated.loc[fitted, "label"] = np.where((number[fitted] // 2) % 2 == 0, "malignant", "benign")
    crossed = pd.crosstab(rows.loc[fitted, "label"], unrelated.loc[fitted, "label"])
    assert crossed.to_numpy().min() == crossed.to_numpy().max()  # independent of the true label

    run = probe_runs.probe_runner(plan.config)
    real = run(spec, rows, tmp_path / "real")["test"]["roc_auc"]
    control = run(spec, unrelated, tmp_path / "control")["test"]["roc_auc"]
    assert real["low"] > control["high"], (real, control)


def test_a_one_class_validation_chooses_c_by_validation_loss():
    rng = np.random.default_rng(0)
    X_train, y_train = rng.normal(size=(40, 5)), np.tile([0, 1], 20)
    X_train[:, 0] += 2 * y_train
    X_val, y_val = rng.normal(size=(6, 5)), np.zeros(6, int)
    model, chosen, losses, selected_by = probe_runs.fit_probe(X_train, y_train, X_val, y_val, PROBE_CS)
    expected = {c: log_loss(y_val, make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(X_train, y_train)
                            .predict_proba(X_val)[:, 1], labels=[0, 1]) for c in PROBE_CS}  # fmt: skip
    assert selected_by == "loss" and chosen == min(expected, key=expected.get)
    assert losses == pytest.approx(expected)


def test_method_probe_needs_classification(manifest, tmp_path):
    with pytest.raises(ConfigError, match=r"method: probe .* needs task: classify, got task: segment"):
        probe_config(manifest, tmp_path, task="segment", metrics="[dice]")
    with pytest.raises(ConfigError, match="finetune.model.backbone"):
        probe_config(manifest, tmp_path, **{"finetune.model.backbone": "resnet18"})
    with pytest.raises(ConfigError, match="probe.stages"):
        probe_config(manifest, tmp_path, **{"probe.stages": "first"})


class NoRuns:
    """A run function for sweeps whose config check must refuse them before any run."""

    def __call__(self, spec, rows, run_dir):
        raise AssertionError(f"{spec.name} ran")


def test_a_sweep_folder_holds_one_method(manifest, tmp_path):
    probes = tmp_path / "probes"
    run_sweep(probe_config(manifest, probes, seeds="[0]", fractions="[1.0]", inits="{random: random:tiny}"), report=False)
    finetuning = {"method": "finetune", "seeds": "[0]", "fractions": "[1.0]", "inits": "{random: random:tiny}"}
    with pytest.raises(ConfigError, match="method: 'probe' -> 'finetune'"):
        run_sweep(probe_config(manifest, probes, **finetuning), run_fn=NoRuns(), report=False)
    # What a probe never reads may change; what it reads may not.
    again = probe_config(manifest, probes, seeds="[0]", fractions="[1.0]", inits="{random: random:tiny}", **{"finetune.train.lr": 0.5})
    assert run_sweep(again, report=False).skipped == ["f1_init-random_s0"]
    with pytest.raises(ConfigError, match="probe.stages"):
        run_sweep(probe_config(manifest, probes, seeds="[0]", fractions="[1.0]", inits="{random: random:tiny}", **{"probe.stages": "last"}),
                  run_fn=NoRuns(), report=False)  # fmt: skip
    with pytest.raises(ConfigError, match="finetune.eval.threshold_rule"):
        run_sweep(probe_config(manifest, probes, seeds="[0]", fractions="[1.0]", inits="{random: random:tiny}",
                               **{"finetune.eval.threshold_rule": "sensitivity"}), run_fn=NoRuns(), report=False)  # fmt: skip

    # A finetuning sweep saved before the method existed stays a finetuning sweep.
    finetunes = tmp_path / "finetunes"
    run_sweep(probe_config(manifest, finetunes, **finetuning), run_fn=lambda spec, rows, run_dir: {}, report=False)
    saved = yaml.safe_load((finetunes / "sweep.yaml").read_text())
    del saved["method"], saved["probe"]
    (finetunes / "sweep.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="method: '\\(absent\\)' -> 'probe'"):
        run_sweep(probe_config(manifest, finetunes, seeds="[0]", fractions="[1.0]", inits="{random: random:tiny}"), run_fn=NoRuns())
    assert run_sweep(probe_config(manifest, finetunes, **finetuning, **{"probe.stages": "last"}), run_fn=NoRuns(), report=False).skipped
    assert plan_method({"task": "classify"}) == "finetune" and plan_method({"method": "probe"}) == "probe"
