import argparse
import json

import numpy as np
import pandas as pd
import pytest

from vismae.commands import split as split_command
from vismae.data import splits
from vismae.data.manifest import ManifestError, new_frame, read_manifest, write_manifest

# Patients per most-severe label in the synthetic manifest.
STRATA = {"malignant": 23, "benign": 41, "normal": 64, "unknown": 7}


def synthetic_manifest(seed: int = 0, strata: dict = STRATA, split: str = "train") -> pd.DataFrame:
    """Patients with 1-4 images each; a patient's worst image carries its stratum's label."""
    rng = np.random.default_rng(seed)
    milder = {
        "malignant": ["benign", "normal"], "benign": ["normal"], "normal": ["normal"], "unknown": ["unknown"]
    }  # fmt: skip
    rows = []
    for stratum, n_patients in strata.items():
        for p in range(n_patients):
            patient = f"{stratum[:3]}{p:03d}"
            n_images = int(rng.integers(1, 5))
            for i in range(n_images):
                label = stratum if i == 0 else str(rng.choice(milder[stratum]))
                rows.append(
                    {
                        "image_id": f"{patient}_{i}",
                        "patient_id": patient,
                        "study_id": patient,
                        "dataset": "synthetic",
                        "path": f"/data/{patient}_{i}.png",
                        "view": "CC" if i % 2 == 0 else "MLO",
                        "laterality": "L" if i < 2 else "R",
                        "label": label,
                        "birads": pd.NA,
                        "has_roi": False,
                        "roi": [],
                        "split": split,
                    }
                )
    return new_frame(rows)


def patients_by_split(frame: pd.DataFrame) -> dict[str, set]:
    return {s: set(frame.loc[frame["split"] == s, "patient_id"]) for s in ("train", "val", "test")}


def per_image_split(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index("image_id")["split"].sort_index()


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return synthetic_manifest()


# --- strata ------------------------------------------------------------------------------


def test_a_patients_stratum_is_its_most_severe_label(manifest):
    strata = splits.patient_strata(manifest)
    assert strata.value_counts().to_dict() == STRATA
    frame = new_frame(
        [
            {**manifest.iloc[0].to_dict(), "image_id": "a", "patient_id": "p", "label": "normal"},
            {**manifest.iloc[0].to_dict(), "image_id": "b", "patient_id": "p", "label": "malignant"},
            {**manifest.iloc[0].to_dict(), "image_id": "c", "patient_id": "p", "label": "benign"},
        ]
    )
    assert splits.patient_strata(frame).to_dict() == {"p": "malignant"}


def test_most_severe_labels_per_patient_and_unknown_labels_named():
    labels = splits.most_severe_labels(["b", "a", "a", "b", "c"], ["benign", "normal", "malignant", "unknown", "unknown"])
    assert labels.to_dict() == {"a": "malignant", "b": "benign", "c": "unknown"}
    assert list(labels.index) == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"unknown labels \['cancer'\]"):
        splits.most_severe_labels(["a", "b"], ["benign", "cancer"])


# --- assign_split ------------------------------------------------------------------------


def test_assign_split_keeps_patients_on_one_side_and_hits_the_fractions(manifest):
    out = splits.assign_split(manifest, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=3)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    sides = patients_by_split(out)
    n_patients = sum(STRATA.values())
    for name, share in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        assert abs(len(sides[name]) - share * n_patients) <= 1
    # Stratified: each split's share of each stratum is within two patients of ideal.
    strata = splits.patient_strata(manifest)
    for name, share in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        counts = strata[sorted(sides[name])].value_counts()
        for stratum, n in STRATA.items():
            assert abs(counts.get(stratum, 0) - share * n) < 2, (name, stratum)
    # Everything except the split column is untouched.
    pd.testing.assert_frame_equal(out.drop(columns="split"), manifest.drop(columns="split"))


def test_assign_split_is_deterministic_per_seed_and_ignores_row_order(manifest):
    first = splits.assign_split(manifest, seed=7)
    again = splits.assign_split(manifest, seed=7)
    shuffled = splits.assign_split(manifest.sample(frac=1, random_state=1), seed=7)
    other = splits.assign_split(manifest, seed=8)
    pd.testing.assert_series_equal(per_image_split(first), per_image_split(again))
    pd.testing.assert_series_equal(per_image_split(first), per_image_split(shuffled))
    assert patients_by_split(first)["test"] != patients_by_split(other)["test"]


def test_a_zero_fraction_leaves_that_split_empty(manifest):
    out = splits.assign_split(manifest, {"train": 0.8, "val": 0.2, "test": 0.0})
    assert set(out["split"]) == {"train", "val"}


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"train": 0.8, "val": 0.1, "test": 0.2}, "add up to 1"),
        ({"train": 1.2, "val": -0.2}, r"\[0, 1\]"),
        ({"train": 0.9, "holdout": 0.1}, "unknown splits"),
        ({"val": 0.5, "test": 0.5}, "train fraction"),
    ],
)
def test_assign_split_rejects_bad_fractions(manifest, fractions, message):
    with pytest.raises(ValueError, match=message):
        splits.assign_split(manifest, fractions)


def test_unknown_stratify_column_is_an_error(manifest):
    with pytest.raises(ValueError, match="stratify"):
        splits.assign_split(manifest, stratify="view")


def test_stratify_none_still_groups_patients(manifest):
    out = splits.assign_split(manifest, stratify=None, seed=2)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    assert abs(len(patients_by_split(out)["test"]) - 0.1 * sum(STRATA.values())) <= 1


def test_a_patient_already_on_two_sides_is_refused(manifest):
    sizes = manifest["patient_id"].value_counts()
    patient = sizes.index[sizes > 1][0]
    leaking = manifest.copy()
    leaking.loc[leaking.index[leaking["patient_id"] == patient][0], "split"] = "test"
    with pytest.raises(ManifestError, match="one side"):
        splits.carve_validation(leaking, 0.1)


# --- carve_validation --------------------------------------------------------------------


def test_carve_validation_moves_train_patients_only(manifest):
    base = splits.assign_split(manifest, {"train": 0.8, "val": 0.0, "test": 0.2}, seed=1)
    carved = splits.carve_validation(base, 0.25, seed=4)
    before, after = patients_by_split(base), patients_by_split(carved)
    assert after["test"] == before["test"]
    assert after["val"] <= before["train"]
    assert after["train"] | after["val"] == before["train"]
    assert abs(len(after["val"]) - 0.25 * len(before["train"])) <= 1
    assert (carved.groupby("patient_id")["split"].nunique() == 1).all()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        splits.carve_validation(base, 1.0)


def test_the_same_seed_draws_the_same_patients_as_before(manifest):
    # Pinned assignments: a change here changes every finetuning result drawn from these rules.
    test = splits.assign_split(manifest, seed=0).query("split == 'test'")["patient_id"]
    assert sorted(set(test)) == [
        "ben000", "ben002", "ben008", "ben034", "mal007", "mal021", "nor004", "nor010", "nor011", "nor028",
        "nor047", "nor054", "nor062",
    ]  # fmt: skip
    val = splits.carve_validation(manifest, 0.1, seed=0).query("split == 'val'")["patient_id"]
    assert sorted(set(val)) == [
        "ben016", "ben018", "ben021", "ben023", "mal002", "mal013", "nor002", "nor009", "nor016", "nor034",
        "nor041", "nor042", "nor050",
    ]  # fmt: skip


# --- the readers' 10:1 train/test draw ---------------------------------------------------


def reader_dataset(n_patients: int, images_per_patient: int = 3):
    """Patient ids and image labels; every fifth patient has one malignant image."""
    rng = np.random.default_rng(0)
    patients, labels = [], []
    for patient in range(n_patients):
        malignant = patient % 5 == 0
        for image in range(images_per_patient):
            patients.append(f"p{patient}")
            labels.append("malignant" if malignant and image == 0 else rng.choice(["benign", "normal"]))
    return np.array(patients), np.array(labels)


@pytest.mark.parametrize("n_patients", [3, 10, 55, 220])
def test_reader_split_keeps_patients_on_one_side_ten_to_one(n_patients):
    patients, labels = reader_dataset(n_patients)
    for seed in range(4):
        split = splits.train_test_by_patient(patients, labels, seed=seed)
        train, test = set(patients[split == "train"]), set(patients[split == "test"])
        assert train and test and not train & test and train | test == set(patients)
        if n_patients >= 55:
            assert len(test) == pytest.approx(n_patients / 11, abs=1)


def test_reader_split_is_stratified_by_most_severe_label_and_seeded():
    patients, labels = reader_dataset(220)
    split = splits.train_test_by_patient(patients, labels, seed=1)
    strata = splits.most_severe_labels(patients, labels)
    malignant = set(strata.index[strata == "malignant"])
    test = set(patients[split == "test"])
    assert len(test & malignant) == pytest.approx(len(malignant) / 11, abs=1)
    assert list(splits.train_test_by_patient(patients, labels, seed=1)) == list(split)
    assert list(splits.train_test_by_patient(patients, labels, seed=2)) != list(split)


def test_reader_split_draws_the_same_patients_as_before():
    # Pinned: the test patients every manifest read with seed 0 has carried.
    patients, labels = reader_dataset(55)
    assert set(patients[splits.train_test_by_patient(patients, labels, seed=0) == "test"]) == {"p5", "p7", "p18", "p31", "p41"}
    patients, labels = reader_dataset(8)  # fewer patients than folds: a plain grouped draw
    assert set(patients[splits.train_test_by_patient(patients, labels, seed=0) == "test"]) == {"p6"}


def test_reader_split_leaves_a_single_patient_in_train():
    assert list(splits.train_test_by_patient(["a", "a"], ["benign", "benign"])) == ["train", "train"]


# --- k folds -----------------------------------------------------------------------------


def test_every_patient_is_in_exactly_one_validation_fold(manifest):
    base = splits.assign_split(manifest, seed=0)
    folds = splits.kfold(base, 5, seed=0)
    non_test = set(base.loc[base["split"] != "test", "patient_id"])
    validation = [patients_by_split(fold)["val"] for fold in folds]
    assert sorted(p for v in validation for p in v) == sorted(non_test)  # each exactly once
    for fold in folds:
        sides = patients_by_split(fold)
        assert not sides["train"] & sides["val"]
        assert sides["train"] | sides["val"] == non_test
        assert sides["test"] == patients_by_split(base)["test"]
    # Stratified: a fold's validation holds a fifth of each stratum, within one patient.
    strata = splits.patient_strata(base)
    for stratum in STRATA:
        in_stratum = [(strata[sorted(v)] == stratum).sum() for v in validation]
        assert max(in_stratum) - min(in_stratum) <= 1, stratum


def test_folds_are_deterministic_and_seeded(manifest):
    a = splits.assign_folds(manifest, 4, seed=1)
    b = splits.assign_folds(manifest, 4, seed=1)
    c = splits.assign_folds(manifest, 4, seed=2)
    assert (a == b).all() and not (a == c).all()
    assert set(a) == {0, 1, 2, 3}


def test_too_few_patients_for_k_folds_says_how_many(manifest):
    small = synthetic_manifest(strata={"benign": 2, "malignant": 1})
    with pytest.raises(ValueError, match="there are 3"):
        splits.kfold(small, 5)
    # Strata smaller than k are no obstacle as long as there are k patients in all.
    assert len(splits.kfold(small, 3)) == 3


# --- label fractions ---------------------------------------------------------------------


def test_label_fractions_are_nested_stratified_and_from_train_only(manifest):
    base = splits.assign_split(manifest, seed=5)
    train_strata = splits.patient_strata(base[base["split"] == "train"])
    n_per_stratum = train_strata.value_counts()
    subsets = splits.label_fractions(base, seed=5)
    assert list(subsets) == list(splits.LABEL_FRACTIONS)
    previous = set()
    for fraction, subset in subsets.items():
        train = set(subset.loc[subset["split"] == "train", "patient_id"])
        assert previous <= train  # nested
        previous = train
        assert train <= patients_by_split(base)["train"]
        counts = train_strata[sorted(train)].value_counts()
        for stratum, n in n_per_stratum.items():
            assert counts[stratum] >= 1  # every class, even at 5 %
            assert abs(counts[stratum] - fraction * n) <= 1, (fraction, stratum)
        # val and test rows travel unchanged; a kept patient keeps all its training images.
        others = base[base["split"] != "train"]
        pd.testing.assert_frame_equal(subset[subset["split"] != "train"], others)
        assert len(subset[subset["split"] == "train"]) == base["patient_id"].isin(train).sum()
    assert previous == patients_by_split(base)["train"]  # 100 % is the whole training set


def test_label_fractions_are_seeded(manifest):
    base = splits.assign_split(manifest, seed=5)
    pick = lambda seed: set(splits.label_fractions(base, (0.25,), seed)[0.25]["image_id"])  # noqa: E731
    assert pick(1) == pick(1)
    assert pick(1) != pick(2)


@pytest.mark.parametrize("fractions", [(0.0, 0.5), (0.5, 1.5), ()])
def test_label_fractions_reject_out_of_range(manifest, fractions):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        splits.label_fractions(manifest, fractions)


def test_label_fractions_need_training_rows(manifest):
    with pytest.raises(ValueError, match="no training rows"):
        splits.label_fractions(manifest.assign(split="test"), (0.5,))


# --- files and the command ---------------------------------------------------------------


def test_save_splits_writes_readable_manifests_and_a_record(manifest, tmp_path):
    base = splits.assign_split(manifest, seed=0)
    folds = splits.kfold(base, 3, seed=0)
    subsets = splits.label_fractions(base, (0.1, 0.5), seed=0)
    record = splits.save_splits(tmp_path, base, seed=0, folds=folds, fractions=subsets)
    info = json.loads(record.read_text())
    assert info["seed"] == 0 and info["folds"] == 3 and info["label_fractions"] == [0.1, 0.5]
    assert info["counts"]["test"]["patients"] == len(patients_by_split(base)["test"])
    assert set(info["manifests"]) == {
        "manifest.csv", "fold_0/manifest.csv", "fold_1/manifest.csv", "fold_2/manifest.csv",
        "fraction_0.1/manifest.csv", "fraction_0.5/manifest.csv",
    }  # fmt: skip
    back = read_manifest(tmp_path / "fold_1" / "manifest.csv")
    pd.testing.assert_series_equal(per_image_split(back), per_image_split(folds[1]))
    assert len(read_manifest(tmp_path / "fraction_0.1" / "manifest.csv")) == len(subsets[0.1])

    with pytest.raises(ValueError, match="already holds splits"):
        splits.save_splits(tmp_path, base, seed=0)
    # Overwriting with fewer outputs removes the earlier run's extra manifests.
    splits.save_splits(tmp_path, base, seed=1, overwrite=True)
    assert not (tmp_path / "fold_0").exists() and not (tmp_path / "fraction_0.1").exists()
    assert json.loads(record.read_text())["manifests"] == ["manifest.csv"]


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    split_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["split", *argv])
    return args.func(args)


def test_split_command_writes_the_split_folds_and_fractions(manifest, tmp_path, capsys):
    source = write_manifest(manifest, tmp_path / "in" / "manifest.csv")
    out = tmp_path / "splits"
    code = run_command(
        [str(source), "--out", str(out), "--val", "0.2", "--test", "0.1", "--folds", "3",
         "--fractions", "0.1,0.5,1", "--seed", "4"]
    )  # fmt: skip
    assert code == 0
    main = read_manifest(out / "manifest.csv")
    assert set(main["split"]) == {"train", "val", "test"}
    expected = splits.assign_split(manifest, {"train": 0.7, "val": 0.2, "test": 0.1}, seed=4)
    pd.testing.assert_series_equal(per_image_split(main), per_image_split(expected))
    assert all((out / f"fold_{i}" / "manifest.csv").is_file() for i in range(3))
    assert all((out / f"fraction_{f}" / "manifest.csv").is_file() for f in ("0.1", "0.5", "1"))
    printed = capsys.readouterr().out
    assert "fold 2:" in printed and "fraction 0.1:" in printed and "patients" in printed
    # A second run into the same folder is refused rather than silently replacing it.
    with pytest.raises(ValueError, match="already holds splits"):
        run_command([str(source), "--out", str(out)])


def test_split_command_keeps_an_existing_test_split_unless_resplit(manifest, tmp_path):
    official = splits.assign_split(manifest, {"train": 0.7, "val": 0.0, "test": 0.3}, seed=9)
    source = write_manifest(official, tmp_path / "official.csv")

    run_command([str(source), "--out", str(tmp_path / "kept"), "--val", "0.2"])
    kept = read_manifest(tmp_path / "kept" / "manifest.csv")
    assert patients_by_split(kept)["test"] == patients_by_split(official)["test"]
    non_test = len(patients_by_split(official)["train"])
    assert abs(len(patients_by_split(kept)["val"]) - 0.2 * non_test) <= 1

    run_command([str(source), "--out", str(tmp_path / "redrawn"), "--resplit", "--seed", "1"])
    redrawn = read_manifest(tmp_path / "redrawn" / "manifest.csv")
    assert patients_by_split(redrawn)["test"] != patients_by_split(official)["test"]
    assert abs(len(patients_by_split(redrawn)["test"]) - 0.1 * sum(STRATA.values())) <= 1


def test_split_command_explains_shares_that_leave_no_training(manifest, tmp_path):
    source = write_manifest(manifest, tmp_path / "manifest.csv")
    with pytest.raises(ValueError, match="--val 0.6 and --test 0.5 leave no patients for training"):
        run_command([str(source), "--out", str(tmp_path / "out"), "--val", "0.6", "--test", "0.5"])


def test_split_command_rejects_a_malformed_fraction_list(tmp_path):
    with pytest.raises(SystemExit):
        run_command(["m.csv", "--out", str(tmp_path), "--fractions", "0.1,half"])
