"""Reading slices into :class:`detector.interface.SliceImage`, one file at a time.

Detectors see pixels in modality units (HU for CT, scanner units for MR), so every reader here
applies the modality LUT and nothing else. Studies can be hundreds of slices: series are sorted
from headers only (``stop_before_pixels``) and pixels are read lazily, slice by slice.

Three inputs are understood, by file suffix:

- DICOM (any other suffix): CT via RescaleSlope/Intercept to HU, MR in stored units;
- ``.npy``: the BTD test-set layout for CT, a 2-D array already in HU;
- ``.png``: the BTD test-set layout for MRI, 8- or 16-bit grey levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from detector.interface import SliceImage

#: Percentiles of the robust MR intensity range (per volume), as BTD-style [0, 1] scaling needs.
MR_RANGE_PERCENTILES = (0.5, 99.5)


class SliceReadError(ValueError):
    """A file that cannot be read as a slice (the message says which and why)."""


def _modality_of(ds: pydicom.Dataset) -> str:
    modality = str(ds.get("Modality", "")).upper()
    return "MR" if modality == "MR" else "CT" if modality == "CT" else modality or "CT"


def _spacing_of(ds: pydicom.Dataset) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None or len(spacing) != 2:
        return (1.0, 1.0)
    return (float(spacing[0]), float(spacing[1]))


def dataset_to_slice(
    ds: pydicom.Dataset,
    source: str = "",
    intensity_range: tuple[float, float] | None = None,
) -> SliceImage:
    """Convert one single-frame DICOM image to a SliceImage (HU for CT, raw units for MR)."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/undecodable pixels
        raise SliceReadError(f"{source or 'dataset'}: cannot decode pixel data ({exc})") from exc
    if stored.ndim != 2:
        raise SliceReadError(
            f"{source or 'dataset'}: expected a single-frame greyscale image, "
            f"got pixel array of shape {stored.shape}"
        )
    pixels = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    return SliceImage(
        pixels=pixels,
        modality=_modality_of(ds),
        pixel_spacing_mm=_spacing_of(ds),
        intensity_range=intensity_range,
        source=source or str(ds.get("SOPInstanceUID", "")),
    )


def read_npy_slice(path: Path, pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)) -> SliceImage:
    """A BTD-layout CT slice: a 2-D ``.npy`` array in Hounsfield units."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SliceReadError(f"{path}: not a readable .npy array ({exc})") from exc
    if arr.ndim != 2:
        raise SliceReadError(f"{path}: expected a 2-D array, got shape {arr.shape}")
    return SliceImage(
        pixels=arr.astype(np.float32),
        modality="CT",
        pixel_spacing_mm=pixel_spacing_mm,
        source=str(path),
    )


def read_png_slice(path: Path, pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)) -> SliceImage:
    """A BTD-layout MRI slice: a greyscale PNG; its bit depth gives the intensity range."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(img, dtype=np.float32)
                full = (0.0, 65535.0)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32)
                full = (0.0, 255.0)
    except OSError as exc:
        raise SliceReadError(f"{path}: not a readable PNG ({exc})") from exc
    return SliceImage(
        pixels=arr,
        modality="MR",
        pixel_spacing_mm=pixel_spacing_mm,
        intensity_range=full,
        source=str(path),
    )


def read_slice(
    path: str | Path,
    intensity_range: tuple[float, float] | None = None,
) -> SliceImage:
    """Read one slice from DICOM, BTD ``.npy`` (CT, HU) or BTD ``.png`` (MR).

    ``intensity_range`` (MR) is the series-wide range from :func:`volume_intensity_range`; pass it
    so every slice of a series is scaled alike. PNG slices get their bit-depth range by default.
    """
    path = Path(path)
    if not path.is_file():
        raise SliceReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_npy_slice(path)
    if suffix == ".png":
        image = read_png_slice(path)
        if intensity_range is not None:
            image = SliceImage(
                pixels=image.pixels,
                modality="MR",
                pixel_spacing_mm=image.pixel_spacing_mm,
                intensity_range=intensity_range,
                source=image.source,
            )
        return image
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, OSError, struct errors on truncated files
        raise SliceReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    return dataset_to_slice(ds, source=str(path), intensity_range=intensity_range)


def _slice_position(ds: pydicom.Dataset) -> float:
    """Position along the slice normal (IOP row x column), falling back to InstanceNumber."""
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return float(np.dot(normal, np.asarray(ipp, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


def series_files(folder: str | Path) -> list[Path]:
    """DICOM image files of one series folder, sorted by position along the slice normal.

    Reads headers only. Files that are not DICOM images (notes, CSVs, DICOMDIR) are skipped; a
    folder holding more than one series raises, since slice order would be meaningless.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SliceReadError(f"{folder}: no such folder")
    entries: list[tuple[float, int, Path]] = []
    series_uids: set[str] = set()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix.lower() in (".csv", ".json", ".txt", ".md", ".npy", ".png"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: skip, as PACS export folders hold other files too
            continue
        if "ImagePositionPatient" not in ds and "InstanceNumber" not in ds:
            continue
        series_uids.add(str(ds.get("SeriesInstanceUID", "")))
        entries.append((_slice_position(ds), int(ds.get("InstanceNumber", 0) or 0), path))
    if len(series_uids) > 1:
        raise SliceReadError(f"{folder}: holds {len(series_uids)} series; expected one")
    entries.sort(key=lambda e: (e[0], e[1]))
    return [p for _, _, p in entries]


def volume_intensity_range(
    paths: Iterable[str | Path],
    percentiles: tuple[float, float] = MR_RANGE_PERCENTILES,
    max_samples_per_slice: int = 16384,
) -> tuple[float, float]:
    """Robust (low, high) intensity of a whole series, reading one slice at a time.

    A regular subsample of each slice keeps memory bounded for big volumes; the percentiles of
    a 16k-pixel sample per slice differ from the full-volume ones by far less than MR noise.
    """
    samples: list[np.ndarray] = []
    for path in paths:
        pixels = read_slice(path).pixels.ravel()
        step = max(1, pixels.size // max_samples_per_slice)
        samples.append(pixels[::step])
    if not samples:
        raise SliceReadError("no slices to compute an intensity range from")
    values = np.concatenate(samples)
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return (float(low), float(high))


def iter_series(
    folder: str | Path, intensity_range: tuple[float, float] | None = None
) -> Iterator[SliceImage]:
    """Yield the slices of a series folder in spatial order, one file read at a time.

    MR series get their volume range computed first (one extra pass) unless it is given.
    """
    paths = series_files(folder)
    if not paths:
        return
    if intensity_range is None:
        first = read_slice(paths[0])
        if first.modality == "MR":
            intensity_range = volume_intensity_range(paths)
    for path in paths:
        yield read_slice(path, intensity_range=intensity_range)


def read_series(
    folder: str | Path, intensity_range: tuple[float, float] | None = None
) -> list[SliceImage]:
    """All slices of a series folder in spatial order (see :func:`iter_series`)."""
    return list(iter_series(folder, intensity_range=intensity_range))


def read_slices(
    paths: Sequence[str | Path], intensity_range: tuple[float, float] | None = None
) -> list[SliceImage]:
    """Read the given files in the given order (helper for callers holding a file list)."""
    return [read_slice(p, intensity_range=intensity_range) for p in paths]
