"""Turns one stored study version into a verdict with the regions it checked.

For every series: one pass (:class:`detector.series_scan.SeriesScan`) proposes regions and
scores them with every forensic check (always on: a fresh installation gives real verdicts from
its first study) and every learned model of the series' modality. Each detector's raw score
becomes a calibrated p-value (learned: against the checkpoint's held-out genuine scores;
forensic: against reference locations of the same series) and the decision follows
:mod:`detector.fusion` (Bonferroni over detectors, then over regions, at the per-study
false-alarm rate). Flagged regions on adjacent slices become one 3-D finding
(:mod:`storage.findings`). A series of a modality no detector can read gets ``not_scored``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.activity import ScoringActivity
from detector.fusion import decide, region_p
from detector.model_set import ModelSet, model_version
from detector.series_scan import RegionCheck, SeriesScan, order_slices
from detector.settings import DetectorSettings
from storage.admin_actions import requested_regions_by_sop
from storage.db import Database
from storage.findings import finding_numbers
from storage.jobs import RegionRecord
from storage.models import NOT_SCORED
from storage.queries import SeriesFiles, study_series_files

log = logging.getLogger(__name__)

SCORED_MODALITIES = ("CT", "MR")  # what the slice reader and the region proposals understand

__all__ = ["ModelSet", "StudyResult", "StudyScorer", "model_version"]


@dataclass(frozen=True)
class StudyResult:
    outcome: str
    reason: str | None = None
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    regions: list[RegionRecord] = field(default_factory=list)


class StudyScorer:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        settings: DetectorSettings,
        models: ModelSet | None = None,
    ) -> None:
        self.db = db
        self.data_dir = data_dir
        self.instance_root = data_dir / "instances"
        self.settings = settings
        self.models = models if models is not None else ModelSet()
        # Held while scoring: retraining yields to it, model swaps wait for it.
        self.activity = ScoringActivity()

    def swap_models(self, models: ModelSet) -> None:
        """Replace the model set between studies (never while one is being scored)."""
        with self.activity.exclusive():
            self.models = models

    # -- the study ------------------------------------------------------------------------

    def score(self, study_id: int, study_version: int) -> StudyResult:
        with self.activity.scoring():
            return self._score(study_id, study_version)

    def _score(self, study_id: int, study_version: int) -> StudyResult:
        with self.db.reading() as session:
            series = study_series_files(session, study_id)
            requested = requested_regions_by_sop(session, study_id)
        modalities = sorted({s.modality or "unknown" for s in series})
        if not series:
            return StudyResult(NOT_SCORED, "study has no series")
        scorable = [
            s
            for s in series
            if s.modality in SCORED_MODALITIES and (self.models.checks or self._learned(s))
        ]
        if not scorable:
            return StudyResult(
                NOT_SCORED,
                f"no model for {', '.join(modalities)}",
                details={"modalities": modalities, "study_version": study_version},
            )
        regions: list[RegionCheck] = []
        notes: list[str] = []
        for entry in scorable:
            regions += self._score_series(entry, notes, requested, len(regions))
        learned = any(self._learned(s) for s in scorable)
        return self._decide(study_id, study_version, regions, notes, modalities, learned)

    def _learned(self, entry: SeriesFiles) -> list[Any]:
        """The series' calibrated learned models (uncalibrated ones cannot give p-values)."""
        return [
            d for d in self.models.for_modality(entry.modality) if getattr(d, "calibration", None)
        ]

    def _window_stride(self) -> int:
        """The sliding window costs ~100 patches a slice: on by default only on a GPU."""
        if self.settings.window_stride_px is not None:
            return self.settings.window_stride_px
        from detector.device import resolve_device

        return 48 if resolve_device(self.settings.device).type == "cuda" else 0

    def _score_series(
        self,
        entry: SeriesFiles,
        notes: list[str],
        requested: dict[str, list[tuple[int, int, float]]],
        already: int,
    ) -> list[RegionCheck]:
        from detector.slices import read_slice, volume_intensity_range

        files = [(sop, self.instance_root / rel) for sop, rel in entry.files]
        slices = order_slices(files)
        intensity_range = None
        if entry.modality == "MR":
            intensity_range = volume_intensity_range(p for _, p in files)
        scan = SeriesScan(
            entry.series_uid,
            slices,
            lambda path: read_slice(path, intensity_range=intensity_range),
            self.models.checks,
            self._learned(entry),
            self._window_stride(),
            self.settings.max_blobs_per_slice,
            self.settings.hotspots_per_slice,
            self.settings.references_per_series,
        )
        scan.run(requested, self.settings.max_regions_per_study - already)
        scan.finish()
        notes += scan.notes
        return scan.regions

    # -- the decision ---------------------------------------------------------------------

    def _decide(
        self,
        study_id: int,
        version: int,
        checks: list[RegionCheck],
        notes: list[str],
        modalities: list[str],
        learned: bool = True,
    ) -> StudyResult:
        for check in checks:
            check.p_region = region_p(check.scores)
        region_ps = [c.p_region for c in checks if c.p_region is not None]
        details: dict[str, Any] = {
            "false_alarm_rate": self.settings.false_alarm_rate,
            "suspicious_rate": self.settings.suspicious_rate,
            "regions_checked": len(checks),
            "modalities": modalities,
            "study_version": version,
            "models": self.models.describe(),
            "forensic_only": not learned,
            "fusion": "bonferroni over detectors, then over regions",
            "notes": notes,
        }
        if not region_ps:
            return StudyResult(
                NOT_SCORED,
                "no region could be checked (no slice had anatomy to score)",
                details=details,
            )
        decision = decide(region_ps, self.settings.false_alarm_rate, self.settings.suspicious_rate)
        details["study_p_value"] = decision.p_study
        flagged = [
            c for c in checks if c.p_region is not None and c.p_region <= decision.region_threshold
        ]
        numbers = finding_numbers([_Where(c) for c in flagged])
        finding_of = {id(c): n for c, n in zip(flagged, numbers, strict=True)}
        deciding = sorted(
            {name for c in flagged for name, e in c.scores.items() if _decisive(e, c)}
        )
        details["findings"] = max(numbers, default=0)
        details["deciding_detectors"] = deciding
        regions = [self._record(study_id, version, c, finding_of.get(id(c))) for c in checks]
        reason = (
            f"{len(flagged)} of {len(checks)} regions flagged in {max(numbers, default=0)} "
            f"finding(s); study p = {decision.p_study:.2g} "
            f"(false-alarm rate {self.settings.false_alarm_rate:g})"
        )
        if deciding:
            reason += f"; evidence: {', '.join(deciding)}"
        if details["forensic_only"]:
            reason += "; forensic checks only (no trained model for this modality yet)"
        return StudyResult(decision.outcome.value, reason, decision.p_study, details, regions)

    def _record(
        self, study_id: int, version: int, check: RegionCheck, finding: int | None
    ) -> RegionRecord:
        heatmap = None
        if finding is not None and self.settings.heatmaps == "flagged":
            heatmap = self._save_heatmap(study_id, version, check)
        return RegionRecord(
            series_uid=check.series_uid,
            sop_instance_uid=check.ref.sop_uid,
            x=check.proposal.x,
            y=check.proposal.y,
            source=check.proposal.source.split(":")[0],
            radius_px=check.proposal.radius_px,
            scores=check.scores,
            p_value=check.p_region,
            flagged=finding is not None,
            heatmap_path=heatmap,
            slice_index=check.slice_index,
            z_mm=check.ref.z_mm,
            instance_number=check.ref.instance_number,
            finding=finding,
        )

    def _save_heatmap(self, study_id: int, version: int, check: RegionCheck) -> str | None:
        """The evidence map of the detector with the smallest p for this region."""
        from PIL import Image

        best = min(
            (e.get("p") or 1.0, name) for name, e in check.scores.items() if name in check.maps
        )
        heat = np.asarray(check.maps[best[1]], dtype=np.float32)
        rel = (
            Path("heatmaps")
            / str(study_id)
            / f"v{version}"
            / (f"{check.ref.sop_uid}_{check.proposal.x}_{check.proposal.y}.png")
        )
        target = self.data_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        scale = float(np.nanmax(heat)) or 1.0
        Image.fromarray(np.clip(heat / scale * 255, 0, 255).astype(np.uint8)).save(target)
        return rel.as_posix()


def _decisive(evidence: dict[str, Any], check: RegionCheck) -> bool:
    """Whether this detector's p alone (times the number of detectors) flags the region."""
    p = evidence.get("p")
    return (
        p is not None
        and check.p_region is not None
        and p * len(check.scores) <= check.p_region * 1.000001
    )


@dataclass(frozen=True)
class _Where:
    """The fields of a region that 3-D grouping reads."""

    check: RegionCheck

    @property
    def series_uid(self) -> str:
        return self.check.series_uid

    @property
    def x(self) -> int:
        return self.check.proposal.x

    @property
    def y(self) -> int:
        return self.check.proposal.y

    @property
    def radius_px(self) -> float:
        return self.check.proposal.radius_px

    @property
    def slice_index(self) -> int:
        return self.check.slice_index

    @property
    def z_mm(self) -> float | None:
        return self.check.ref.z_mm
