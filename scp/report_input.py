"""What a verdict's report says, gathered from the database: the input of :mod:`scp.report`.

Reading is kept apart from building so the SR builder can be tested on hand-made input, and so
the key-image writer (:mod:`scp.keyimage`) reads the same regions, findings and headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from storage.db import Database
from storage.files import check_uid
from storage.models import Instance, Region, Study, Verdict


class ReportError(RuntimeError):
    """The report cannot be built (e.g. the study's instances are gone); retried later."""


@dataclass(frozen=True)
class ModelId:
    name: str
    version: str
    uid: str | None = None


@dataclass(frozen=True)
class RegionInput:
    region_id: int
    sop_instance_uid: str
    x: int
    y: int
    radius_px: float | None
    flagged: bool
    fused: float | None
    scores: dict[str, dict[str, Any]]
    finding: int | None = None  # 3-D finding number (storage.findings); None if unflagged
    slices: str = ""  # "slices 12-15" for a finding that spans several


def one_per_finding(regions: list[RegionInput], extents: dict[int, str]) -> list[RegionInput]:
    """Flagged regions of one 3-D finding become one SR finding: the member with the smallest
    fused p stands for it, labelled with the finding's slice range; other regions stay."""
    best: dict[int, RegionInput] = {}
    rest = []
    for r in regions:
        if r.finding is None:
            rest.append(r)
        elif r.finding not in best or (r.fused or 1.0) < (best[r.finding].fused or 1.0):
            best[r.finding] = r
    chosen = [replace(r, slices=extents.get(n, "")) for n, r in sorted(best.items())]
    return chosen + rest


@dataclass
class ReportInput:
    """Everything the SR says, gathered from the database (kept separate for testing)."""

    verdict_id: int
    study_uid: str
    outcome: str
    reason: str | None
    score: float | None
    created_at: datetime
    false_alarm_rate: float | None
    regions_checked: int
    models: list[ModelId]
    regions: list[RegionInput]
    evidence: list[Dataset]
    predecessor: Dataset | None = None
    sr_series_uid: str = ""
    sr_sop_instance_uid: str = ""
    images: dict[str, Dataset] = field(default_factory=dict)


def _models(details: dict[str, Any], regions: Sequence[RegionInput]) -> list[ModelId]:
    """The models from the verdict's details, else from the regions' per-detector scores."""
    found: dict[tuple[str, str], ModelId] = {}
    for entry in details.get("models") or []:
        if isinstance(entry, dict) and entry.get("name"):
            model = ModelId(
                str(entry["name"]),
                str(entry.get("version") or "unknown"),
                str(entry["uid"]) if entry.get("uid") else None,
            )
            found[(model.name, model.version)] = model
    for region in regions:
        for detector, values in region.scores.items():
            version = str(values.get("model") or "unknown")
            found.setdefault((detector, version), ModelId(detector, version))
    return sorted(found.values(), key=lambda m: (m.name, m.version))


def load_input(
    db: Database, instance_root: Path, reports_root: Path, verdict_id: int, include_checked: bool
) -> ReportInput:
    """Read the verdict, its regions and the study's instance headers."""
    with db.reading() as session:
        verdict = session.get(Verdict, verdict_id)
        if verdict is None:
            raise ReportError(f"no verdict {verdict_id}")
        study = session.get(Study, verdict.study_id)
        assert study is not None
        rows = session.scalars(
            select(Region).where(Region.verdict_id == verdict_id).order_by(Region.id)
        ).all()
        instances = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ).all()
        previous = session.scalars(
            select(Verdict)
            .where(
                Verdict.study_id == study.id,
                Verdict.id < verdict.id,
                Verdict.sr_sop_instance_uid.is_not(None),
            )
            .order_by(Verdict.id.desc())
            .limit(1)
        ).one_or_none()
        regions = [
            RegionInput(
                r.id,
                r.sop_instance_uid,
                r.x,
                r.y,
                r.radius_px,
                bool(r.flagged),
                r.p_value,
                dict(r.scores or {}),
                r.finding,
            )
            for r in rows
        ]
        extents: dict[int, list[int]] = {}
        for r in rows:
            if r.finding is not None and r.instance_number is not None:
                extents.setdefault(r.finding, []).append(r.instance_number)
        labels = {
            n: f"instances {min(v)}-{max(v)}" if min(v) != max(v) else f"instance {v[0]}"
            for n, v in extents.items()
        }
        regions = one_per_finding(regions, labels)
        details = dict(verdict.details or {})
        paths = [(i.sop_instance_uid, instance_root / i.file_path) for i in instances]
        predecessor_path = (
            report_path(reports_root, study.study_uid, previous.sr_sop_instance_uid)
            if previous is not None and previous.sr_sop_instance_uid
            else None
        )
        data = ReportInput(
            verdict_id=verdict.id,
            study_uid=study.study_uid,
            outcome=verdict.outcome,
            reason=verdict.reason,
            score=verdict.score,
            created_at=verdict.created_at,
            false_alarm_rate=as_float(details.get("false_alarm_rate")),
            regions_checked=int(details.get("regions_checked") or len(regions)),
            models=_models(details, regions),
            regions=[r for r in regions if r.flagged or include_checked],
            evidence=[],
            sr_series_uid=verdict.sr_series_uid or "",
            sr_sop_instance_uid=verdict.sr_sop_instance_uid or "",
        )
    wanted = {r.sop_instance_uid for r in data.regions}
    for sop_uid, path in paths:
        try:
            # Headers suffice for the evidence; regions' images are read whole (key images).
            ds = pydicom.dcmread(path, stop_before_pixels=sop_uid not in wanted)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ReportError(f"cannot read instance {sop_uid} at {path}: {exc}") from exc
        _fill_type2(ds)
        data.evidence.append(ds)
        if sop_uid in wanted:
            data.images[sop_uid] = ds
    if not data.evidence:
        raise ReportError(f"study {data.study_uid} has no stored instances")
    missing = wanted - data.images.keys()
    if missing:
        raise ReportError(f"regions refer to instances not in the study: {sorted(missing)}")
    if predecessor_path is not None and predecessor_path.exists():
        data.predecessor = pydicom.dcmread(predecessor_path, stop_before_pixels=True)
    return data


# Patient and study attributes the SR copies from its evidence (type 2: present, may be empty).
# Real instances often leave some out; the SR still needs them present.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _fill_type2(ds: Dataset) -> None:
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")


def as_float(value: Any) -> float | None:
    """A number from a JSON detail, or None when it is missing or not a number."""
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def report_path(reports_root: Path, study_uid: str, sop_uid: str) -> Path:
    """Where a report's file lives; built only from checked UIDs."""
    folder = reports_root / check_uid(study_uid, "Study Instance UID")
    return folder / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"
