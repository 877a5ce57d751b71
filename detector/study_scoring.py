"""Turns one stored study version into a verdict with the regions it checked.

For every series whose modality has models: read slices one at a time (memory stays bounded
whatever the study size), propose regions (``detector.proposals``), and score them in device
batches with every loaded detector. Each detector's raw score becomes a calibrated tail
probability against its held-out genuine scores (``Calibration.tail_p_values``: conformal
within the held-out range, a fitted Pareto tail beyond it).

Decision at a per-study false-alarm rate ``a`` (Bonferroni, valid whatever the dependence):

- region: ``p_region = min(1, m * min_i p_i)`` over the ``m`` calibrated detectors;
- study: ``p_study = min(1, n * min p_region)`` over the ``n`` regions checked;
- ``tampered`` when ``p_study <= a``, ``suspicious`` when ``p_study <= suspicious_rate``,
  else ``clean``; regions with ``n * p_region <= suspicious_rate`` are flagged.

A genuine study is then called tampered with probability at most ``a``. A study no model can
score gets ``not_scored`` with the reason, never a guessed ``clean``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.activity import ScoringActivity
from detector.interface import Location
from detector.proposals import Proposal, propose
from detector.settings import DetectorSettings
from storage.admin_actions import requested_regions_by_sop
from storage.db import Database
from storage.jobs import RegionRecord
from storage.models import CLEAN, NOT_SCORED, SUSPICIOUS, TAMPERED
from storage.queries import SeriesFiles, study_series_files

log = logging.getLogger(__name__)

FLUSH_REGIONS = 256  # score once this many regions are waiting (bounds slices held in memory)


@dataclass(frozen=True)
class StudyResult:
    outcome: str
    reason: str | None = None
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    regions: list[RegionRecord] = field(default_factory=list)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelSet:
    """Detectors loaded once per process, grouped by modality."""

    def __init__(self, detectors: Sequence[Any] = ()) -> None:
        self.by_modality: dict[str, list[Any]] = {}
        for detector in detectors:
            self.by_modality.setdefault(detector.modality, []).append(detector)

    @classmethod
    def load(
        cls,
        paths: Sequence[Path],
        device: str,
        batch_size: int = 0,
        registry_ids: dict[Path, int] | None = None,
    ) -> ModelSet:
        """Load checkpoints; ``registry_ids`` names the registry version of those that have one."""
        from detector.loading import load_detector  # torch only when models are configured

        detectors = []
        for path in paths:
            detector = load_detector(path, device=device, batch_size=batch_size or None)
            detector.info["sha256"] = _file_digest(Path(path))
            registry_id = (registry_ids or {}).get(Path(path))
            if registry_id is not None:
                detector.info["registry_version"] = registry_id
            log.info(
                "model loaded",
                extra={
                    "detector": detector.name,
                    "modality": detector.modality,
                    "path": str(path),
                    "sha256": detector.info["sha256"][:16],
                },
            )
            detectors.append(detector)
        return cls(detectors)

    def for_modality(self, modality: str) -> list[Any]:
        return self.by_modality.get(modality.upper(), [])

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": d.name,
                "modality": d.modality,
                "version": model_version(d),
                "registry_version": d.info.get("registry_version"),
                "weights": d.info.get("weights"),
                "calibration_size": d.info.get("calibration_size", 0),
                "path": d.info.get("path"),
            }
            for group in self.by_modality.values()
            for d in group
        ]


def model_version(detector: Any) -> str:
    """What verdicts and SRs call a model: its file's sha256 prefix, plus the registry id."""
    digest = detector.info.get("sha256", "")[:16]
    registry_id = detector.info.get("registry_version")
    return digest if registry_id is None else f"r{registry_id}-{digest}"


@dataclass
class _Check:
    """A region being checked: where, and what each detector said."""

    series_uid: str
    sop_uid: str
    proposal: Proposal
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    p_region: float | None = None


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
        scorable = [s for s in series if self.models.for_modality(s.modality)]
        if not scorable:
            return StudyResult(
                NOT_SCORED,
                f"no model for {', '.join(modalities)}",
                details={"modalities": modalities, "study_version": study_version},
            )
        calibrated = [
            d
            for s in scorable
            for d in self.models.for_modality(s.modality)
            if d.calibration is not None
        ]
        if not calibrated:
            return StudyResult(
                NOT_SCORED,
                "the loaded models carry no calibration (score held-out genuine scans first)",
                details={"models": self.models.describe()},
            )
        checks: list[_Check] = []
        notes: list[str] = []
        for entry in scorable:
            self._score_series(entry, checks, notes, requested)
        return self._decide(study_id, study_version, checks, notes, modalities)

    def _window_stride(self) -> int:
        """The sliding window costs ~100 patches a slice: on by default only on a GPU."""
        if self.settings.window_stride_px is not None:
            return self.settings.window_stride_px
        from detector.device import resolve_device

        return 48 if resolve_device(self.settings.device).type == "cuda" else 0

    def _score_series(
        self,
        entry: SeriesFiles,
        checks: list[_Check],
        notes: list[str],
        requested: dict[str, list[tuple[int, int, float]]] | None = None,
    ) -> None:
        """Score one series; ``requested`` adds the admin-requested locations per SOP UID."""
        from detector.slices import SliceReadError, read_slice, volume_intensity_range

        detectors = self.models.for_modality(entry.modality)
        paths = [(sop, self.instance_root / rel) for sop, rel in entry.files]
        intensity_range = None
        if entry.modality == "MR":
            intensity_range = volume_intensity_range(p for _, p in paths)
        stride = self._window_stride()
        pending: list[tuple[Location, _Check]] = []
        for sop_uid, path in paths:
            if len(checks) + len(pending) >= self.settings.max_regions_per_study:
                notes.append(
                    f"region cap {self.settings.max_regions_per_study} reached: "
                    f"later slices of series {entry.series_uid} were not checked"
                )
                break
            try:
                image = read_slice(path, intensity_range=intensity_range)
            except SliceReadError as exc:
                notes.append(f"slice {sop_uid} not scored: {exc}")
                continue
            proposals = propose(image, stride, self.settings.max_blobs_per_slice)
            proposals += [
                Proposal(x, y, radius, source="admin", strength=float("inf"))
                for x, y, radius in (requested or {}).get(sop_uid, [])
                if 0 <= x < image.pixels.shape[1] and 0 <= y < image.pixels.shape[0]
            ]
            for proposal in proposals:
                check = _Check(entry.series_uid, sop_uid, proposal)
                pending.append((Location(image, proposal.x, proposal.y), check))
            if len(pending) >= FLUSH_REGIONS:
                self._run_detectors(detectors, pending)
                checks.extend(c for _, c in pending)
                pending = []
        if pending:
            self._run_detectors(detectors, pending)
            checks.extend(c for _, c in pending)

    def _run_detectors(
        self, detectors: Sequence[Any], batch: list[tuple[Location, _Check]]
    ) -> None:
        from detector.preprocess import patches_for

        locations = [loc for loc, _ in batch]
        for detector in detectors:
            raw, maps = detector.score_patches(patches_for(locations, detector.prep))
            # Tail-extended p-values: Bonferroni over many regions needs p below 1/(n+1).
            calibration = detector.calibration
            p = calibration.tail_p_values(raw) if calibration is not None else None
            version = model_version(detector)
            for i, (_, check) in enumerate(batch):
                check.scores[detector.name] = {
                    "raw": float(raw[i]),
                    "p": None if p is None else float(p[i]),
                    "model": version,
                }
            # Keep an evidence map only where a flag is possible: bounded memory.
            if p is not None:
                for i, (_, check) in enumerate(batch):
                    if p[i] <= self.settings.suspicious_rate and check.heatmap is None:
                        check.heatmap = maps[i]

    # -- the decision ---------------------------------------------------------------------

    def _decide(
        self,
        study_id: int,
        version: int,
        checks: list[_Check],
        notes: list[str],
        modalities: list[str],
    ) -> StudyResult:
        n = len(checks)
        for check in checks:
            ps = [s["p"] for s in check.scores.values() if s["p"] is not None]
            check.p_region = min(1.0, len(ps) * min(ps)) if ps else None
        region_ps = [c.p_region for c in checks if c.p_region is not None]
        details: dict[str, Any] = {
            "false_alarm_rate": self.settings.false_alarm_rate,
            "suspicious_rate": self.settings.suspicious_rate,
            "regions_checked": n,
            "modalities": modalities,
            "study_version": version,
            "models": self.models.describe(),
            "notes": notes,
        }
        if not region_ps:
            return StudyResult(
                NOT_SCORED,
                "no region could be checked (no slice had anatomy to score)",
                details=details,
            )
        p_study = min(1.0, n * min(region_ps))
        details["study_p_value"] = p_study
        if p_study <= self.settings.false_alarm_rate:
            outcome = TAMPERED
        elif p_study <= self.settings.suspicious_rate:
            outcome = SUSPICIOUS
        else:
            outcome = CLEAN
        regions = []
        for check in checks:
            flagged = check.p_region is not None and n * check.p_region <= (
                self.settings.suspicious_rate
            )
            heatmap = None
            if check.heatmap is not None and flagged and self.settings.heatmaps == "flagged":
                heatmap = self._save_heatmap(study_id, version, check)
            regions.append(
                RegionRecord(
                    series_uid=check.series_uid,
                    sop_instance_uid=check.sop_uid,
                    x=check.proposal.x,
                    y=check.proposal.y,
                    source=check.proposal.source,
                    radius_px=check.proposal.radius_px,
                    scores=check.scores,
                    p_value=check.p_region,
                    flagged=flagged,
                    heatmap_path=heatmap,
                )
            )
        flagged_count = sum(r.flagged for r in regions)
        reason = (
            f"{flagged_count} of {n} regions flagged; study p = {p_study:.2g} "
            f"(false-alarm rate {self.settings.false_alarm_rate:g})"
        )
        return StudyResult(outcome, reason, p_study, details, regions)

    def _save_heatmap(self, study_id: int, version: int, check: _Check) -> str:
        from PIL import Image

        rel = (
            Path("heatmaps")
            / str(study_id)
            / f"v{version}"
            / (f"{check.sop_uid}_{check.proposal.x}_{check.proposal.y}.png")
        )
        target = self.data_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        heat = np.asarray(check.heatmap, dtype=np.float32)
        scale = float(heat.max()) or 1.0
        Image.fromarray(np.clip(heat / scale * 255, 0, 255).astype(np.uint8)).save(target)
        return rel.as_posix()
