"""Preprocessing: CT window, MR scaling, centred zero-padded patches, DICOM (compressed) -> HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from detector.interface import Location, SliceImage
from detector.preprocess import (
    Preprocessing,
    body_mask,
    ct_to_unit,
    extract_patch,
    mr_to_unit,
    normalise_modality,
    patches_for,
    to_unit,
)
from detector.slices import read_slice


def test_ct_window_is_the_btd_authors_scaling() -> None:
    hu = np.array([-1000.0, -700.0, 650.0, 2000.0, 3000.0])
    unit = ct_to_unit(hu)
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert unit.dtype == np.float32
    # exactly (hu + 700) / 2700 inside the window, as the BTD notebook computes it
    np.testing.assert_allclose(ct_to_unit(np.array([-100.0])), [600.0 / 2700.0], rtol=1e-6)


def test_mr_uses_the_volume_range_and_clips() -> None:
    unit = mr_to_unit(np.array([0.0, 100.0, 150.0, 300.0]), (100.0, 200.0))
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="high > low"):
        mr_to_unit(np.zeros(3), (5.0, 5.0))


def test_mr_slice_without_range_falls_back_to_its_own_percentiles() -> None:
    pixels = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    prep = Preprocessing("MR", 16)
    unit = to_unit(SliceImage(pixels, "MR"), prep)
    assert unit.min() == 0.0 and unit.max() == 1.0
    assert abs(float(np.median(unit)) - 0.5) < 0.01
    given = to_unit(SliceImage(pixels, "MR", intensity_range=(0.0, 2000.0)), prep)
    assert given.max() == pytest.approx(0.5, abs=1e-3)


def test_patch_is_centred_on_column_x_row_y() -> None:
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)  # 20 rows, 30 columns
    patch = extract_patch(img, x=17, y=5, size=6)
    assert patch[3, 3] == img[5, 17]  # centre pixel is (row y, column x)
    np.testing.assert_array_equal(patch[3], np.pad(img[5, 14:20], (0, 0)))


def test_patch_is_zero_padded_around_the_point_at_borders() -> None:
    img = np.ones((10, 10), dtype=np.float32)
    patch = extract_patch(img, x=0, y=9, size=8)
    assert patch[4, 4] == 1.0  # the point itself stays at the centre
    assert patch[:, :4].sum() == 0  # columns left of the image
    assert patch[5:, :].sum() == 0  # rows below the image
    assert patch[:5, 4:].sum() == 5 * 4
    assert extract_patch(img, x=100, y=100, size=4).sum() == 0


def test_patches_for_checks_modality_and_reuses_slices() -> None:
    ct = SliceImage(np.full((40, 40), 650.0, np.float32), "CT", source="a.dcm")
    prep = Preprocessing("CT", 8)
    out = patches_for([Location(ct, 10, 10), Location(ct, 39, 0)], prep)
    assert out.shape == (2, 8, 8)
    assert out[0].min() == pytest.approx(0.5)
    mr = SliceImage(np.ones((40, 40), np.float32), "MR", source="b.dcm")
    with pytest.raises(ValueError, match="trained on CT, but the slice is MR"):
        patches_for([Location(mr, 1, 1)], prep)


def test_modality_spellings() -> None:
    assert normalise_modality("mri") == "MR"
    assert normalise_modality(" ct ") == "CT"
    with pytest.raises(ValueError, match="CT or MR"):
        normalise_modality("US")


def test_body_mask_counts_the_lungs_inside_the_body() -> None:
    hu = np.full((64, 64), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    hu[(yy - 32) ** 2 + (xx - 32) ** 2 < 26**2] = 40.0  # body
    hu[(yy - 32) ** 2 + (xx - 22) ** 2 < 8**2] = -850.0  # a lung, enclosed
    hu[0:3, 0:3] = 100.0  # a speck of table outside the body
    mask = body_mask(ct_to_unit(hu), "CT")
    assert mask[32, 22] and mask[32, 32]
    assert not mask[1, 1] and not mask[60, 2]


def _ct_dataset(stored: np.ndarray, slope: float, intercept: float) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


@pytest.mark.parametrize("compressed", [False, True])
def test_dicom_modality_lut_to_hu_then_window(tmp_path: Path, compressed: bool) -> None:
    stored = np.array([[0, 162, 512], [1337, 2024, 4095]], dtype=np.uint16)
    ds = _ct_dataset(np.tile(stored, (4, 4)), slope=2.0, intercept=-1024.0)
    if compressed:  # RLE Lossless: decoded by pydicom's pixel-data plugin on read
        ds.compress(RLELossless)
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    if compressed:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    image = read_slice(path)
    hu = image.pixels[:2, :3]
    np.testing.assert_allclose(hu, stored * 2.0 - 1024.0)
    unit = to_unit(image, Preprocessing("CT", 4))
    np.testing.assert_allclose(unit[:2, :3], ct_to_unit(stored * 2.0 - 1024.0), atol=1e-6)


def test_jpeg2000_ct_from_pydicom_test_files_decodes_to_plausible_hu() -> None:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    path = folder / "693_J2KI.dcm"  # read directly: get_testdata_file may try to download
    if not path.is_file():
        pytest.skip("pydicom's bundled JPEG 2000 CT test file is not installed")
    image = read_slice(path)
    assert image.modality == "CT" and image.pixels.shape == (512, 512)
    centre = image.pixels[192:320, 192:320]  # outside the scan circle is padding (-3040)
    assert -1100 < float(np.median(centre)) < 1500
    assert 0 < float(image.pixels.max()) < 4100
    unit = to_unit(image, Preprocessing("CT", 96))
    assert unit.min() >= 0.0 and unit.max() <= 1.0
