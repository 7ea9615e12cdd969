"""The seeded patient-grouped 10:1 split and the dataset registry."""

import numpy as np
import pytest

from vismae.data import sources
from vismae.data.sources.grouped_split import patient_split, worst_labels


def dataset(n_patients: int, images_per_patient: int = 3):
    rng = np.random.default_rng(0)
    patients, labels = [], []
    for patient in range(n_patients):
        malignant = patient % 5 == 0
        for image in range(images_per_patient):
            patients.append(f"p{patient}")
            labels.append("malignant" if malignant and image == 0 else rng.choice(["benign", "normal"]))
    return np.array(patients), np.array(labels)


def test_worst_label_is_the_patients_most_severe():
    assert list(worst_labels(["a", "a", "b", "b", "c"], ["normal", "malignant", "unknown", "benign", "unknown"])) == [
        "malignant", "malignant", "benign", "benign", "unknown",
    ]


@pytest.mark.parametrize("n_patients", [3, 10, 55, 220])
def test_no_patient_on_both_sides_and_ten_to_one(n_patients):
    patients, labels = dataset(n_patients)
    for seed in range(4):
        split = patient_split(patients, labels, seed=seed)
        train, test = set(patients[split == "train"]), set(patients[split == "test"])
        assert train and test and not train & test and train | test == set(patients)
        if n_patients >= 55:
            assert len(test) == pytest.approx(n_patients / 11, abs=1)


def test_stratified_by_worst_label_and_seeded():
    patients, labels = dataset(220)
    split = patient_split(patients, labels, seed=1)
    malignant = set(patients[worst_labels(patients, labels) == "malignant"])
    test = set(patients[split == "test"])
    assert len(test & malignant) == pytest.approx(len(malignant) / 11, abs=1)
    assert list(patient_split(patients, labels, seed=1)) == list(split)
    assert list(patient_split(patients, labels, seed=2)) != list(split)


def test_a_single_patient_stays_in_train():
    assert list(patient_split(["a", "a"], ["benign", "benign"])) == ["train", "train"]


def test_registry_names_every_reader_and_refuses_foreign_options(tmp_path):
    assert set(sources.READERS) == {"vindr", "cdd-cesm", "cbis-ddsm", "table"}
    assert sources.options_of("cdd-cesm") == {"include_cesm", "seed", "allow_missing"}
    assert sources.options_of("vindr") == {"allow_missing"}
    with pytest.raises(ValueError, match="dataset vindr takes no option seed"):
        sources.read_dataset("vindr", tmp_path, seed=1)
    with pytest.raises(ValueError, match="unknown dataset 'inbreast'"):
        sources.reader("inbreast")
