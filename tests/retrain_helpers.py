"""Shared by the retraining tests: a controllable clock, phantom studies stored as if sent by a
given calling AE, and verdicts/marks put on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom

from storage.db import Database
from storage.instances import InstanceMeta, InstanceStore, Origin
from storage.models import DONE, Mark, Study, Verdict


class Clock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, days: float = 0, seconds: float = 0) -> None:
        self.now += timedelta(days=days, seconds=seconds)


def store_folder(store: InstanceStore, folder: Path, calling_ae: str) -> int:
    """Store every .dcm under ``folder`` as sent by ``calling_ae``; returns the study id."""
    study_id = None
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = InstanceMeta(
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            modality=ds.Modality,
            instance_number=int(ds.InstanceNumber),
            patient_id=ds.PatientID,
        )
        outcome = store.store(path.read_bytes(), meta, Origin("dimse", calling_ae, "127.0.0.1"))
        study_id = outcome.study_id
    assert study_id is not None, f"no DICOM files under {folder}"
    return study_id


def give_verdict(
    db: Database, study_id: int, outcome: str, now: datetime, reason: str = ""
) -> None:
    """The study's current verdict (for its current version), as the worker would leave it."""
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        for old in study_verdicts(session, study_id):
            old.is_current = False
        session.add(
            Verdict(
                study_id=study_id,
                study_version=study.version,
                outcome=outcome,
                reason=reason or f"test verdict {outcome}",
                is_current=True,
                created_at=now,
            )
        )
        study.state = DONE


def study_verdicts(session: object, study_id: int) -> list[Verdict]:
    from sqlalchemy import select

    return list(session.scalars(select(Verdict).where(Verdict.study_id == study_id)))  # type: ignore[attr-defined]


def mark(
    db: Database, study_id: int, label: str, now: datetime, region_id: int | None = None
) -> None:
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        session.add(
            Mark(
                study_id=study_id,
                region_id=region_id,
                study_version=study.version,
                label=label,
                actor="admin",
                created_at=now,
            )
        )
