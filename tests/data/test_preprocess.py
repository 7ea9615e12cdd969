"""Breast crop, flip, CLAHE, resize/pad, and ROI shapes and masks moved with the pixels."""

import math

import numpy as np
import pytest

from vismae.data import roi
from vismae.data.preprocess import Preprocessing, Transform, breast_region, parse_size, preprocess

HEIGHT, WIDTH = 600, 480
BREAST = 0.35


def centres():
    """Pixel-centre coordinates (continuous convention: pixel i covers [i, i + 1))."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return xx + 0.5, yy + 0.5


def mammogram(on_right=False) -> np.ndarray:
    """A half-ellipse breast against the left edge (or the right), gray with mild texture."""
    x, y = centres()
    if on_right:
        x = WIDTH - x
    image = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    breast = (x / 300) ** 2 + ((y - 300) / 250) ** 2 <= 1
    image[breast] = BREAST + 0.1 * (1 - x[breast] / 300)
    return image


def ellipse_pixels(cx, cy, rx, ry, theta) -> np.ndarray:
    """Pixels inside an ellipse whose rx axis is turned by theta from +x towards +y."""
    x, y = centres()
    u = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
    v = -(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def iou(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return (a & b).sum() / (a | b).sum()


NO_CLAHE = Preprocessing(size=(160, 128), clahe_clip=0)


def test_parse_size():
    assert parse_size("384") == (384, 384)
    assert parse_size("512x416") == (512, 416)
    for bad in ("0", "12x", "axb", "1x2x3"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_crop_excludes_film_border_and_burned_in_label():
    image = mammogram()
    image[:8, :] = 1.0  # bright film edge along the top, touching the breast
    image[:, -10:] = 1.0  # and along the right
    image[480:520, 380:450] = 1.0  # a burned-in view label away from the breast
    (x0, y0, x1, y1), breast = breast_region(image)
    assert x0 == 0 and abs(x1 - 300) <= 6  # the breast's own extent, not the image's
    assert abs(y0 - 50) <= 6 and abs(y1 - 550) <= 6
    assert not breast[500, 400] and breast[300, 100]


def test_crop_keeps_the_faint_fatty_margin_on_grey_film():
    rng = np.random.default_rng(0)
    x, y = centres()
    radius = np.sqrt((x / 300) ** 2 + ((y - 300) / 250) ** 2)
    image = 0.15 + rng.normal(0, 0.03, (HEIGHT, WIDTH))  # scanned film: grey, grainy air
    breast = radius <= 1
    # Dense in the middle, fading to fat (barely brighter than the film) at the skin line.
    image[breast] = 0.25 + 0.55 * (1 - radius[breast]) ** 0.7
    (x0, y0, x1, y1), _ = breast_region(np.clip(image, 0, 1).astype(np.float32))
    assert x0 == 0 and abs(x1 - 300) <= 8 and abs(y0 - 50) <= 8 and abs(y1 - 550) <= 8


def test_label_inside_the_crop_box_is_blanked():
    image = mammogram()
    image[60:80, 250:290] = 1.0  # inside the box of the breast, outside the breast itself
    pixels, transform = preprocess(image, "L", NO_CLAHE)
    label = np.zeros_like(image)
    label[60:80, 250:290] = 1
    where = transform.apply_to_image(label) > 0.5
    assert where.any() and np.all(pixels[where] == 0)


def test_breast_ends_at_the_left_edge_for_both_sides():
    for on_right, laterality in ((False, "L"), (True, "R")):
        pixels, transform = preprocess(mammogram(on_right), laterality, NO_CLAHE)
        assert transform.flipped == on_right
        columns = pixels.astype(float).sum(axis=0)
        assert columns[0] > 0 and columns[:20].mean() > 2 * columns[-40:].mean()


def test_the_pixels_not_the_laterality_column_decide_the_flip():
    _, wrong_label = preprocess(mammogram(on_right=False), "R", NO_CLAHE)
    _, mirrored = preprocess(mammogram(on_right=True), "L", NO_CLAHE)
    assert not wrong_label.flipped and mirrored.flipped


def test_rectangular_size_pads_on_the_right_and_bottom():
    wide = Preprocessing(size=(96, 200), clahe_clip=0)
    pixels, transform = preprocess(mammogram(), "L", wide)
    assert pixels.shape == (96, 200)
    content_width, content_height = transform.resized_size
    assert content_height == 96 and content_width < 200
    assert np.all(pixels[:, content_width:] == 0) and pixels[:, 0].any()
    # Aspect is kept: crop 300x500 (WxH) -> about 58x96.
    assert transform.scale_x == pytest.approx(transform.scale_y, rel=0.02)


@pytest.mark.parametrize("bits,dtype", [(8, np.uint8), (16, np.uint16)])
def test_bit_depth_and_clahe(bits, dtype):
    image = mammogram()
    x, y = centres()
    texture = 0.02 * np.sin(x / 6) * np.sin(y / 6)  # faint structure in the breast
    image[image > 0] += texture[image > 0]
    plain, _ = preprocess(image, "L", Preprocessing(size=(300, 300), bits=bits, clahe_clip=0))
    enhanced, _ = preprocess(image, "L", Preprocessing(size=(300, 300), bits=bits, clahe_clip=2.0))
    assert plain.dtype == enhanced.dtype == dtype
    top = np.iinfo(dtype).max
    assert abs(int(plain.max()) - round((BREAST + 0.12) * top)) <= 0.01 * top
    # CLAHE lifts the faint texture; the air around the breast stays black.
    patch = (slice(100, 160), slice(20, 80))
    assert enhanced[patch].std() > 1.8 * plain[patch].std()
    assert np.all(enhanced[plain == 0] == 0)


def test_transform_maps_points_there_and_back():
    transform = Transform(600, 480, 180, 50, 480, 550, True, 0.25, 0.25, 160, 128)
    points = np.array([[180.0, 50.0], [480.0, 550.0], [300.0, 300.0]])
    mapped = transform.map_points(points)
    np.testing.assert_allclose(mapped[0], [75.0, 0.0])  # left crop edge flips to the right
    np.testing.assert_allclose(mapped[1], [0.0, 125.0])  # the chest wall ends at x = 0
    np.testing.assert_allclose(transform.unmap_points(mapped), points)
    assert Transform.from_dict({k: str(v) for k, v in transform.as_dict().items()}) == transform


LESIONS = {
    # name: (shape as annotated, pixels of the lesion)
    "ellipse": (
        {"type": "ellipse", "cx": 150.0, "cy": 260.0, "rx": 45.0, "ry": 14.0, "theta": 0.6},
        lambda: ellipse_pixels(150.0, 260.0, 45.0, 14.0, 0.6),
    ),
    "polygon": (
        {"type": "polygon", "points": [[120 + 30 * math.cos(a), 330 + 30 * math.sin(a)]
                                       for a in np.linspace(0, 2 * math.pi, 32, endpoint=False)]},
        lambda: ellipse_pixels(120.0, 330.0, 30.0, 30.0, 0.0),
    ),
    "point": (  # drawn as a disk of the default radius, 20 original pixels
        {"type": "point", "cx": 130.0, "cy": 300.0},
        lambda: ellipse_pixels(130.0, 300.0, 20.0, 20.0, 0.0),
    ),
    "box": (
        {"type": "box", "xmin": 80.0, "ymin": 200.0, "xmax": 160.0, "ymax": 240.0},
        lambda: ellipse_pixels(120.0, 220.0, 40.0, 20.0, 0.0),
    ),
}


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("kind", sorted(LESIONS))
def test_shapes_and_masks_follow_the_lesion(kind, laterality):
    shape, lesion_pixels = LESIONS[kind]
    on_right = laterality == "R"
    image = mammogram(on_right)
    lesion = lesion_pixels()
    if on_right:  # the same breast mirrored, and its annotation with it
        lesion = lesion[:, ::-1]
        shape = mirror_shape(shape)
    image[lesion] = 0.95
    pixels, transform = preprocess(image, laterality, NO_CLAHE)
    assert transform.flipped == on_right

    blob = pixels > 0.75 * np.iinfo(pixels.dtype).max  # the lesion as the cached image shows it
    cached_mask = transform.apply_to_mask(roi.rasterize([shape], HEIGHT, WIDTH))
    cached_shape = roi.transform_shapes([shape], transform)[0]
    redrawn = roi.rasterize([cached_shape], *pixels.shape)
    if kind == "box":
        # A box encloses the lesion: compare it with the blob's bounding box.
        ys, xs = np.nonzero(blob)
        blob_box = np.zeros_like(blob)
        blob_box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert iou(cached_mask, blob_box) > 0.8 and iou(redrawn, blob_box) > 0.8
        assert iou(cached_mask, blob) > 0.6
    else:
        assert iou(cached_mask, blob) > 0.8
        assert iou(redrawn, blob) > 0.8


def mirror_shape(shape: dict) -> dict:
    if shape["type"] == "box":
        return {**shape, "xmin": WIDTH - shape["xmax"], "xmax": WIDTH - shape["xmin"]}
    if shape["type"] == "polygon":
        return {**shape, "points": [[WIDTH - x, y] for x, y in shape["points"]]}
    mirrored = {**shape, "cx": WIDTH - shape["cx"]}
    if "theta" in shape:
        mirrored["theta"] = -shape["theta"]
    return mirrored


def test_a_lesion_smaller_than_a_cached_pixel_survives_in_the_mask():
    image = mammogram()
    pixels, transform = preprocess(image, "L", Preprocessing(size=(48, 48), clahe_clip=0))
    tiny = roi.rasterize([{"type": "box", "xmin": 150, "ymin": 300, "xmax": 153, "ymax": 303}], HEIGHT, WIDTH)
    assert transform.scale_x < 0.2  # a 3-pixel lesion is well under one cached pixel
    assert transform.apply_to_mask(tiny).sum() > 0
    big = roi.rasterize([{"type": "box", "xmin": 100, "ymin": 200, "xmax": 200, "ymax": 300}], HEIGHT, WIDTH)
    moved = transform.apply_to_mask(big) > 0
    # A large one keeps its size: no growth from keeping every touched pixel.
    expected = (100 * transform.scale_x) * (100 * transform.scale_y)
    assert abs(moved.sum() - expected) <= 0.2 * expected


def test_rasterize_points_ellipses_and_mask_files(tmp_path):
    import cv2

    point = roi.rasterize([{"type": "point", "cx": 50.5, "cy": 40.5}], 100, 100, point_radius=5)
    assert point[40, 50] == 255 and point.sum() / 255 == pytest.approx(math.pi * 25, rel=0.2)
    # theta turns the long axis from +x towards +y (down the displayed image).
    tilted = roi.rasterize([{"type": "ellipse", "cx": 50, "cy": 50, "rx": 30, "ry": 4, "theta": math.pi / 4}], 100, 100)
    assert tilted[70, 70] == 255 and tilted[30, 70] == 0
    drawn = np.zeros((100, 100), dtype=np.uint8)
    drawn[10:20, 30:40] = 1
    cv2.imwrite(str(tmp_path / "mask.png"), drawn)
    from_file = roi.rasterize([{"type": "mask", "path": str(tmp_path / "mask.png")}], 100, 100)
    assert from_file.sum() / 255 == 100 and from_file[15, 35] == 255
    with pytest.raises(ValueError, match="mask.png.*100x100"):
        roi.rasterize([{"type": "mask", "path": str(tmp_path / "mask.png")}], 200, 100)
