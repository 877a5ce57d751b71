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
        for kw in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "FrameOfReferenceUID",
            "PatientID",
            "Rows",
            "Columns",
            "SliceThickness",
            "Modality",
        ):
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
    hu = [np.frombuffer(d.PixelData, np.uint16).reshape(128, 128) - 1024.0 for d in study.datasets]
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


# ----------------------------------------------------------------------------- scanner model


def _radial_power(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum (bins of 0.025 cycles/pixel up to Nyquist)."""
    from detector.lab.scanner import radial_frequency

    power = np.abs(np.fft.fft2(noise - noise.mean())) ** 2
    f = radial_frequency(noise.shape)
    edges = np.arange(0.0, 0.5001, 0.025)
    idx = np.digitize(f.ravel(), edges) - 1
    ok = idx < len(edges) - 1
    sums = np.bincount(idx[ok], power.ravel()[ok], minlength=len(edges) - 1)
    counts = np.bincount(idx[ok], minlength=len(edges) - 1)
    return (edges[:-1] + edges[1:]) / 2, sums / np.maximum(counts, 1)


def _protocol(kernel: str, mas: float = 200.0, thickness: float = 1.25):  # noqa: ANN202
    from detector.lab.scanner import Protocol

    return Protocol(
        "CT", thickness, thickness, 0.0, 60.0, 0.0, kernel=kernel, mas=mas, attenuation_per_mm=0.008
    )


def test_ct_noise_follows_the_kernel_noise_power_spectrum() -> None:
    """Measured NPS of the noise model: ramp-times-apodisation shape; sharp >> soft at high f."""
    from detector.lab.scanner import KERNELS, ct_noise, noise_power_spectrum

    water = np.full((256, 256), 0.0)  # uniform water: the thickness map is flat enough
    spectra = {}
    for kernel in ("SOFT", "STANDARD", "LUNG"):
        n = np.mean(
            [
                _radial_power(ct_noise(np.random.default_rng(s), water, _protocol(kernel), 0.7))[1]
                for s in range(6)
            ],
            axis=0,
        )
        f, _ = _radial_power(water)
        spectra[kernel] = n
        model = noise_power_spectrum(KERNELS[kernel], f)
        assert np.corrcoef(n, model)[0, 1] > 0.95, kernel  # the intended shape
        assert n[0] < 0.35 * n.max(), kernel  # the ramp: little power at the lowest frequencies
    f, _ = _radial_power(water)
    high = f > 0.3
    ratio = spectra["LUNG"][high].sum() / spectra["SOFT"][high].sum()
    assert ratio > 20, ratio  # measured ~470: the soft window is nearly zero above 0.3
    peak = {k: f[int(np.argmax(v))] for k, v in spectra.items()}
    assert peak["SOFT"] < peak["STANDARD"] < peak["LUNG"], peak


def test_ct_noise_level_follows_dose_thickness_and_body_size() -> None:
    from detector.lab.scanner import ct_noise

    water = np.full((128, 128), 0.0)
    std = {
        mas: ct_noise(np.random.default_rng(1), water, _protocol("STANDARD", mas), 0.7).std()
        for mas in (50.0, 200.0)
    }
    assert std[50.0] / std[200.0] == pytest.approx(2.0, rel=0.1)  # sigma ~ 1/sqrt(mAs)
    thin = ct_noise(np.random.default_rng(1), water, _protocol("STANDARD", thickness=1.0), 0.7)
    thick = ct_noise(np.random.default_rng(1), water, _protocol("STANDARD", thickness=3.0), 0.7)
    assert thin.std() / thick.std() == pytest.approx(np.sqrt(3.0), rel=0.1)
    yy, xx = np.mgrid[:256, :256]
    body = np.where(((xx - 128) / 120) ** 2 + ((yy - 128) / 80) ** 2 < 1, 40.0, -1000.0)
    n = ct_noise(np.random.default_rng(2), body, _protocol("STANDARD"), 1.4)
    centre = n[108:148, 108:148].std()
    edge = n[120:136, 15:35].std()
    assert centre > 1.15 * edge, (centre, edge)  # longer ray paths, fewer photons, more noise


def test_phantom_slices_carry_the_series_kernel(tmp_path: Path) -> None:
    """Same patient, two kernels: the written slices differ at high frequency as the NPS says,
    the header names the kernel, and each slice's noise is its own."""
    from detector.lab.writer import generate_study

    soft = generate_study("CT", 2, seed=31, size=128, protocol=_protocol("SOFT"))
    sharp = generate_study("CT", 2, seed=31, size=128, protocol=_protocol("LUNG"))
    assert soft.datasets[0].ConvolutionKernel == "SOFT"
    assert sharp.datasets[0].ConvolutionKernel == "LUNG"
    assert float(sharp.datasets[0].CTDIvol) == pytest.approx(15.0)
    assert float(sharp.datasets[0].SpacingBetweenSlices) == 1.25

    def hu(ds: pydicom.Dataset) -> np.ndarray:
        return np.frombuffer(ds.PixelData, np.uint16).reshape(128, 128) - 1024.0

    f, p_soft = _radial_power(hu(soft.datasets[0]))
    _, p_sharp = _radial_power(hu(sharp.datasets[0]))
    high = f > 0.3
    assert p_sharp[high].sum() / p_soft[high].sum() > 20
    # Independent per slice: in the air around the patient (noise only) neighbours do not
    # correlate, although the anatomy planes they average are shared.
    from scipy import ndimage

    a, b = (hu(d) for d in sharp.datasets)
    air = (ndimage.uniform_filter(a, 9) < -950) & (ndimage.uniform_filter(b, 9) < -950)
    assert air.sum() > 500 and a[air].std() > 10
    assert abs(np.corrcoef(a[air], b[air])[0, 1]) < 0.1


def test_protocols_vary_between_series() -> None:
    studies = [generate_study("CT", 1, seed=s, size=64) for s in range(10)]
    kernels = {str(s.datasets[0].ConvolutionKernel) for s in studies}
    geometry = {
        (float(s.datasets[0].SliceThickness), float(s.datasets[0].SpacingBetweenSlices))
        for s in studies
    }
    mas = {int(s.datasets[0].Exposure) for s in studies}
    assert kernels == {"SOFT", "STANDARD", "LUNG"}
    assert len(geometry) >= 3 and len(mas) >= 8
    assert all(t >= sp for t, sp in geometry)
    snr = {round(generate_study("MR", 1, seed=s, size=64).protocol.snr, 1) for s in range(8)}
    assert len(snr) >= 6 and min(snr) >= 10 and max(snr) <= 45
