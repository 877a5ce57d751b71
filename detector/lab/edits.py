"""Shared ground of every attack family: pixel-only I/O, the edit records, the lab's state.

An attack reads a slice in modality units, computes new values, and hands them to
:func:`write_pixels` with the boolean region it claims; pixels outside that region keep their
exact stored value and every header element is left as it was, so "changes only inside its
recorded region" holds by construction. :class:`LabState` knows the studies, the genuine
lesions and which slices are already tampered (a slice is tampered at most once). Where and
how to edit is each family's own business: no synthesis helper lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from detector.lab.lesions import LESIONS_CSV, Lesion, read_lesions_csv
from detector.slices import series_files


class TamperError(ValueError):
    """User-facing problem with the tamper input (message says what to fix)."""


@dataclass
class Region:
    """One tampered disc on one slice: the manifest row plus what a test needs to check it."""

    path: str  # relative to the output folder
    x: int
    y: int
    radius_px: float
    slice_index: int


@dataclass
class TamperRecord:
    """One attack instance (it may span several slices)."""

    attack: str
    study: str
    modality: str
    type: str  # FM (fake with a lesion) / FB (fake without)
    regions: list[Region] = field(default_factory=list)
    source: dict | None = None  # copy-move: where the pixels came from
    epsilon: float | None = None  # adversarial-noise: the L-inf bound in modality units
    radius_mm: float | None = None
    family: str = "A"  # which independently written attack family made it
    detail: dict | None = None  # family-specific facts (shape model, blend, target model...)


@dataclass
class StudySeries:
    """One study's series as found on disk, slices sorted along the slice normal."""

    name: str
    paths: list[Path]
    z: list[float]
    spacing: float  # pixel spacing, mm
    modality: str
    thickness: float = 0.0  # SliceThickness, mm (0 when the header has none)


@dataclass
class SliceData:
    """One slice read for editing: its dataset, stored pixels and modality-unit values."""

    ds: pydicom.Dataset
    stored: np.ndarray
    values: np.ndarray  # modality units


def read_slice_data(path: Path) -> SliceData:
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise TamperError(
            f"{path}: compressed transfer syntax {ds.file_meta.TransferSyntaxUID.name}; "
            "decompress first (e.g. dcmdjpeg / gdcmconv --raw) so only pixels change"
        )
    stored = ds.pixel_array
    return SliceData(ds, stored, np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))


def stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    """The values BitsStored / PixelRepresentation allow."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def to_stored(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality units back to stored values (inverse rescale, rounded, clipped to range)."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    lo, hi = stored_range(ds)
    return np.clip(np.rint((values - intercept) / slope), lo, hi)


def disc(shape: tuple[int, int], x: float, y: float, radius: float) -> np.ndarray:
    """Boolean disc (x = column, y = row)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (cols - x) ** 2 + (rows - y) ** 2 <= radius**2


def write_pixels(
    sl: SliceData, new_stored: np.ndarray, mask: np.ndarray, out_path: Path
) -> np.ndarray:
    """Replace PixelData only; pixels outside ``mask`` keep their exact stored value."""
    final = np.where(mask, new_stored, sl.stored).astype(sl.stored.dtype)
    sl.ds.PixelData = final.tobytes()
    sl.ds.save_as(out_path)
    return final


def candidate_mask(values: np.ndarray, modality: str, margin_px: float) -> np.ndarray:
    """Where an attacker would plant or hide a lesion: lung (CT) or breast tissue (MR)."""
    if modality == "CT":
        smooth = ndimage.gaussian_filter(values, 2.0)
        body = ndimage.binary_fill_holes(values > -400)
        mask = body & (smooth < -500)
    else:
        smooth = ndimage.gaussian_filter(values, 2.0)
        fg = ndimage.binary_fill_holes(smooth > 0.2 * np.percentile(values, 99))
        rows = np.where(fg.any(axis=1))[0]
        mask = np.zeros_like(fg)
        if rows.size:
            r0, r1 = rows[0], rows[-1]
            mask[r0 : int(r0 + 0.42 * (r1 - r0)), :] = True
        mask &= fg
    if margin_px > 0:
        mask = ndimage.binary_erosion(mask, iterations=max(1, int(math.ceil(margin_px))))
    return mask


def pick_location(
    rng: np.random.Generator, mask: np.ndarray, avoid: list[tuple[float, float, float]]
) -> tuple[int, int] | None:
    """A random pixel of ``mask`` outside every ``avoid`` disc (50 tries), or None."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    for _ in range(50):
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]), int(ys[i])
        if all((x - ax) ** 2 + (y - ay) ** 2 > ar**2 for ax, ay, ar in avoid):
            return x, y
    return None


Example = tuple[np.ndarray, np.ndarray, TamperRecord]  # before, after (modality units), record


class LabState:
    """What every family reads and updates during one tamper run."""

    def __init__(self, in_dir: Path, out_dir: Path, seed: int, eps_hu: float, eps_mr: float):
        self.in_dir, self.out_dir = in_dir, out_dir
        self.rng = np.random.default_rng(seed)
        self.eps_hu, self.eps_mr = eps_hu, eps_mr
        self.target_models: dict[str, list[Path]] = {}  # modality -> white-box targets
        self.cache: dict[tuple[str, str], Any] = {}  # loaded models, series ranges
        self.studies = self.find_studies()
        lesion_file = in_dir / LESIONS_CSV
        self.lesions: list[Lesion] = read_lesions_csv(lesion_file) if lesion_file.exists() else []
        # Slices no attack may edit: those already tampered plus the reserved ones.
        self.touched: set[tuple[str, int]] = set()
        self.reserved: set[tuple[str, int]] = set()  # kept genuine: lesion controls, copy sources
        self.kept: set[int] = set()  # indices of lesions reserved as genuine controls
        self.removed: set[int] = set()
        self.records: list[TamperRecord] = []
        # One example per (attack, modality, family) for the montages.
        self.examples: dict[tuple[str, str, str], Example] = {}

    def find_studies(self) -> list[StudySeries]:
        studies = []
        folders = sorted({p.parent for p in self.in_dir.rglob("*.dcm")})
        if not folders:
            folders = sorted(p for p in self.in_dir.iterdir() if p.is_dir())
        for folder in folders:
            paths = series_files(folder)
            if not paths:
                continue
            headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
            normal = np.cross(
                np.asarray(headers[0].ImageOrientationPatient[:3], float),
                np.asarray(headers[0].ImageOrientationPatient[3:], float),
            )
            z = [float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers]
            modality = "MR" if str(headers[0].Modality).upper() == "MR" else "CT"
            studies.append(
                StudySeries(
                    folder.relative_to(self.in_dir).as_posix(),
                    paths,
                    z,
                    float(headers[0].PixelSpacing[0]),
                    modality,
                    float(headers[0].get("SliceThickness", 0) or 0),
                )
            )
        if not studies:
            raise TamperError(f"{self.in_dir}: no DICOM series found (one folder per study)")
        return studies

    def rel(self, path: Path) -> str:
        """Path relative to the input (and output) folder, as manifests write it."""
        return path.relative_to(self.in_dir).as_posix()

    def out(self, path: Path) -> Path:
        return self.out_dir / path.relative_to(self.in_dir)

    def known_lesions(self, st: StudySeries) -> list[tuple[int, Lesion]]:
        """Genuine lesions still in the study (not removed), reserved ones included."""
        return [
            (i, les)
            for i, les in enumerate(self.lesions)
            if les.study == st.name and i not in self.removed
        ]

    def study_lesions(self, st: StudySeries) -> list[tuple[int, Lesion]]:
        """Genuine lesions an attack may use (remove, copy, perturb): not reserved ones."""
        return [(i, les) for i, les in self.known_lesions(st) if i not in self.kept]

    def keep_genuine(self, st: StudySeries, slices: list[int]) -> None:
        """Copy-move sources: later attacks leave them alone, controls may still use them."""
        for k in slices:
            if (st.name, k) not in self.touched:
                self.touched.add((st.name, k))
                self.reserved.add((st.name, k))

    def edited(self, st: StudySeries, k: int) -> bool:
        """Whether slice ``k`` was tampered (reserved slices are untouched genuine ones)."""
        return (st.name, k) in self.touched and (st.name, k) not in self.reserved

    def avoid(self, st: StudySeries, k: int) -> list[tuple[float, float, float]]:
        """(x, y, radius) discs around the genuine lesions near slice ``k``, kept clear."""
        out = []
        for _, les in self.known_lesions(st):
            r = les.radius_on_slice_mm(st.z[k]) / st.spacing
            if r > 0 or abs(les.slice_index - k) <= 2:
                out.append((les.x, les.y, les.radius_mm / st.spacing * 2.5 + 6))
        return out

    def free_slices(self, st: StudySeries) -> list[int]:
        return [k for k in range(len(st.paths)) if (st.name, k) not in self.touched]

    def example(
        self,
        attack: str,
        before: np.ndarray,
        after: np.ndarray,
        rec: TamperRecord,
        ds: pydicom.Dataset,
    ) -> None:
        key = (attack, rec.modality, rec.family)
        if key not in self.examples:
            b = np.asarray(apply_modality_lut(before, ds), np.float32)
            a = np.asarray(apply_modality_lut(after, ds), np.float32)
            self.examples[key] = (b, a, rec)

    def of_modality(self, modality: str | None) -> list[StudySeries]:
        """The studies of one modality (all studies for None)."""
        return [s for s in self.studies if modality is None or s.modality == modality]
