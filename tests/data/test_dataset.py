"""The pretraining dataset over cache manifests, its epoch order and its augmentation."""

import logging

import cv2
import numpy as np
import pytest
import torch

from vismae.data.dataset import Augmentation, EpochShuffle, PretrainImages, read_cached_image
from vismae.synthetic.cache import CacheImage


def small_cache(synthetic_cache, folder, count, splits=None, bits=8):
    """``count`` cached 16 x 12 images (folder/images/img0.png, img1.png, ...) and their cache
    manifest, all in ``splits`` (default: train); returns (manifest, image paths)."""
    splits = splits or ["train"] * count
    images = [CacheImage(f"p{index}", image_id=f"img{index}", split=split) for index, split in enumerate(splits)]
    manifest = synthetic_cache(images, folder, size=(16, 12), bits=bits)
    return manifest, [folder / "images" / f"img{index}.png" for index in range(count)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cached_images_read_as_floats_in_unit_range(tmp_path, dtype):
    pixels = np.array([[0, np.iinfo(dtype).max], [np.iinfo(dtype).max // 2, 1]], dtype=dtype)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    image = read_cached_image(tmp_path / "a.png")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, pixels / np.iinfo(dtype).max, rtol=1e-6)


def test_items_are_one_channel_tensors_of_the_cache_size(tmp_path, synthetic_cache):
    manifest, paths = small_cache(synthetic_cache, tmp_path, 3, bits=16)
    dataset = PretrainImages.from_manifests([manifest], ["train"], (16, 12))
    item = dataset[1]
    assert item["image"].shape == (1, 16, 12) and item["image"].dtype == torch.float32
    assert item["index"] == 1 and item["corrupt"] is False
    expected = cv2.imread(str(paths[1]), cv2.IMREAD_UNCHANGED) / 65535
    np.testing.assert_allclose(item["image"][0].numpy(), expected, rtol=1e-6)


def test_splits_select_rows_and_repeated_manifests_are_read_once(tmp_path, synthetic_cache):
    manifest, _ = small_cache(synthetic_cache, tmp_path, 4, ["train", "val", "test", "train"])
    dataset = PretrainImages.from_manifests([manifest, manifest], ["train", "test"], (16, 12))
    assert [p.rsplit("/", 1)[-1] for p in dataset.paths] == ["img0.png", "img2.png", "img3.png"]


def test_an_image_of_another_size_stops_with_the_file_named(tmp_path, synthetic_cache):
    manifest, paths = small_cache(synthetic_cache, tmp_path, 3)
    cv2.imwrite(str(paths[2]), np.zeros((20, 12), np.uint8))
    with pytest.raises(ValueError) as error:
        PretrainImages.from_manifests([manifest], ["train"], (16, 12))
    assert "img2.png: image is 20x12" in str(error.value) and "data.size is 16x12" in str(error.value)


def test_unopenable_files_are_skipped_and_counted(tmp_path, caplog, synthetic_cache):
    manifest, paths = small_cache(synthetic_cache, tmp_path, 4)
    paths[1].write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        dataset = PretrainImages.from_manifests([manifest], ["train"], (16, 12))
    assert len(dataset) == 3 and dataset.skipped == [str(paths[1])]
    assert "skipping 1 of 4 cached images" in caplog.text and "img1.png" in caplog.text


def test_a_file_that_fails_to_decode_is_replaced_and_flagged(tmp_path, caplog, synthetic_cache):
    manifest, paths = small_cache(synthetic_cache, tmp_path, 3)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    dataset = PretrainImages.from_manifests([manifest], ["train"], (16, 12))
    assert len(dataset) == 3
    with caplog.at_level(logging.WARNING):
        item = dataset[0]
    assert item["corrupt"] is True
    assert torch.equal(item["image"], dataset[1]["image"])  # the next image stands in
    assert "img0.png" in caplog.text


def test_epoch_order_depends_only_on_seed_and_epoch_and_fills_whole_steps():
    sampler = EpochShuffle(num_images=50, samples_per_step=16, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    assert len(first) == len(sampler) == 48
    assert all(epoch == 2 for _, epoch in first)
    assert len({index for index, _ in first}) == 48
    again = EpochShuffle(num_images=50, samples_per_step=16, seed=3)
    again.set_epoch(2)
    assert list(again) == first
    sampler.set_epoch(3)
    assert [index for index, _ in sampler] != [index for index, _ in first]


def test_a_dataset_smaller_than_one_step_is_refused():
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        EpochShuffle(num_images=10, samples_per_step=16)


def test_augmentation_is_vertical_only_and_repeatable(tmp_path, synthetic_cache):
    manifest, _ = small_cache(synthetic_cache, tmp_path, 2)
    flipping = PretrainImages.from_manifests([manifest], ["train"], (16, 12), Augmentation(vflip_prob=1.0))
    plain = flipping.load(0)
    np.testing.assert_array_equal(flipping[(0, 5)]["image"][0].numpy(), plain[::-1])
    np.testing.assert_array_equal(flipping[0]["image"][0].numpy(), plain)  # no epoch: no augmentation

    jitter = PretrainImages.from_manifests([manifest], ["train"], (16, 12), Augmentation(intensity_jitter=0.3), seed=1)
    a, b, c = jitter[(0, 1)]["image"], jitter[(0, 1)]["image"], jitter[(0, 2)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
