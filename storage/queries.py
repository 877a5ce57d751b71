"""Read-only views of the index for the command line and (later) the admin report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Instance, Series, Study, Verdict


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str | None
    modalities: list[str]
    series: int
    instances: int
    state: str
    version: int
    verdict: str | None
    verdict_reason: str | None
    last_received_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_studies(session: Session, limit: int = 100) -> list[StudySummary]:
    """Newest studies first, with counts and the current verdict."""
    counts = (
        select(
            Instance.study_id,
            func.count(Instance.id).label("instances"),
            func.count(func.distinct(Instance.series_id)).label("series"),
        )
        .group_by(Instance.study_id)
        .subquery()
    )
    rows = session.execute(
        select(Study, counts.c.instances, counts.c.series, Verdict.outcome, Verdict.reason)
        .outerjoin(counts, counts.c.study_id == Study.id)
        .outerjoin(Verdict, (Verdict.study_id == Study.id) & Verdict.is_current.is_(True))
        .order_by(Study.last_received_at.desc(), Study.id.desc())
        .limit(limit)
    ).all()
    modalities: dict[int, set[str]] = {}
    study_ids = [row[0].id for row in rows]
    if study_ids:
        for study_id, modality in session.execute(
            select(Series.study_id, Series.modality).where(Series.study_id.in_(study_ids))
        ):
            modalities.setdefault(study_id, set()).add(modality or "?")
    return [
        StudySummary(
            study_uid=study.study_uid,
            patient_id=study.patient_id,
            modalities=sorted(modalities.get(study.id, set())),
            series=series or 0,
            instances=instances or 0,
            state=study.state,
            version=study.version,
            verdict=outcome,
            verdict_reason=reason,
            last_received_at=study.last_received_at.isoformat(timespec="seconds"),
        )
        for study, instances, series, outcome, reason in rows
    ]


@dataclass(frozen=True)
class SeriesFiles:
    """One series of a study and the files of its instances (relative to the instance root)."""

    series_uid: str
    modality: str
    files: list[tuple[str, str]]  # (SOP Instance UID, file path)


def study_series_files(session: Session, study_id: int) -> list[SeriesFiles]:
    rows = session.execute(
        select(Series.series_uid, Series.modality, Instance.sop_instance_uid, Instance.file_path)
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Series.series_uid, Instance.instance_number, Instance.id)
    ).all()
    grouped: dict[str, SeriesFiles] = {}
    for series_uid, modality, sop_uid, path in rows:
        entry = grouped.setdefault(
            series_uid, SeriesFiles(series_uid, (modality or "").upper(), [])
        )
        entry.files.append((sop_uid, path))
    return list(grouped.values())
