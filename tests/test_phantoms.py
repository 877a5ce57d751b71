"""Phantom studies: valid DICOM, deterministic by seed, consistent geometry, real-looking HU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from detector.lab.phantoms import generate_study, read_lesions_csv, write_phantoms
from detector.slices import (
    read_series,
    read_slice,
    series_files,
    volume_intensity_range,
)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dciodvfy_reports_no_errors(tmp_path: Path, modality: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    folders = write_phantoms(modality, 1, 3, tmp_path, seed=5, size=128)
    files = sorted(folders[0].glob("*.dcm"))
    assert len(files) == 3
    for f in files:
        proc = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        errors = [line for line in out.splitlines() if line.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"
        assert ("CTImage" if modality == "CT" else "MRImage") in out


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_seed_same_pixels_and_uids(modality: str) -> None:
    a = generate_study(modality, 3, seed=7, size=96)
    b = generate_study(modality, 3, seed=7, size=96)
    c = generate_study(modality, 3, seed=8, size=96)
    for da, db in zip(a.datasets, b.datasets, strict=True):
        assert da.PixelData == db.PixelData
        assert da.SOPInstanceUID == db.SOPInstanceUID
        assert da.StudyInstanceUID == db.StudyInstanceUID
    assert a.lesions == b.lesions
    assert a.datasets[1].PixelData != c.datasets[1].PixelData
    assert a.datasets[0].StudyInstanceUID != c.datasets[0].StudyInstanceUID


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_geometry_consistent_across_series(tmp_path: Path, modality: str) -> None:
    folder = write_phantoms(modality, 1, 5, tmp_path, seed=3, size=96)[0]
    files = series_files(folder)
    dss = [pydicom.dcmread(f) for f in files]
    ref = dss[0]
    for ds in dss:
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID",
                   "Rows", "Columns", "SliceThickness", "Modality"):
            assert ds[kw].value == ref[kw].value, kw
        assert list(ds.ImageOrientationPatient) == list(ref.ImageOrientationPatient)
        assert list(ds.PixelSpacing) == list(ref.PixelSpacing)
        assert ds.ImagePositionPatient[:2] == ref.ImagePositionPatient[:2]
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in dss])
    steps = np.diff(z)
    assert np.all(steps > 0) and np.allclose(steps, steps[0], atol=1e-3)
    assert [int(ds.InstanceNumber) for ds in dss] == [1, 2, 3, 4, 5]
    fov = float(ref.PixelSpacing[0]) * int(ref.Columns)
    assert 250 < fov < 400  # a plausible chest / breast field of view in mm


def test_ct_looks_like_a_chest(tmp_path: Path) -> None:
    study = generate_study("CT", 2, seed=21, size=256)
    ds = study.datasets[0]
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
    assert ds.BitsStored == 12 and ds.PixelRepresentation == 0
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    hu = read_slice(path).pixels
    assert hu.dtype == np.float32 and hu.min() >= -1024 and hu.max() <= 3071
    corner = hu[:20, :20]
    assert abs(float(np.median(corner)) + 1000) < 40  # air outside the patient
    assert (hu > 500).sum() > 100  # bone: spine and ribs
    assert (hu > -200).sum() > 0.2 * hu.size  # soft tissue
    lung = hu[(hu < -600) & (hu > -960)]
    assert lung.size > 0.05 * hu.size
    assert -900 < float(np.median(lung)) < -780  # parenchyma near -850 HU
    assert study.lesions, "every CT phantom carries nodules"
    for les in study.lesions:
        assert 2.0 <= les.radius_mm <= 15.0
        assert les.kind in ("solid-nodule", "part-solid-nodule")


def test_vessels_continue_between_slices() -> None:
    """Adjacent slices share anatomy: their lung masks and vessels overlap strongly."""
    study = generate_study("CT", 3, seed=4, size=128)
    hu = [np.frombuffer(d.PixelData, np.uint16).reshape(128, 128) - 1024.0
          for d in study.datasets]
    dense = [(h > -500) for h in hu]
    overlap = (dense[0] & dense[1]).sum() / max(dense[0].sum(), 1)
    assert overlap > 0.85


def test_lesions_csv_round_trip_and_lesion_visible(tmp_path: Path) -> None:
    write_phantoms("CT", 2, 4, tmp_path, seed=9, size=128)
    lesions = read_lesions_csv(tmp_path / "lesions.csv")
    assert lesions
    for les in lesions:
        path = tmp_path / les.study / les.file
        assert path.is_file()
        hu = read_slice(path).pixels
        centre = hu[les.y - 1 : les.y + 2, les.x - 1 : les.x + 2]
        background = -700 if les.kind == "solid-nodule" else -850
        if les.radius_mm >= 3:
            assert float(centre.mean()) > background, les


def test_mr_series_reader_and_range(tmp_path: Path) -> None:
    folder = write_phantoms("MR", 1, 4, tmp_path, seed=2, size=96)[0]
    files = series_files(folder)
    low, high = volume_intensity_range(files)
    assert 0 <= low < high
    series = read_series(folder)
    assert len(series) == 4
    assert all(s.modality == "MR" and s.intensity_range == (low, high) for s in series)
    assert series[0].pixel_spacing_mm[0] > 0


def test_btd_layout_readers(tmp_path: Path) -> None:
    arr = np.full((32, 40), -850.0, dtype=np.float32)
    np.save(tmp_path / "ct.npy", arr)
    ct = read_slice(tmp_path / "ct.npy")
    assert ct.modality == "CT" and ct.pixels.shape == (32, 40) and ct.pixels[0, 0] == -850
    Image.fromarray(np.arange(32 * 40, dtype=np.uint8).reshape(32, 40)).save(tmp_path / "m.png")
    mr = read_slice(tmp_path / "m.png")
    assert mr.modality == "MR" and mr.intensity_range == (0.0, 255.0)
    with pytest.raises(ValueError, match="no such file"):
        read_slice(tmp_path / "missing.dcm")
