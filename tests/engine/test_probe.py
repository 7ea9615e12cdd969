"""The frozen-encoder probes: each bar comes from a control measured in the same test (the
same features with the labels shuffled), so a probe that merely reads noise cannot pass."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
import torch

from vismae.cli import main
from vismae.engine.probe import embed, paired_auc_difference, parse_stages, probe_metrics
from vismae.models.weights import load_encoder
from vismae.synthetic.cache import CacheImage


def _rows(n_patients: int, rng) -> pd.DataFrame:
    """Two images per patient, both of the patient's class; patients split 60/20/20."""
    patient_class = rng.integers(0, 2, n_patients)
    splits = np.array(["train"] * 3 + ["val", "test"])[np.arange(n_patients) % 5]
    return pd.DataFrame({
        "image_id": [f"p{p}_{v}" for p in range(n_patients) for v in "ab"],
        "patient_id": [f"p{p}" for p in range(n_patients) for _ in "ab"],
        "target": np.repeat(patient_class, 2),
        "split": np.repeat(splits, 2),
    })  # fmt: skip


def _shuffled_by_patient(rows: pd.DataFrame, rng) -> pd.DataFrame:
    """The same rows with the patients' classes permuted: features no longer say the class."""
    classes = rows.groupby("patient_id", sort=False)["target"].first()
    permuted = dict(zip(classes.index, rng.permutation(classes.to_numpy())))
    return rows.assign(target=rows["patient_id"].map(permuted))


def test_probes_find_the_class_the_features_carry_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    rows = _rows(300, rng)
    # Three informative columns among 20 of noise, each weak alone.
    features = rng.normal(size=(len(rows), 23))
    features[:, :3] += 1.0 * rows["target"].to_numpy()[:, None]
    real = probe_metrics(features, rows, n_boot=300)
    control = probe_metrics(features, _shuffled_by_patient(rows, rng), n_boot=300)
    for name in ("linear", "knn"):
        found, chance = real[name]["test"]["roc_auc"], control[name]["test"]["roc_auc"]
        assert found["low"] > chance["high"], (name, found, chance)
        assert chance["low"] < 0.5 < chance["high"], (name, chance)  # the control sits at chance
    # The chosen setting is the one validation liked best.
    by_setting = real["linear"]["val_auc_by_setting"]
    assert by_setting[str(real["linear"]["C"])] == max(by_setting.values())


def test_paired_difference_is_zero_against_itself_and_positive_for_a_better_score():
    rng = np.random.default_rng(1)
    rows = _rows(150, rng)
    y, patients = rows["target"].to_numpy(), rows["patient_id"].to_numpy()
    weak = y + rng.normal(0, 2.0, len(y))
    strong = y + rng.normal(0, 0.5, len(y))
    same = paired_auc_difference(y, weak, weak, patients, n_boot=300)
    assert same["value"] == 0 and same["low"] == 0 and same["high"] == 0
    better = paired_auc_difference(y, strong, weak, patients, n_boot=300)
    assert better["low"] > 0
    worse = paired_auc_difference(y, weak, strong, patients, n_boot=300)
    assert worse["high"] < 0 and worse["value"] == pytest.approx(-better["value"])


def test_stage_selection():
    assert parse_stages("last", 4) == [3]
    assert parse_stages("all", 4) == [0, 1, 2, 3]
    assert parse_stages("0,-1", 4) == [0, 3]
    with pytest.raises(ValueError, match="stages 0..3"):
        parse_stages([4], 4)
    with pytest.raises(ValueError, match="'last', 'all'"):
        parse_stages("first", 4)


def test_embedding_pools_each_stage_by_mean_and_max_whatever_the_batch():
    torch.manual_seed(0)
    encoder = load_encoder("random:tiny", img_size=64, verbose=False)
    encoder.train()
    images = torch.rand(5, 1, 64, 64)
    features = embed(encoder, images, [0, 3], batch_size=2)
    assert encoder.training  # given back in the mode it came in
    dims = encoder.config.stage_dims
    assert features.shape == (5, 2 * dims[0] + 2 * dims[3])
    mean0, max0 = features[:, : dims[0]], features[:, dims[0] : 2 * dims[0]]
    assert (max0 >= mean0 - 1e-6).all() and (max0 > mean0 + 1e-3).any()
    # The last stage's map is taken after the final norm: what finetuning heads see.
    with torch.no_grad():
        encoder.eval()
        last_map = encoder.forward_features(images)
    np.testing.assert_allclose(features[:, 2 * dims[0] : 2 * dims[0] + dims[3]], last_map.mean(dim=(2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(embed(encoder, images, [0, 3], batch_size=64), features, atol=1e-5)


def _cache_images(n_patients: int) -> list[CacheImage]:
    """Malignant patients carry a large bright lesion, benign ones none; splits 60/20/20."""
    images = []
    for patient in range(n_patients):
        malignant = patient % 2 == 0
        split = ("train", "train", "train", "val", "test")[(patient // 2) % 5]
        for view in ("CC", "MLO"):
            images.append(CacheImage(f"p{patient:03d}", view=view, label="malignant" if malignant else "benign",
                                     has_roi=malignant, split=split))  # fmt: skip
    return images


def test_probe_command_reads_a_frozen_encoder_and_beats_its_shuffled_label_control(synthetic_cache, tmp_path, capsys):
    images = _cache_images(50)
    manifest = synthetic_cache(images, tmp_path / "cache")
    # The control: the same pixels, the patients' labels permuted.
    rng = np.random.default_rng(0)
    labels = {image.patient_id: image.label for image in images}
    permuted = dict(zip(labels, rng.permutation(list(labels.values()))))
    frame = pd.read_csv(manifest)
    frame["label"] = frame["patient_id"].map(permuted)
    shuffled = tmp_path / "cache" / "shuffled.csv"
    frame.to_csv(shuffled, index=False)

    scores = {}
    for name, path in (("real", manifest), ("shuffled", shuffled)):
        out = tmp_path / name
        argv = ["probe", "--init", "random:tiny", "--manifest", str(path), "--out", str(out), "--stages", "all", "--n-boot", "200"]
        assert main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        scores[name] = metrics["linear"]["test"]["roc_auc"]
        saved = np.load(out / "embeddings.npz")
        assert saved["image_id"].tolist() == frame["image_id"].tolist()  # one row per manifest image, in order
        assert saved["embedding"].shape == (len(frame), 2 * sum((24, 48, 96, 192)))
        assert metrics["rows"]["test"]["images"] == 20 and metrics["stages"] == [0, 1, 2, 3]
        # The per-image scores behind the test metrics, for paired comparisons.
        test = pd.read_csv(out / "predictions.csv").query("split == 'test'")
        for probe in ("linear", "knn"):
            assert roc_auc_score(test["target"], test[probe]) == pytest.approx(metrics[probe]["test"]["roc_auc"]["value"], abs=1e-12)
    assert scores["real"]["value"] > scores["shuffled"]["value"] + 0.2, scores
    assert "test ROC AUC" in capsys.readouterr().out


def test_probe_command_names_a_split_without_both_classes(synthetic_cache, tmp_path, capsys):
    images = [CacheImage(f"p{p}", label="benign", split=("train", "val", "test")[p % 3]) for p in range(9)]
    images[0] = CacheImage("p0", label="malignant", split="train")
    manifest = synthetic_cache(images, tmp_path / "cache")
    assert main(["probe", "--init", "random:tiny", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert "val rows hold" in capsys.readouterr().err
