"""The synthetic prepared cache: a valid cache manifest, images and masks of the asked size and
depth, lesions where ROIs are and only there, labels that shape the lesions, same seed same files."""

import cv2
import numpy as np
import pytest

from vismae.data.manifest import CACHE_COLUMNS, read_manifest
from vismae.synthetic.cache import CacheImage, draw_breast, write_synthetic_cache

IMAGES = [
    CacheImage("p0", label="malignant", has_roi=True, split="train", birads=5),
    CacheImage("p0", view="MLO", label="malignant", has_roi=True, split="train"),
    CacheImage("p1", laterality="R", label="benign", has_roi=True, split="val"),
    CacheImage("p2", label="normal", split="test", image_id="plain"),
]


def test_a_cache_manifest_with_images_masks_and_boxes(tmp_path):
    manifest = write_synthetic_cache(tmp_path / "cache", IMAGES, size=(48, 40), bits=16)
    frame = read_manifest(manifest).set_index("image_id")
    assert set(CACHE_COLUMNS) <= set(read_manifest(manifest).columns)  # a cache manifest
    assert list(frame.index) == ["p0_LCC", "p0_LMLO", "p1_RCC", "plain"]
    assert list(frame["split"]) == ["train", "train", "val", "test"] and frame.loc["p0_LCC", "birads"] == 5
    for image_id, row in frame.iterrows():
        pixels = cv2.imread(row["path"], cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (48, 40) and pixels.dtype == np.uint16
        assert pixels[:, 0].any() and not pixels[:, -1].any(), f"{image_id}: the breast is not against the left edge"
        assert bool(row["mask_path"]) == row["has_roi"] == bool(row["roi"])
        if row["has_roi"]:
            mask = cv2.imread(row["mask_path"], cv2.IMREAD_UNCHANGED)
            ys, xs = np.nonzero(mask)
            (box,) = row["roi"]
            assert (box["xmin"], box["ymin"], box["xmax"], box["ymax"]) == (xs.min(), ys.min(), xs.max(), ys.max())
            assert pixels[mask > 0].mean() > 1.3 * pixels[(mask == 0) & (pixels > 0)].mean()  # the lesion stands out


def test_malignant_lesions_are_larger_than_benign_ones():
    rng = np.random.default_rng(0)
    areas = {label: [draw_breast(rng, (64, 64), CacheImage("p", label=label, has_roi=True))[1].sum() for _ in range(20)]
             for label in ("malignant", "benign")}  # fmt: skip
    assert min(areas["malignant"]) > max(areas["benign"])


def test_the_same_seed_gives_the_same_files(tmp_path):
    first = read_manifest(write_synthetic_cache(tmp_path / "a", IMAGES, seed=3))
    again = read_manifest(write_synthetic_cache(tmp_path / "b", IMAGES, seed=3))
    other = read_manifest(write_synthetic_cache(tmp_path / "c", IMAGES, seed=4))
    read = lambda path: cv2.imread(path, cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert all(np.array_equal(read(a), read(b)) for a, b in zip(first["path"], again["path"]))
    assert not all(np.array_equal(read(a), read(b)) for a, b in zip(first["path"], other["path"]))


def test_a_drawing_that_contradicts_has_roi_is_refused(tmp_path):
    def no_lesion(rng, shape, image):
        return np.zeros(shape), np.zeros(shape, bool)

    with pytest.raises(ValueError, match="p0_LCC: has_roi is True, but its drawn lesion mask is empty"):
        write_synthetic_cache(tmp_path, IMAGES[:1], draw=no_lesion)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        write_synthetic_cache(tmp_path, IMAGES, bits=12)
