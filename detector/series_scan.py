"""One pass over one series: propose regions, run every check and model, collect the null.

Slices are read in order along the slice normal and only a small window of them is held in
memory (the slice, its neighbours for the slice check, ``window`` slices either side for the
copy-move search), whatever the study size. On each slice:

1. regions come from the blob proposals, the hotspots of every map check's anomaly map
   (cheap evidence over every pixel: a removal leaves no blob, but it leaves a noise hole),
   areas whose blocks repeat elsewhere in the series, the GPU sliding window and admin
   requests;
2. every forensic check scores the regions and a few random reference locations of the same
   tissue; the references are its null for this series (fitted once, at the end of the pass).
   Hotspots were chosen as their slice's strongest anomalies, so the check that chose them
   compares them with the strongest anomalies of every slice instead (a max-statistic null);
3. learned models score the regions in device batches, against their stored calibration.

No database access here: the scorer hands in the files and records what comes out.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from detector.calibration import Calibration
from detector.forensics import VERSION as FORENSIC_VERSION
from detector.forensics.base import hotspots
from detector.forensics.references import points_in, tissue_mask
from detector.interface import Detector, Location, SliceImage
from detector.model_set import model_version
from detector.proposals import Proposal, propose

FLUSH_REGIONS = 256  # score learned models once this many regions wait


@dataclass(frozen=True)
class SliceRef:
    """One file of the series and where it sits."""

    sop_uid: str
    path: Path
    z_mm: float | None
    instance_number: int | None
    pixels: int = 0  # Rows x Columns from the header (0: unknown), sizes the series indexes


@dataclass
class RegionCheck:
    """A region being checked: where, and what each detector said."""

    series_uid: str
    ref: SliceRef
    slice_index: int
    proposal: Proposal
    scores: dict[str, dict[str, object]] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    p_region: float | None = None


def order_slices(files: Sequence[tuple[str, Path]]) -> list[SliceRef]:
    """Files sorted along the slice normal (headers only); unreadable headers keep their place."""
    refs = []
    for sop_uid, path in files:
        z, number, pixels = None, None, 0
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            number = int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
            ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
            if ipp is not None and iop is not None and len(iop) == 6:
                normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
                z = float(np.dot(normal, np.asarray(ipp, float)))
        except Exception:  # the slice reader reports unreadable files with the reason
            pass
        refs.append(SliceRef(sop_uid, path, z, number, pixels))
    if all(r.z_mm is not None for r in refs):
        refs.sort(key=lambda r: r.z_mm)  # type: ignore[arg-type, return-value]
    return refs


class SeriesScan:
    """Scans one series; ``checks`` are forensic, ``models`` learned (already calibrated)."""

    def __init__(
        self,
        series_uid: str,
        slices: list[SliceRef],
        read: Callable[[Path], SliceImage],
        checks: Sequence[Detector],
        models: Sequence[Detector],
        window_stride: int,
        max_blobs: int,
        hotspots_per_slice: int,
        references: int,
        copy_window: int = 3,
        seed: int = 0,
    ) -> None:
        self.series_uid = series_uid
        self.slices = slices
        self.read = read
        self.checks = list(checks)
        self.models = list(models)
        self.window_stride = window_stride
        self.max_blobs = max_blobs
        self.hotspots_per_slice = hotspots_per_slice
        self.refs_per_slice = self._per_slice(references)
        self.copy_window = copy_window
        self.rng = np.random.default_rng(seed)
        self.regions: list[RegionCheck] = []
        self.notes: list[str] = []
        self.null_scores: dict[str, list[float]] = {c.name: [] for c in self.checks}
        # A hotspot is among the strongest anomalies of its slice, not a random location: its
        # null is the strongest anomaly of every slice of the series (a max-statistic null,
        # conservative for the second and later peaks of a slice).
        self.peak_null: dict[str, list[float]] = {}
        self._images: dict[int, SliceImage | None] = {}
        # Masks the index pass made (body, lungs, ...), bit-packed and deflated (~8 kB a slice)
        # until the scan reads the slice again: recomputing them cost a tenth of a large series.
        self._masks: dict[int, dict[str, tuple[tuple[int, ...], bytes]]] = {}
        self._pending: list[tuple[Location, RegionCheck]] = []

    # -- slices ---------------------------------------------------------------------------

    def _image(self, k: int) -> SliceImage | None:
        if not 0 <= k < len(self.slices):
            return None
        if k not in self._images:
            from detector.slices import SliceReadError

            try:
                self._images[k] = self._adopt(k, self.read(self.slices[k].path))
            except SliceReadError as exc:
                self.notes.append(f"slice {self.slices[k].sop_uid} not scored: {exc}")
                self._images[k] = None
        return self._images[k]

    def _adopt(self, k: int, image: SliceImage) -> SliceImage:
        """The slice with the masks its index-pass read made (same file, same pixels)."""
        for key, (shape, packed) in self._masks.pop(k, {}).items():
            if shape != image.pixels.shape:
                continue
            bits = np.frombuffer(zlib.decompress(packed), dtype=np.uint8)
            mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            mask.flags.writeable = False
            image.derived(key, lambda mask=mask: mask)  # type: ignore[misc]
        return image

    def _forget_before(self, k: int) -> None:
        for j in [j for j in self._images if j < k]:
            image = self._images.pop(j)
            if image is not None:  # regions waiting for the models may still hold the slice
                image.forget_derived()

    # -- the pass -------------------------------------------------------------------------

    def run(self, requested: dict[str, list[tuple[int, int, float]]], room: int) -> None:
        """Scan every slice; stop adding regions once ``room`` regions were proposed."""
        self._index_series()
        for k, ref in enumerate(self.slices):
            self._forget_before(k - self.copy_window - 1)
            image = self._image(k)
            if image is None:
                continue
            if len(self.regions) >= room:
                self.notes.append(
                    f"region cap reached: later slices of series {self.series_uid} were not checked"
                )
                break
            near = [self._image(j) for j in range(k - self.copy_window, k + self.copy_window + 1)]
            context = tuple(s for s in near if s is not None)
            neighbours = (self._image(k - 1), self._image(k + 1))
            self._scan_slice(k, ref, image, context, neighbours, requested.get(ref.sop_uid, []))
        self._flush()

    def _index_series(self) -> None:
        """One read-ahead pass that feeds every check with a series-wide index (exact repeats,
        noise copies) slice by slice: each slice is read and its masks made once for all."""
        ident = tuple(str(ref.path) for ref in self.slices)  # what slice_id gives a read slice
        pixels = sum(max(1, ref.pixels) for ref in self.slices)
        indexers = [
            c for c in self.checks if hasattr(c, "start_index") and c.start_index(ident, pixels)
        ]
        if not indexers:
            return
        from detector.slices import SliceReadError

        for k, ref in enumerate(self.slices):
            try:
                image = self.read(ref.path)
            except SliceReadError:  # unreadable: an empty slice indexes nothing
                blank = SliceImage(np.zeros((1, 1), np.float32), "CT", source=f"unreadable-{k}")
                for check in indexers:
                    check.index_slice(k, blank)  # type: ignore[attr-defined]
                continue
            for check in indexers:
                check.index_slice(k, image)  # type: ignore[attr-defined]
            self._masks[k] = {
                key: (mask.shape, zlib.compress(np.packbits(mask).tobytes(), 1))
                for key, mask in image.derived_masks().items()
            }
        for check in indexers:
            check.finish_index()  # type: ignore[attr-defined]

    def _scan_slice(
        self,
        k: int,
        ref: SliceRef,
        image: SliceImage,
        context: tuple[SliceImage, ...],
        neighbours: tuple[SliceImage | None, SliceImage | None],
        requested: list[tuple[int, int, float]],
    ) -> None:
        proposals = propose(image, self.window_stride, self.max_blobs)
        mask = tissue_mask(image)
        probe = Location(image, 0, 0, context, neighbours)
        for mapper in [c for c in self.checks if hasattr(c, "anomaly_map")]:
            if not self.hotspots_per_slice:
                break
            anomaly = mapper.anomaly_map(probe)  # type: ignore[attr-defined]
            peaks = hotspots(anomaly, mask, self.hotspots_per_slice)
            if peaks:  # the slice's strongest anomaly: the conservative null for every rank
                self.peak_null.setdefault(mapper.name, []).append(peaks[0][2])
            taken = [(p.x, p.y) for p in proposals]
            for x, y, value in peaks:
                if all((x - a) ** 2 + (y - b) ** 2 > 64 for a, b in taken):
                    proposals.append(Proposal(x, y, 8.0, f"hotspot:{mapper.name}", value))
        for check in self.checks:
            candidates = getattr(check, "candidates", None)
            if candidates is None:
                continue
            taken = [(p.x, p.y) for p in proposals]
            for x, y, value in candidates(image, mask):
                if all((x - a) ** 2 + (y - b) ** 2 > 64 for a, b in taken):
                    proposals.append(Proposal(x, y, 8.0, "repeat", value))
        rows, cols = image.pixels.shape
        proposals += [
            Proposal(x, y, radius, source="admin", strength=float("inf"))
            for x, y, radius in requested
            if 0 <= x < cols and 0 <= y < rows
        ]
        found = [RegionCheck(self.series_uid, ref, k, p) for p in proposals]
        locations = [Location(image, p.x, p.y, context, neighbours) for p in proposals]
        references = [
            Location(image, x, y, context, neighbours)
            for x, y in points_in(mask, self.refs_per_slice, self.rng)
        ]
        for check in self.checks:
            for region, result in zip(found, check.score(locations), strict=True):
                region.scores[check.name] = {
                    "raw": result.score,
                    "kind": check.kind.value,
                    "model": FORENSIC_VERSION,
                }
                region.maps[check.name] = result.heatmap.astype(np.float16)
            if getattr(check, "fits_null", True):  # an analytic null needs no references
                quota = getattr(check, "null_references", None)  # a check that needs fewer
                refs = references if quota is None else references[: self._per_slice(quota)]
                self.null_scores[check.name] += [r.score for r in check.score(refs)]
        self.regions += found
        if self.models:  # waiting regions hold their slices: only keep them for a model
            self._pending += list(zip(locations, found, strict=True))
        if len(self._pending) >= FLUSH_REGIONS:
            self._flush()

    def _flush(self) -> None:
        """Score waiting regions with the learned models (p from their stored calibration)."""
        batch, self._pending = self._pending, []
        if not batch or not self.models:
            return
        locations = [loc for loc, _ in batch]
        for model in self.models:
            results = model.score(locations)
            calibration: Calibration | None = getattr(model, "calibration", None)
            raw = np.array([r.score for r in results])
            p = calibration.tail_p_values(raw) if calibration is not None else None
            version = model_version(model)
            for i, (_, region) in enumerate(batch):
                region.scores[model.name] = {
                    "raw": float(raw[i]),
                    "p": None if p is None else float(p[i]),
                    "kind": model.kind.value,
                    "model": version,
                }
                region.maps[model.name] = results[i].heatmap.astype(np.float16)

    def _per_slice(self, total: int) -> int:
        """Reference locations per slice that give about ``total`` over the series."""
        return max(1, math.ceil(total / max(1, len(self.slices))))

    def finish(self) -> None:
        """Fit each forensic check's null on this series' references and give regions p."""
        for check in self.checks:
            scores = self.null_scores[check.name]
            if not getattr(check, "fits_null", True):  # an analytic null (exact repeats)
                null = check.calibrate(())
                raws = [r.scores[check.name]["raw"] for r in self.regions]
                for region, p in zip(self.regions, null.tail_p_values(raws), strict=True):
                    region.scores[check.name]["p"] = float(p)
                continue
            null_from = getattr(check, "null_from", None)
            if null_from is not None:  # the check builds its own null from the references
                own = null_from(scores)
                raws = [r.scores[check.name]["raw"] for r in self.regions]
                for region, p in zip(self.regions, own.tail_p_values(raws), strict=True):
                    region.scores[check.name]["p"] = float(p)
                if isinstance(own, Calibration):
                    self.notes.append(f"{check.name}: its bound fails on this series' references")
                continue
            if len(scores) < 40:
                self.notes.append(f"{check.name}: too few reference locations in the series")
                continue
            null = Calibration.from_scores(scores)
            peaks = self.peak_null.get(check.name, [])
            peak_null = Calibration.from_scores(peaks) if peaks else None
            for region in self.regions:
                evidence = region.scores[check.name]
                chosen = null
                if region.proposal.source == f"hotspot:{check.name}" and peak_null is not None:
                    chosen = peak_null  # few slices: conformal only (no tail below 40)
                evidence["p"] = float(chosen.tail_p_values([evidence["raw"]])[0])
