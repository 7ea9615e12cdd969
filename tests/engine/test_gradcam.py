"""Grad-CAM on the classifier's last encoder stage, and its way back onto the original image
through the recorded crop, flip and resize."""

import numpy as np
import pytest
import torch

from vismae.data.preprocess import Preprocessing, Transform, preprocess
from vismae.engine.gradcam import GradCam, LogOdds, SplitAtFeatures, display_copy, heat_on_original, side_by_side
from vismae.models.heads import build_task_model
from vismae.models.weights import load_encoder

# A 400 x 300 original whose breast (x 100..280, y 40..360) lay on the right: cropped, flipped,
# shrunk to 36 x 64 and padded to 64 x 64.
FLIPPED = Transform(source_height=400, source_width=300, crop_x0=100, crop_y0=40, crop_x1=280, crop_y1=360,
                    flipped=True, scale_x=36 / 180, scale_y=64 / 320, out_height=64, out_width=64)  # fmt: skip


def blob(shape, centre, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return np.exp(-((xx + 0.5 - centre[0]) ** 2 + (yy + 0.5 - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_a_hot_spot_lands_where_the_transform_says_it_came_from():
    heat = blob((64, 64), centre=(10.0, 30.0), sigma=1.5)  # prepared (x, y) = (10, 30)
    original = heat_on_original(heat, FLIPPED, (400, 300))
    y, x = np.unravel_index(np.argmax(original), original.shape)
    expected_x, expected_y = FLIPPED.unmap_points([[10.0, 30.0]])[0]  # x mirrored back: 100 + 180 - 50 = 230
    assert abs(x + 0.5 - expected_x) <= 2.5 and abs(y + 0.5 - expected_y) <= 2.5
    assert expected_x == pytest.approx(230.0)
    # Nothing lands outside the crop box (but for bilinear blur within one prepared pixel, 5
    # original pixels, of its edge), nor comes from the padding (prepared x >= 36, which would
    # land left of the box).
    assert original[:, :100].max() == 0 and original[:, 285:].max() == 0 and original[:35].max() == 0


def test_the_map_carried_back_and_forth_is_the_same_map():
    heat = blob((64, 64), centre=(18.0, 32.0), sigma=8.0)
    there = heat_on_original(heat, FLIPPED, (400, 300))
    back = FLIPPED.apply_to_image(there)  # the transform the pixels went through
    width, height = FLIPPED.resized_size
    inner = (slice(2, height - 2), slice(2, width - 2))
    assert np.abs(back[inner] - heat[inner]).max() < 0.05


def test_a_scaled_display_copy_gets_the_map_at_its_scale():
    heat = blob((64, 64), centre=(10.0, 30.0), sigma=1.5)
    full = heat_on_original(heat, FLIPPED, (400, 300))
    half = heat_on_original(heat, FLIPPED, (200, 150))
    full_peak = np.array(np.unravel_index(np.argmax(full), full.shape))
    half_peak = np.array(np.unravel_index(np.argmax(half), half.shape))
    assert np.abs(full_peak / 2 - half_peak).max() <= 1.5


def test_the_transform_of_a_real_preprocessing_maps_back():
    rng = np.random.default_rng(0)
    image = np.zeros((200, 160), np.float32)
    image[20:180, 70:160] = 0.5 + 0.1 * rng.random((160, 90))  # a breast against the right edge: flipped
    _, transform = preprocess(image, "R", Preprocessing(size=(64, 64), bits=8))
    assert transform.flipped
    heat = np.ones((64, 64), np.float32)
    original = heat_on_original(heat, transform, image.shape)
    inside = original[transform.crop_y0 + 2 : transform.crop_y1 - 2, transform.crop_x0 + 2 : transform.crop_x1 - 2]
    assert inside.min() > 0.99 and original[:, : transform.crop_x0 - 1].max() == 0


def test_grad_cam_is_the_positive_part_of_each_position_s_log_odds_contribution():
    torch.manual_seed(0)
    model = build_task_model(load_encoder("random:tiny", img_size=(64, 64), verbose=False), "classify").eval()
    images = torch.rand(3, 1, 64, 64)
    maps, peaks = GradCam(model)(images)
    with torch.no_grad():
        features = model.head.norm(model.encoder.forward_features(images))  # B x C x 2 x 2
        weights = model.head.fc.weight[1] - model.head.fc.weight[0]
        # Average pooling: the log-odds gradient is weights / positions at every position.
        contribution = torch.einsum("c,bchw->bhw", weights, features) / (features.shape[2] * features.shape[3])
    expected = contribution.clamp(min=0).flatten(1).amax(1).numpy()
    assert peaks == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert maps.shape == (3, 64, 64) and maps.max() <= 1.0 and maps.min() >= 0.0
    for one, peak in zip(maps, peaks):
        assert one.max() == pytest.approx(1.0 if peak > 0 else 0.0, abs=1e-6)


def test_a_timm_backbone_gets_maps_from_its_last_feature_stage():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("convnextv2_atto", pretrained=False, in_chans=1, num_classes=2).eval()
    images = torch.rand(2, 1, 64, 64)
    maps, peaks = GradCam(model)(images)
    assert maps.shape == (2, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0 and (peaks >= 0).all()
    with torch.no_grad():  # split at its features, the network computes what it did whole
        logits = model(images)
        split = LogOdds(SplitAtFeatures(model))(images)
    assert torch.allclose(split[:, 1], logits[:, 1] - logits[:, 0], atol=1e-6)


def test_the_drawing_puts_the_image_beside_its_map():
    gray = display_copy(np.linspace(0, 1, 3000 * 2400, dtype=np.float32).reshape(3000, 2400))
    assert gray.shape == (1024, 819) and gray.dtype == np.uint8
    panel = side_by_side(gray, np.zeros(gray.shape, np.float32), caption="LCC p=0.500")
    assert panel.shape == (28 + 1024, 2 * 819 + 4, 3)
    assert (panel[28:, :819, 0] == gray).all() and (panel[28:, 823:, 0] == gray).all()  # no heat: the image unchanged
