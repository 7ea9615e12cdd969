"""DICOM and raster decoding: the grayscale pipeline checked against pydicom's own functions."""

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import JPEG2000Lossless, RLELossless

from vismae.data.dicom import DicomError, is_dicom, percentile_window, read_dicom, read_image

BITS = 12
TOP = 2**BITS - 1


def phantom_pixels(height=96, width=80, seed=0) -> np.ndarray:
    """12-bit stored values: dark air, a breast-like ramp, a bright lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    pixels = np.full((height, width), 40, dtype=np.float64)
    breast = (xx / (0.7 * width)) ** 2 + ((yy - height / 2) / (0.45 * height)) ** 2 <= 1
    pixels[breast] = 1200 + 1800 * (1 - xx[breast] / width) + rng.normal(0, 60, breast.sum())
    pixels[(xx - width // 4) ** 2 + (yy - height // 2) ** 2 <= 36] = 3900
    return np.clip(pixels, 0, TOP).astype(np.uint16)


@pytest.fixture
def write_dicom(dicom_file):
    """A 12-bit mammogram of a named patient, by the shared writer; attributes by keyword."""

    def write(path, pixels, photometric="MONOCHROME2", compress=None, **attributes):
        syntax = {"transfer_syntax": compress} if compress is not None else {}
        return dicom_file(path, pixels, photometric=photometric, bits_stored=BITS, Modality="MG", PatientID="ID-7", **syntax, **attributes)

    return write


def pydicom_window(path, low, high):
    """What pydicom's own modality + windowing steps give, scaled by the known output range."""
    dataset = pydicom.dcmread(path)
    values = apply_windowing(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    return (values - low) / (high - low)


@pytest.fixture
def pixels():
    return phantom_pixels()


def test_linear_window_matches_pydicom(tmp_path, pixels, write_dicom):
    path = write_dicom(tmp_path / "a.dcm", pixels, WindowCenter=2000, WindowWidth=2400, VOILUTFunction="LINEAR")
    image = read_dicom(path)
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(image, pydicom_window(path, 0, TOP), atol=1e-6)
    assert image[48, 20] == 1.0 and image[0, 79] == 0.0  # lesion saturates, air is black


def test_first_of_several_windows_is_used(tmp_path, pixels, write_dicom):
    path = write_dicom(tmp_path / "a.dcm", pixels, WindowCenter=[2000, 1000], WindowWidth=[2400, 500])
    only_first = write_dicom(tmp_path / "b.dcm", pixels, WindowCenter=2000, WindowWidth=2400)
    np.testing.assert_array_equal(read_dicom(path), read_dicom(only_first))


def test_linear_exact_and_sigmoid_windows_match_pydicom(tmp_path, pixels, write_dicom):
    for function in ("LINEAR_EXACT", "SIGMOID"):
        path = write_dicom(tmp_path / f"{function}.dcm", pixels, WindowCenter=2100, WindowWidth=1500, VOILUTFunction=function)
        np.testing.assert_allclose(read_dicom(path), pydicom_window(path, 0, TOP), atol=1e-6)
    sigmoid = read_dicom(tmp_path / "SIGMOID.dcm")
    assert 0 < sigmoid.min() and sigmoid.max() < 1  # a sigmoid never reaches its ends


def test_monochrome1_is_inverted(tmp_path, pixels, write_dicom):
    # The same anatomy stored inverted, as MONOCHROME1 detectors do: the result must not change.
    plain = write_dicom(tmp_path / "m2.dcm", pixels, WindowCenter=2000, WindowWidth=2400)
    inverted = write_dicom(tmp_path / "m1.dcm", (TOP - pixels).astype(np.uint16), "MONOCHROME1",
                           WindowCenter=TOP - 2000 + 1, WindowWidth=2400)
    expected = 1.0 - pydicom_window(inverted, 0, TOP)
    np.testing.assert_allclose(read_dicom(inverted), expected, atol=1e-6)
    np.testing.assert_allclose(read_dicom(inverted), read_dicom(plain), atol=2e-3)
    assert read_dicom(inverted)[48, 20] == 1.0  # the lesion stays bright


def test_presentation_lut_shape_inverse_is_inverted(tmp_path, pixels, write_dicom):
    plain = write_dicom(tmp_path / "a.dcm", pixels, WindowCenter=2000, WindowWidth=2400)
    inverse = write_dicom(tmp_path / "b.dcm", pixels, WindowCenter=2000, WindowWidth=2400, PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(read_dicom(inverse), 1.0 - read_dicom(plain), atol=1e-6)


def test_rescale_slope_intercept_then_window(tmp_path, pixels, write_dicom):
    slope, intercept = 2.0, -100.0
    pixels[0, 0] = 2050  # 4000 after the rescale: the window centre
    path = write_dicom(tmp_path / "a.dcm", pixels, RescaleSlope=slope, RescaleIntercept=intercept,
                       WindowCenter=4000, WindowWidth=5000)
    low, high = intercept, TOP * slope + intercept  # pydicom's output range after a rescale
    image = read_dicom(path)
    np.testing.assert_allclose(image, pydicom_window(path, low, high), atol=1e-6)
    assert image[0, 0] == pytest.approx(0.5, abs=1e-3)  # the window is in rescaled units


def test_voi_lut_sequence_matches_pydicom(tmp_path, pixels, write_dicom):
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 16])
    lut.add_new("LUTData", "US", [int(v) for v in np.round(np.sqrt(np.arange(4096) / 4095) * 40000)])
    path = write_dicom(tmp_path / "a.dcm", pixels, VOILUTSequence=[lut], WindowCenter=100, WindowWidth=10)
    dataset = pydicom.dcmread(path)
    expected = apply_voi(dataset.pixel_array, dataset) / 40000  # the LUT spans 0..40000
    image = read_dicom(path)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert 0.2 < image.mean() < 0.9  # the LUT won over the (absurd) window also present


def test_jpeg2000_and_rle_decode_equal_to_uncompressed(tmp_path, pixels, write_dicom):
    attributes = {"WindowCenter": 2000, "WindowWidth": 2400}
    plain = read_dicom(write_dicom(tmp_path / "plain.dcm", pixels, **attributes))
    for syntax in (JPEG2000Lossless, RLELossless):
        path = write_dicom(tmp_path / f"{syntax.name[:4]}.dcm", pixels, compress=syntax, **attributes)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(read_dicom(path), plain)


def test_for_processing_is_refused_unless_allowed(tmp_path, pixels, write_dicom):
    path = write_dicom(tmp_path / "raw.dcm", pixels, PresentationIntentType="FOR PROCESSING")
    with pytest.raises(DicomError, match="FOR PROCESSING") as caught:
        read_dicom(path)
    assert "raw.dcm" in str(caught.value) and "Doe" not in str(caught.value)
    assert read_dicom(path, allow_for_processing=True).max() == 1.0


def test_percentile_window_when_the_file_has_none(tmp_path, pixels, write_dicom):
    image = read_dicom(write_dicom(tmp_path / "film.dcm", pixels))
    tissue = pixels > 40
    assert np.all(image[~tissue] == 0)  # air stays black
    assert image[48, 20] == 1.0  # the brightest tissue saturates
    # The window is fitted to the tissue: its 0.5-99.5 % span covers (almost) all of [0, 1].
    low, high = np.percentile(image[tissue], [1, 99])
    assert low < 0.1 and high > 0.9


def test_percentile_window_ignores_the_inverted_background():
    values = np.full((64, 64), 4095.0)  # MONOCHROME1 air is the maximum
    values[16:48, 0:40] = np.linspace(500, 1500, 40)
    low, high = percentile_window(values, invert=True)
    assert 500 <= low < 510 and 1490 < high <= 1500  # the tissue's range, not the air's


def test_pixel_padding_is_black(tmp_path, pixels, write_dicom):
    padded = pixels.copy()
    padded[:, -10:] = 4000
    path = write_dicom(tmp_path / "a.dcm", padded, WindowCenter=2000, WindowWidth=2400, PixelPaddingValue=4000)
    image = read_dicom(path)
    assert np.all(image[:, -10:] == 0) and image[48, 20] == 1.0


def test_corrupt_and_colour_files_raise_clear_errors(tmp_path, pixels, write_dicom):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DicomError, match="broken.dcm"):
        read_image(broken)
    truncated = tmp_path / "truncated.dcm"
    data = write_dicom(tmp_path / "whole.dcm", pixels).read_bytes()
    truncated.write_bytes(data[: len(data) - 4000])
    with pytest.raises(DicomError, match="truncated.dcm"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_image(tmp_path / "missing.dcm")


def test_dicom_is_recognised_by_content(tmp_path, pixels, write_dicom):
    path = write_dicom(tmp_path / "no_suffix", pixels, WindowCenter=2000, WindowWidth=2400)
    assert is_dicom(path)
    np.testing.assert_array_equal(read_image(path), read_dicom(path))


@pytest.mark.parametrize("suffix,dtype", [(".png", np.uint8), (".png", np.uint16), (".jpg", np.uint8)])
def test_png_and_jpeg_are_scaled_by_their_type(tmp_path, suffix, dtype):
    top = np.iinfo(dtype).max
    pixels = np.tile(np.linspace(0, top, 64).astype(dtype), (32, 1))
    path = tmp_path / f"image{suffix}"
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (32, 64)
    tolerance = 0.02 if suffix == ".jpg" else 1e-6  # JPEG is lossy
    np.testing.assert_allclose(image, pixels / top, atol=tolerance)


def test_colour_jpeg_becomes_gray(tmp_path):
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, 15:] = 200
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    assert image.shape == (20, 30) and np.isclose(image[0, 20], 200 / 255)
