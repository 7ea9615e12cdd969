"""Shared test settings and test data.

Tests run the tiny models on one CPU thread: their operations are too small to split, and two
threads per process wait on each other (and on the second process of the distributed tests) far
more than they gain. Test data comes from the fixtures below: `dicom_file` writes DICOM files,
`synthetic_cache` writes prepared caches, `pretrain_cache` is one such cache for pretraining."""

import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Test data: one DICOM writer and one synthetic-cache builder, both the package's own.

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vismae.synthetic.cache import CacheImage, write_synthetic_cache  # noqa: E402
from vismae.synthetic.dicom_writer import write_dicom  # noqa: E402

# Identifying attributes every test DICOM carries, so tests can check that nothing repeats them.
PATIENT_NAME = "Doe^Jane"


@pytest.fixture(scope="session")
def dicom_file():
    """``dicom_file(path, pixels=None, **options)`` writes one DICOM file through
    vismae.synthetic.dicom_writer.write_dicom (options: bits_stored, photometric,
    transfer_syntax, sop_class and any DICOM keyword) and returns its path. Without pixels it
    stores a blank 4 x 4 12-bit image, for tests of the header alone."""

    def write(path, pixels=None, **options):
        if pixels is None:
            pixels = np.zeros((4, 4), np.uint16)
            options.setdefault("bits_stored", 12)
        options.setdefault("PatientName", PATIENT_NAME)
        return write_dicom(path, pixels, **options)

    return write


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """``synthetic_cache(images, folder=None, **options)`` writes a prepared cache of
    ``CacheImage`` rows through vismae.synthetic.cache.write_synthetic_cache (options: size,
    bits, seed, malignant_tissue, dataset) into ``folder`` or a new temporary one, and returns
    its manifest.csv."""

    def write(images, folder=None, **options):
        return write_synthetic_cache(folder or tmp_path_factory.mktemp("cache"), images, **options)

    return write


@pytest.fixture(scope="session")
def pretrain_cache(synthetic_cache):
    """32 unlabelled 64 px images for pretraining: two views of 16 patients, half of them with
    a lesion; patients cycle through train, train, train, val. No test patient: pretraining
    leaves test images out by default, and the tests pretrain on all 32."""
    images = [
        CacheImage(f"p{index // 2:03d}", view=("CC", "MLO")[index % 2], has_roi=index % 4 < 2,
                   split=("train", "train", "train", "val")[(index // 2) % 4])
        for index in range(32)
    ]  # fmt: skip
    return synthetic_cache(images)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each run builds its own Accelerator: forget Accelerate's process-wide state after every
    test that imported it, so that no test inherits another's process layout or precision."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
