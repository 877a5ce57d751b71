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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

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


@dataclass
class PoolReport:
    """Why instances did not enter the pool, counted per filter (for the operator)."""

    studies: int = 0  # scored studies (current verdict of the current version)
    not_clean: dict[str, int] = field(default_factory=dict)  # by verdict outcome
    in_quarantine: int = 0
    marked: int = 0
    failed_scoring: int = 0
    no_instances_of_modality: int = 0
    untrusted: int = 0
    replaced: int = 0
    duplicates: int = 0
    admitted: int = 0

    def reasons(self, modality: str, quarantine_days: float) -> list[str]:
        """One line per filter that removed something, naming the config key that moves it."""
        out = []
        if self.studies == 0:
            out.append(
                f"no scored {modality} study yet: studies enter once received, settled and given "
                "a verdict by a running 'tamperscan serve'"
            )
        for outcome, count in sorted(self.not_clean.items()):
            out.append(
                f"{count} studies have verdict {outcome!r}; only clean ones train (not_scored "
                "'no model for ...' counts only while the modality has no production model)"
            )
        if self.in_quarantine:
            out.append(
                f"{self.in_quarantine} studies are younger than [retrain] quarantine_days = "
                f"{quarantine_days:g} (lower it, or use 'tamperscan retrain --bootstrap' for "
                "the first models)"
            )
        if self.marked:
            out.append(f"{self.marked} studies carry an admin mark other than 'genuine'")
        if self.failed_scoring:
            out.append(f"{self.failed_scoring} studies are not_scored because scoring failed")
        if self.no_instances_of_modality:
            out.append(f"{self.no_instances_of_modality} studies have no {modality} instances")
        if self.untrusted:
            out.append(
                f"{self.untrusted} instances came from calling AEs not in [retrain] "
                "trusted_calling_aets (add the modality's AE title, or mark the study genuine)"
            )
        if self.replaced:
            out.append(f"{self.replaced} instances were replaced by other bytes (never trained)")
        if self.duplicates:
            out.append(f"{self.duplicates} instances are byte-identical duplicates")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_pool(session: Session, **criteria: Any) -> list[PoolInstance]:
    """The admitted instances, deterministic order (patient, series, number); the criteria are
    those of :func:`select_pool_with_report`."""
    return select_pool_with_report(session, **criteria)[0]


def select_pool_with_report(
    session: Session,
    *,
    modality: str,
    now: datetime,
    trusted_calling_aets: Sequence[str],
    quarantine_days: float,
    max_per_patient: int,
    bootstrap: bool = False,
) -> tuple[list[PoolInstance], PoolReport]:
    """The admitted instances of ``modality`` and the count of what each filter removed."""
    report = PoolReport()
    cutoff = now - timedelta(days=quarantine_days)
    outcomes = [CLEAN, NOT_SCORED] if bootstrap else [CLEAN]
    studies = session.execute(
        select(Study, Verdict.outcome, Verdict.reason)
        .join(Verdict, (Verdict.study_id == Study.id) & Verdict.is_current.is_(True))
        .where(Study.state == DONE, Verdict.study_version == Study.version)
    ).all()
    report.studies = len(studies)
    admitted = []
    for study, outcome, reason in studies:
        if outcome not in outcomes:
            report.not_clean[outcome] = report.not_clean.get(outcome, 0) + 1
        elif outcome == NOT_SCORED and not (reason or "").startswith(NO_MODEL_REASON):
            report.failed_scoring += 1  # failed scoring is no evidence of anything
        elif study.last_received_at > cutoff:
            report.in_quarantine += 1
        else:
            admitted.append(study)
    if not admitted:
        return [], report
    ids = [study.id for study in admitted]
    marks: dict[int, list[Mark]] = {}
    for mark in session.scalars(select(Mark).where(Mark.study_id.in_(ids))):
        marks.setdefault(mark.study_id, []).append(mark)
    trusted = {ae.strip() for ae in trusted_calling_aets}
    by_patient: dict[str, list[PoolInstance]] = {}
    seen: set[str] = set()
    for study in sorted(admitted, key=lambda s: s.id):
        confirmed = _admin_confirmed(marks.get(study.id, []), study.version)
        if confirmed is None:
            report.marked += 1
            continue
        rows = session.execute(
            select(Instance, Series.series_uid)
            .join(Series, Series.id == Instance.series_id)
            .where(
                Instance.study_id == study.id,
                Series.modality == modality,
                Instance.received_at <= cutoff,
            )
            .order_by(Series.series_uid, Instance.instance_number, Instance.id)
        ).all()
        if not rows:
            report.no_instances_of_modality += 1
        patient = study.patient_id or study.study_uid
        for instance, series_uid in rows:
            if instance.replaced_count:
                report.replaced += 1
                continue
            if not confirmed and (instance.calling_ae or "").strip() not in trusted:
                report.untrusted += 1
                continue
            if instance.sha256 in seen:
                report.duplicates += 1
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
    report.admitted = len(pool)
    return pool, report
