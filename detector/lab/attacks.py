"""Attacker-style tampering of DICOM studies, pixel-only, with exact ground truth.

Every attack edits PixelData and nothing else (CT-GAN keeps every header element, the SOP
Instance UID included), so header checks cannot give the fake away. Edits are made in modality
units (HU for CT), converted back to stored values through RescaleSlope/Intercept and clipped to
the stored range; pixels outside the recorded disc are copied bit for bit, so "changes only
inside its region" holds by construction and is checked by the tests.

Attacks (see docs/tamper-lab.md):

- ``injection``: a lobulated 3-D nodule/mass spanning the slices its radius reaches, with
  intensity, texture and edge matched to the surroundings and noise re-synthesised at the
  locally measured level (the attacker's noise model is a Gaussian-filtered one, not the
  scanner's own spectrum: the trace a detector can find, as with CT-GAN's touch-up).
- ``removal``: an existing lesion (from ``lesions.csv``) erased by normalised-convolution
  inpainting from its surround plus re-synthesised noise, on every slice it reaches.
- ``copy-move``: a disc copied (feathered edge) from one place in the study to another,
  half of the time a real lesion, so a copy can also inject one.
- ``adversarial-noise``: an L-infinity bounded perturbation, ``|delta| <= epsilon`` (10 HU by
  default for CT, 1.5 % of the slice's robust range for MR), of PGD-like sign structure,
  confined to a disc of 12-20 mm radius.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from detector.lab.lesions import LESIONS_CSV, Lesion, read_lesions_csv
from detector.lab.manifest import ATTACKS, GENUINE, ManifestRow, write_btd, write_chaimeleon
from detector.lab.shapes import make_blob
from detector.slices import series_files

BTD_MANIFEST = "manifest_btd.csv"
CHAIMELEON_MANIFEST = "test.csv"
REGIONS_JSON = "regions.json"
DEFAULT_EPSILON_HU = 10.0
DEFAULT_EPSILON_MR = 0.015


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


@dataclass
class _Study:
    name: str
    paths: list[Path]  # sorted along the slice normal
    z: list[float]
    spacing: float
    modality: str


@dataclass
class _Slice:
    ds: pydicom.Dataset
    stored: np.ndarray
    values: np.ndarray  # modality units


@dataclass
class TamperResult:
    rows: list[ManifestRow]
    records: list[TamperRecord]
    # One example per (attack, modality) for montages: (before, after, record), modality units.
    examples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, TamperRecord]] = field(
        default_factory=dict
    )


# ----------------------------------------------------------------------------- pixel I/O


def _read(path: Path) -> _Slice:
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise TamperError(
            f"{path}: compressed transfer syntax {ds.file_meta.TransferSyntaxUID.name}; "
            "decompress first (e.g. dcmdjpeg / gdcmconv --raw) so only pixels change"
        )
    stored = ds.pixel_array
    return _Slice(ds, stored, np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))


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


def _write(sl: _Slice, new_stored: np.ndarray, mask: np.ndarray, out_path: Path) -> np.ndarray:
    """Replace PixelData only; pixels outside ``mask`` keep their exact stored value."""
    final = np.where(mask, new_stored, sl.stored).astype(sl.stored.dtype)
    sl.ds.PixelData = final.tobytes()
    sl.ds.save_as(out_path)
    return final


def _noise_sigma(values: np.ndarray, mask: np.ndarray) -> float:
    """Noise level an attacker measures: robust std of the median-filter residual."""
    resid = values - ndimage.median_filter(values, size=3)
    r = resid[mask]
    if r.size < 10:
        return 1.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))) * 1.15 + 1e-3)


def _attacker_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:  # noqa: ANN001
    n = ndimage.gaussian_filter(rng.normal(size=shape), 0.8)
    return n * (sigma / (n.std() + 1e-9))


# ----------------------------------------------------------------------------- locations


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


def _pick(rng: np.random.Generator, mask: np.ndarray, avoid: list[tuple[float, float, float]]):  # noqa: ANN202
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    for _ in range(50):
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]), int(ys[i])
        if all((x - ax) ** 2 + (y - ay) ** 2 > ar**2 for ax, ay, ar in avoid):
            return x, y
    return None


# ----------------------------------------------------------------------------- the tamper run


class _Lab:
    def __init__(self, in_dir: Path, out_dir: Path, seed: int, eps_hu: float, eps_mr: float):
        self.in_dir, self.out_dir = in_dir, out_dir
        self.rng = np.random.default_rng(seed)
        self.eps_hu, self.eps_mr = eps_hu, eps_mr
        self.studies = self._find_studies()
        lesion_file = in_dir / LESIONS_CSV
        self.lesions: list[Lesion] = read_lesions_csv(lesion_file) if lesion_file.exists() else []
        self.touched: set[tuple[str, int]] = set()
        self.removed: set[int] = set()
        self.records: list[TamperRecord] = []
        self.examples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, TamperRecord]] = {}

    def _find_studies(self) -> list[_Study]:
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
                _Study(
                    folder.relative_to(self.in_dir).as_posix(),
                    paths,
                    z,
                    float(headers[0].PixelSpacing[0]),
                    modality,
                )
            )
        if not studies:
            raise TamperError(f"{self.in_dir}: no DICOM series found (one folder per study)")
        return studies

    def rel(self, path: Path) -> str:
        return path.relative_to(self.in_dir).as_posix()

    def out(self, path: Path) -> Path:
        return self.out_dir / path.relative_to(self.in_dir)

    def _study_lesions(self, st: _Study) -> list[tuple[int, Lesion]]:
        return [
            (i, les)
            for i, les in enumerate(self.lesions)
            if les.study == st.name and i not in self.removed
        ]

    def _avoid(self, st: _Study, k: int) -> list[tuple[float, float, float]]:
        out = []
        for _, les in self._study_lesions(st):
            r = les.radius_on_slice_mm(st.z[k]) / st.spacing
            if r > 0 or abs(les.slice_index - k) <= 2:
                out.append((les.x, les.y, les.radius_mm / st.spacing * 2.5 + 6))
        return out

    def _free_slices(self, st: _Study) -> list[int]:
        return [k for k in range(len(st.paths)) if (st.name, k) not in self.touched]

    def _example(
        self,
        attack: str,
        before: np.ndarray,
        after: np.ndarray,
        rec: TamperRecord,
        ds: pydicom.Dataset,
    ) -> None:
        if (attack, rec.modality) not in self.examples:
            b = np.asarray(apply_modality_lut(before, ds), np.float32)
            a = np.asarray(apply_modality_lut(after, ds), np.float32)
            self.examples[(attack, rec.modality)] = (b, a, rec)

    # --- attacks

    def inject(self) -> TamperRecord | None:
        rng = self.rng
        for _ in range(100):
            st = self.studies[int(rng.integers(len(self.studies)))]
            free = self._free_slices(st)
            if not free:
                continue
            c = int(rng.choice(free))
            radius_mm = float(rng.uniform(3.0, 10.0))
            affected = [
                k for k in range(len(st.paths)) if abs(st.z[k] - st.z[c]) < radius_mm * 0.95
            ]
            if any((st.name, k) in self.touched for k in affected):
                continue
            centre = _read(st.paths[c])
            r_px = radius_mm / st.spacing
            mask = candidate_mask(centre.values, st.modality, r_px * 1.6 + 3)
            loc = _pick(rng, mask, self._avoid(st, c))
            if loc is None:
                continue
            x, y = loc
            kind = "solid-nodule" if st.modality == "CT" else "mass"
            blob = make_blob(rng, (0.0, 0.0, 0.0), radius_mm, kind, 0.0)
            reach_px = r_px * (1 + float(np.sum(blob.amps))) + 2.0
            region_r = reach_px + 2.0
            ring = disc(centre.values.shape, x, y, region_r + 8) & ~disc(
                centre.values.shape, x, y, region_r
            )
            if st.modality == "CT":
                value = float(rng.uniform(10, 50))
            else:
                value = float(np.percentile(centre.values[ring], 95) * rng.uniform(1.6, 2.2))
            rec = TamperRecord("injection", st.name, st.modality, "FM", radius_mm=radius_mm)
            for k in affected:
                sl = centre if k == c else _read(st.paths[k])
                dz = st.z[k] - st.z[c]
                rows, cols = sl.values.shape
                xs = (np.arange(cols) - x) * st.spacing
                ys = (np.arange(rows) - y) * st.spacing
                frac = blob.fraction(xs, ys, dz, st.spacing)
                if frac.max() < 0.05:
                    continue
                ring_k = disc(sl.values.shape, x, y, region_r + 8) & ~disc(
                    sl.values.shape, x, y, region_r
                )
                sigma = _noise_sigma(sl.values, ring_k)
                tex = ndimage.gaussian_filter(rng.normal(size=sl.values.shape), 2.0)
                tex *= (0.06 * abs(value) + 8.0) / (tex.std() + 1e-9)
                lesion = value + tex + _attacker_noise(rng, sl.values.shape, sigma)
                new = sl.values * (1 - frac) + lesion * frac
                region = disc(sl.values.shape, x, y, region_r)
                before = sl.stored.copy()
                after = _write(sl, to_stored(new, sl.ds), region, self.out(st.paths[k]))
                rec.regions.append(Region(self.rel(st.paths[k]), x, y, region_r, k))
                self.touched.add((st.name, k))
                if k == c:
                    self._example("injection", before, after, rec, sl.ds)
            if rec.regions:
                return rec
        return None

    def remove(self) -> TamperRecord | None:
        rng = self.rng
        options = []
        for st in self.studies:
            for i, les in self._study_lesions(st):
                affected = [
                    k
                    for k in range(len(st.paths))
                    if les.radius_on_slice_mm(st.z[k]) > 0.3 * st.spacing
                ]
                if affected and not any((st.name, k) in self.touched for k in affected):
                    options.append((st, i, les, affected))
        if not options:
            return None
        st, i, les, affected = options[int(rng.integers(len(options)))]
        self.removed.add(i)
        rec = TamperRecord("removal", st.name, st.modality, "FB", radius_mm=les.radius_mm)
        for k in affected:
            sl = _read(st.paths[k])
            r_px = les.radius_on_slice_mm(st.z[k]) / st.spacing
            hole_r = r_px * 1.35 + 2.0
            region_r = hole_r + 3.0
            shape = sl.values.shape
            hole = disc(shape, les.x, les.y, hole_r)
            known = (~hole).astype(float)
            sig = max(2.0, hole_r / 2)
            fill = ndimage.gaussian_filter(sl.values * known, sig) / np.maximum(
                ndimage.gaussian_filter(known, sig), 1e-6
            )
            ring = disc(shape, les.x, les.y, region_r + 8) & ~disc(shape, les.x, les.y, region_r)
            sigma = _noise_sigma(sl.values, ring)
            rows, cols = np.ogrid[: shape[0], : shape[1]]
            dist = np.sqrt((cols - les.x) ** 2 + (rows - les.y) ** 2)
            alpha = np.clip((region_r - 0.5 - dist) / 2.5, 0, 1)
            new = sl.values * (1 - alpha) + (fill + _attacker_noise(rng, shape, sigma)) * alpha
            region = disc(shape, les.x, les.y, region_r)
            before = sl.stored.copy()
            after = _write(sl, to_stored(new, sl.ds), region, self.out(st.paths[k]))
            rec.regions.append(Region(self.rel(st.paths[k]), les.x, les.y, region_r, k))
            self.touched.add((st.name, k))
            if k == les.slice_index:
                self._example("removal", before, after, rec, sl.ds)
        return rec

    def copy_move(self) -> TamperRecord | None:
        rng = self.rng
        for _ in range(100):
            st = self.studies[int(rng.integers(len(self.studies)))]
            free = self._free_slices(st)
            if not free:
                continue
            lesions = self._study_lesions(st)
            if lesions and rng.random() < 0.5:
                _, les = lesions[int(rng.integers(len(lesions)))]
                s, sx, sy = les.slice_index, les.x, les.y
                r_px = les.radius_mm / st.spacing * 1.4 + 3
                kind = "FM"
            else:
                s = int(rng.integers(len(st.paths)))
                r_px = float(rng.uniform(6, 14)) / st.spacing
                src_vals = _read(st.paths[s]).values
                loc = _pick(rng, candidate_mask(src_vals, st.modality, r_px + 2), [])
                if loc is None:
                    continue
                sx, sy = loc
                kind = "FB"
            # A copy big enough to carry tissue: at least 5 px of exact core (about 10 mm).
            r_px = max(r_px, 5.0)
            d = int(rng.choice(free))
            dst = _read(st.paths[d])
            src = dst if s == d else _read(st.paths[s])
            shape = dst.values.shape
            margin = r_px + 3
            if not (margin <= sx < shape[1] - margin and margin <= sy < shape[0] - margin):
                continue
            avoid = self._avoid(st, d)
            if s == d:
                avoid.append((sx, sy, 3 * r_px))
            loc = _pick(rng, candidate_mask(dst.values, st.modality, margin), avoid)
            if loc is None:
                continue
            x, y = loc
            shifted = ndimage.shift(src.values, (y - sy, x - sx), order=0, mode="nearest")
            rows, cols = np.ogrid[: shape[0], : shape[1]]
            dist = np.sqrt((cols - x) ** 2 + (rows - y) ** 2)
            alpha = np.clip((r_px + 2 - dist) / 2.0, 0, 1)
            new = dst.values * (1 - alpha) + shifted * alpha
            region_r = r_px + 2.5
            region = disc(shape, x, y, region_r)
            before = dst.stored.copy()
            after = _write(dst, to_stored(new, dst.ds), region, self.out(st.paths[d]))
            rec = TamperRecord(
                "copy-move",
                st.name,
                st.modality,
                kind,
                regions=[Region(self.rel(st.paths[d]), x, y, region_r, d)],
                source={
                    "path": self.rel(st.paths[s]),
                    "x": int(sx),
                    "y": int(sy),
                    "slice_index": s,
                },
                radius_mm=r_px * st.spacing,
            )
            self.touched.add((st.name, d))
            self._example("copy-move", before, after, rec, dst.ds)
            return rec
        return None

    def adversarial(self) -> TamperRecord | None:
        rng = self.rng
        for _ in range(100):
            st = self.studies[int(rng.integers(len(self.studies)))]
            free = self._free_slices(st)
            if not free:
                continue
            lesions = [(i, les) for i, les in self._study_lesions(st) if les.slice_index in free]
            radius_px = float(rng.uniform(12, 20)) / st.spacing
            if lesions and rng.random() < 0.5:
                _, les = lesions[int(rng.integers(len(lesions)))]
                k, x, y, kind = les.slice_index, les.x, les.y, "FM"
                sl = _read(st.paths[k])
            else:
                k = int(rng.choice(free))
                sl = _read(st.paths[k])
                loc = _pick(
                    rng, candidate_mask(sl.values, st.modality, radius_px * 0.5), self._avoid(st, k)
                )
                if loc is None:
                    continue
                (x, y), kind = loc, "FB"
            shape = sl.values.shape
            if st.modality == "CT":
                eps = self.eps_hu
            else:
                lo, hi = np.percentile(sl.values, (0.5, 99.5))
                eps = self.eps_mr * float(hi - lo)
            slope = float(sl.ds.get("RescaleSlope", 1.0) or 1.0)
            step = math.floor(eps / slope + 1e-9)  # largest stored change within the bound
            if step < 1:
                raise TamperError(f"epsilon {eps:g} is below one stored unit ({slope:g})")
            z = ndimage.gaussian_filter(rng.normal(size=shape), 0.7)
            sign = np.clip(z / (0.5 * z.std()), -1, 1)
            region = disc(shape, x, y, radius_px)
            delta = np.rint(sign * step)
            lo_s, hi_s = stored_range(sl.ds)
            new_stored = np.clip(sl.stored.astype(np.int64) + delta, lo_s, hi_s)
            before = sl.stored.copy()
            after = _write(sl, new_stored, region, self.out(st.paths[k]))
            rec = TamperRecord(
                "adversarial-noise",
                st.name,
                st.modality,
                kind,
                regions=[Region(self.rel(st.paths[k]), x, y, radius_px, k)],
                epsilon=step * slope,
                radius_mm=radius_px * st.spacing,
            )
            self.touched.add((st.name, k))
            self._example("adversarial-noise", before, after, rec, sl.ds)
            return rec
        return None

    # --- controls

    def controls(self, n: int, modality: str) -> list[ManifestRow]:
        """Genuine locations on untouched slices; about half on real lesions (TM)."""
        rng = self.rng
        studies = [s for s in self.studies if s.modality == modality]
        rows: list[ManifestRow] = []
        on_lesion = []
        for st in studies:
            for _, les in self._study_lesions(st):
                for k in range(len(st.paths)):
                    if (st.name, k) in self.touched:
                        continue
                    if les.radius_on_slice_mm(st.z[k]) > 0.5 * les.radius_mm:
                        on_lesion.append((st, k, les))
        rng.shuffle(on_lesion)  # type: ignore[arg-type]
        used: set[tuple[str, int, int, int]] = set()
        for st, k, les in on_lesion[: n // 2]:
            rows.append(
                ManifestRow(self.rel(st.paths[k]), les.x, les.y, 0, GENUINE, "TM", modality)
            )
            used.add((st.name, k, les.x, les.y))
        tries = 0
        while len(rows) < n and tries < 50 * max(n, 1):
            tries += 1
            st = studies[int(rng.integers(len(studies)))]
            free = self._free_slices(st)
            if not free:
                continue
            k = int(rng.choice(free))
            sl = _read(st.paths[k])
            loc = _pick(
                rng, candidate_mask(sl.values, st.modality, 8 / st.spacing + 4), self._avoid(st, k)
            )
            if loc is None:
                continue
            rows.append(
                ManifestRow(self.rel(st.paths[k]), loc[0], loc[1], 0, GENUINE, "TB", modality)
            )
        if len(rows) < n:
            raise TamperError(
                f"only {len(rows)} of {n} genuine control locations could be placed in "
                f"{modality} studies: tamper fewer locations or give more studies/slices"
            )
        return rows


def tamper_dataset(
    in_dir: str | Path,
    out_dir: str | Path,
    attacks: Sequence[str],
    count: int,
    seed: int,
    epsilon_hu: float = DEFAULT_EPSILON_HU,
    epsilon_mr: float = DEFAULT_EPSILON_MR,
    progress: Callable[[str], None] | None = None,
) -> TamperResult:
    """Copy ``in_dir`` to ``out_dir``, tamper ``count`` instances per attack, write manifests.

    Writes ``manifest_btd.csv`` (BTD style), ``test.csv`` (CHAIMELEON style) and
    ``regions.json`` (every tampered disc, copy-move sources, adversarial bounds) in
    ``out_dir``. Rows cover every tampered slice plus as many genuine controls.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise TamperError(f"{in_dir}: no such folder")
    for attack in attacks:
        if attack not in ATTACKS:
            raise TamperError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    if count < 1:
        raise TamperError("--count must be at least 1")
    if out_dir.resolve() == in_dir.resolve() or in_dir.resolve() in out_dir.resolve().parents:
        raise TamperError("--out must be a new folder outside --in")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TamperError(f"{out_dir}: exists and is not empty")
    if epsilon_hu <= 0 or epsilon_mr <= 0:
        raise TamperError("epsilon must be positive")
    created = not out_dir.exists()
    try:
        return _run(in_dir, out_dir, attacks, count, seed, epsilon_hu, epsilon_mr, progress)
    except BaseException:
        if created:  # leave no half-tampered copy behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _run(
    in_dir: Path,
    out_dir: Path,
    attacks: Sequence[str],
    count: int,
    seed: int,
    epsilon_hu: float,
    epsilon_mr: float,
    progress: Callable[[str], None] | None,
) -> TamperResult:
    lab = _Lab(in_dir, out_dir, seed, epsilon_hu, epsilon_mr)
    if "removal" in attacks and not lab.lesions:
        raise TamperError(
            f"removal needs {in_dir / LESIONS_CSV} (the genuine lesions, written by "
            "'tamperscan phantoms')"
        )
    shutil.copytree(
        in_dir,
        out_dir,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(LESIONS_CSV, BTD_MANIFEST, CHAIMELEON_MANIFEST, REGIONS_JSON),
    )
    run = {
        "injection": lab.inject,
        "removal": lab.remove,
        "copy-move": lab.copy_move,
        "adversarial-noise": lab.adversarial,
    }
    for attack in attacks:
        for i in range(count):
            rec = run[attack]()
            if rec is None:
                raise TamperError(
                    f"could not place {attack} #{i + 1}: no untouched slice/lesion left; "
                    "use fewer --count or more studies/slices"
                )
            lab.records.append(rec)
            if progress:
                progress(attack)
    tampered = [
        ManifestRow(r.path, r.x, r.y, 1, rec.attack, rec.type, rec.modality)
        for rec in lab.records
        for r in rec.regions
    ]
    controls: list[ManifestRow] = []
    for modality in sorted({r.modality for r in tampered}):
        n = sum(1 for r in tampered if r.modality == modality)
        controls += lab.controls(n, modality)
    rows = tampered + controls
    write_btd(rows, out_dir / BTD_MANIFEST)
    write_chaimeleon(rows, out_dir / CHAIMELEON_MANIFEST)
    with open(out_dir / REGIONS_JSON, "w") as fh:
        json.dump(
            {
                "seed": seed,
                "epsilon_hu": epsilon_hu,
                "epsilon_mr_fraction": epsilon_mr,
                "records": [asdict(r) for r in lab.records],
            },
            fh,
            indent=1,
        )
    return TamperResult(rows, lab.records, lab.examples)


def save_montage(
    before: np.ndarray,
    after: np.ndarray,
    record: TamperRecord,
    path: str | Path,
) -> None:
    """Before / after / difference around the tampered disc, region marked, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    region = record.regions[0]
    for r in record.regions:
        if r.radius_px > region.radius_px:
            region = r
    x, y, rad = region.x, region.y, region.radius_px
    half = int(max(40, rad * 3))
    r0, r1 = max(0, y - half), min(before.shape[0], y + half)
    c0, c1 = max(0, x - half), min(before.shape[1], x + half)
    if record.modality == "CT":
        vmin, vmax = -1200.0, 200.0
    else:
        vmin, vmax = (float(v) for v in np.percentile(before, (0.5, 99.7)))
    diff = after.astype(np.float64) - before.astype(np.float64)
    lim = max(float(np.abs(diff).max()), 1.0)
    fig, axs = plt.subplots(1, 4, figsize=(16, 4.4))
    axs[0].imshow(after, cmap="gray", vmin=vmin, vmax=vmax)
    axs[0].add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, color="yellow", lw=1.2))
    axs[0].set_title(f"tampered slice ({record.modality})")
    unit = "HU" if record.modality == "CT" else "units"
    for ax, img, title in ((axs[1], before, "before"), (axs[2], after, "after")):
        ax.imshow(img[r0:r1, c0:c1], cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(title)
    im = axs[3].imshow(diff[r0:r1, c0:c1], cmap="coolwarm", vmin=-lim, vmax=lim)
    axs[3].set_title(f"after - before ({unit})")
    fig.colorbar(im, ax=axs[3], fraction=0.046)
    for ax in axs[1:]:
        ax.add_patch(Circle((x - c0, y - r0), rad, fill=False, color="lime", lw=1.0, ls="--"))
    for ax in axs:
        ax.set_xticks([])
        ax.set_yticks([])
    extra = f", |delta| <= {record.epsilon:g} {unit}" if record.epsilon else ""
    fig.suptitle(f"{record.attack} ({record.type}{extra}); dashed circle = recorded region")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
