"""The genuine pool: which stored instances retraining may learn from.

Poisoning is the threat: an attacker who gets tampered scans into the pool teaches the detector
to accept them. So an instance enters only if ALL of these hold:

- its source is trusted: it came from a configured calling AE (the modalities themselves), or
  an admin confirmed its study genuine (newest study-level mark ``genuine``, for the study's
  current version);
- its study's current verdict, for the study's current version, is ``clean`` (``not_scored``
  (reason "no model for ...") is accepted only while no production model exists for the
  modality, with ``bootstrap``:
  that is how a fresh installation gets its first model; a trusted source is still required);
- its study has no other mark: a ``tampered`` mark anywhere in the study, or any mark on one of
  its regions, excludes the whole study;
- it was never replaced by different bytes under the same SOP Instance UID;
- its study has been quiet for the quarantine period, so a fake that a later scan, a later
  verdict or an admin would catch has time to be caught;
- it is a distinct file (sha256 de-duplicated), and at most ``max_per_patient`` instances of a
  patient are taken (spread evenly through the series) so one patient cannot dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import (
    CLEAN,
    DONE,
    MARK_GENUINE,
    NOT_SCORED,
    Instance,
    Mark,
    Series,
    Study,
    Verdict,
)

NO_MODEL_REASON = "no model for"  # the not_scored reason StudyScorer gives without a model


@dataclass(frozen=True)
class PoolInstance:
    """One admitted instance: enough to find the file and to audit the choice."""

    instance_id: int
    sha256: str
    file_path: str  # relative to <data_dir>/instances
    patient: str
    study_uid: str
    series_uid: str
    instance_number: int | None


def _admin_confirmed(marks: Sequence[Mark], version: int) -> bool | None:
    """True: newest study mark is genuine for this version; None: any exclusion applies."""
    if any(m.region_id is not None or m.label != MARK_GENUINE for m in marks):
        return None
    study_marks = sorted(marks, key=lambda m: (m.created_at, m.id))
    return bool(study_marks) and study_marks[-1].study_version == version


def select_pool(
    session: Session,
    *,
    modality: str,
    now: datetime,
    trusted_calling_aets: Sequence[str],
    quarantine_days: float,
    max_per_patient: int,
    bootstrap: bool = False,
) -> list[PoolInstance]:
    """The admitted instances of ``modality``, deterministic order (patient, series, number)."""
    cutoff = now - timedelta(days=quarantine_days)
    outcomes = [CLEAN, NOT_SCORED] if bootstrap else [CLEAN]
    studies = session.execute(
        select(Study, Verdict.outcome, Verdict.reason)
        .join(Verdict, (Verdict.study_id == Study.id) & Verdict.is_current.is_(True))
        .where(
            Study.state == DONE,
            Verdict.study_version == Study.version,
            Verdict.outcome.in_(outcomes),
            Study.last_received_at <= cutoff,
        )
    ).all()
    if not studies:
        return []
    ids = [row[0].id for row in studies]
    marks: dict[int, list[Mark]] = {}
    for mark in session.scalars(select(Mark).where(Mark.study_id.in_(ids))):
        marks.setdefault(mark.study_id, []).append(mark)
    trusted = {ae.strip() for ae in trusted_calling_aets}
    by_patient: dict[str, list[PoolInstance]] = {}
    seen: set[str] = set()
    for study, outcome, reason in sorted(studies, key=lambda row: row[0].id):
        confirmed = _admin_confirmed(marks.get(study.id, []), study.version)
        if confirmed is None:
            continue
        if outcome == NOT_SCORED and not (reason or "").startswith(NO_MODEL_REASON):
            continue  # failed scoring is no evidence of anything
        rows = session.execute(
            select(Instance, Series.series_uid)
            .join(Series, Series.id == Instance.series_id)
            .where(
                Instance.study_id == study.id,
                Series.modality == modality,
                Instance.replaced_count == 0,
                Instance.received_at <= cutoff,
            )
            .order_by(Series.series_uid, Instance.instance_number, Instance.id)
        ).all()
        patient = study.patient_id or study.study_uid
        for instance, series_uid in rows:
            if not confirmed and (instance.calling_ae or "").strip() not in trusted:
                continue
            if instance.sha256 in seen:
                continue
            seen.add(instance.sha256)
            by_patient.setdefault(patient, []).append(
                PoolInstance(
                    instance.id,
                    instance.sha256,
                    instance.file_path,
                    patient,
                    study.study_uid,
                    series_uid,
                    instance.instance_number,
                )
            )
    pool: list[PoolInstance] = []
    for patient in sorted(by_patient):
        items = by_patient[patient]
        if len(items) > max_per_patient:  # evenly spaced: the whole body, not its top slices
            step = len(items) / max_per_patient
            items = [items[int(i * step)] for i in range(max_per_patient)]
        pool.extend(items)
    return pool
