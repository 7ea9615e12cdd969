"""The one DICOM writer: a valid file pydicom reads back with the pixels given, any attributes by
keyword, MONOCHROME1 and lossless compression, and unknown keywords refused."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless, SecondaryCaptureImageStorage

from vismae.synthetic.dicom_writer import write_dicom

PIXELS = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 37) % 4096  # JPEG 2000 needs 32+ px


def test_pixels_and_attributes_read_back(tmp_path):
    path = write_dicom(tmp_path / "sub" / "a.dcm", PIXELS, bits_stored=12, WindowCenter=2000, WindowWidth=[2400, 1000],
                       ViewPosition="CC", PatientName="Doe^Jane")  # fmt: skip
    dataset = pydicom.dcmread(path)
    np.testing.assert_array_equal(dataset.pixel_array, PIXELS)
    assert (dataset.BitsStored, dataset.BitsAllocated, dataset.PhotometricInterpretation) == (12, 16, "MONOCHROME2")
    assert dataset.WindowCenter == 2000 and list(dataset.WindowWidth) == [2400, 1000] and dataset.ViewPosition == "CC"
    assert dataset.SOPInstanceUID == dataset.file_meta.MediaStorageSOPInstanceUID
    assert dataset.SOPClassUID.name.startswith("Digital Mammography")
    other = pydicom.dcmread(write_dicom(tmp_path / "b.dcm", PIXELS.astype(np.uint8), sop_class=SecondaryCaptureImageStorage))
    assert other.SOPInstanceUID != dataset.SOPInstanceUID and other.BitsStored == 8
    assert other.SOPClassUID == SecondaryCaptureImageStorage


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_files_decode_to_the_same_pixels(tmp_path, syntax):
    path = write_dicom(tmp_path / "c.dcm", 4095 - PIXELS, bits_stored=12, photometric="MONOCHROME1", transfer_syntax=syntax)
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == syntax and dataset.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(dataset.pixel_array, 4095 - PIXELS)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not DICOM keywords: ViewPositon"):
        write_dicom(tmp_path / "a.dcm", PIXELS, ViewPositon="CC")
    with pytest.raises(ValueError, match="exceed BitsStored=8"):
        write_dicom(tmp_path / "a.dcm", PIXELS, bits_stored=8)
    assert not (tmp_path / "a.dcm").exists()
