"""The database schema: what arrived, from whom, what was decided, and what was done.

Portable SQLAlchemy 2 types only (no SQLite-only SQL), so PostgreSQL works unchanged.
Times are stored as naive UTC and handed back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.states import DeliveryState, EnumText, JobState, StudyState, VerdictOutcome


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# The state enums live in storage/states.py; these short names are what the rest of the code
# (and older imports) use for their members.
RECEIVING, QUEUED, SCORING, DONE, FAILED = StudyState
STUDY_STATES = tuple(StudyState)
JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_SUPERSEDED = JobState
TAMPERED, SUSPICIOUS, CLEAN, NOT_SCORED = VerdictOutcome
VERDICT_OUTCOMES = tuple(VerdictOutcome)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StudyState] = mapped_column(
        EnumText(StudyState), default=StudyState.RECEIVING, index=True
    )
    # Bumped when an instance arrives after the study was queued: each version is scored once.
    version: Mapped[int] = mapped_column(Integer, default=1)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Set when every association that sent to this study was released normally.
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Association(Base):
    """One DICOM association (or rejected attempt): who, from where, how it ended."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # open | released | aborted | rejected
    outcome: Mapped[str] = mapped_column(String(16), default="open")
    reject_reason: Mapped[str | None] = mapped_column(String(128))
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    instances_failed: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # Relative to <data_dir>/instances; never built from an unchecked UID.
    file_path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # How often this SOP Instance UID came back with different bytes.
    replaced_count: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """A durable queue entry: exactly one per (kind, study, study version)."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("kind", "study_id", "study_version", name="uq_job_study_version"),
        Index("ix_job_state_created", "state", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(EnumText(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class Verdict(Base):
    """Every verdict ever reached is kept; ``is_current`` marks the one per study that counts."""

    __tablename__ = "verdict"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    outcome: Mapped[VerdictOutcome] = mapped_column(EnumText(VerdictOutcome))
    reason: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    is_current: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The report's UIDs are fixed once, so every (re)delivery sends the same SR.
    sr_series_uid: Mapped[str | None] = mapped_column(String(64))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))

    regions: Mapped[list[Region]] = relationship(back_populates="verdict")


# Where a region to check came from.
REGION_SOURCES = ("proposal", "hotspot", "repeat", "window", "csv", "admin")


class Region(Base):
    """One checked location of one verdict: recorded whether flagged or not."""

    __tablename__ = "region"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdict.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    x: Mapped[int] = mapped_column(Integer)  # column
    y: Mapped[int] = mapped_column(Integer)  # row
    radius_px: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    # {detector name: {"raw": score, "p": calibrated tail probability, "model": version}}
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    p_value: Mapped[float | None] = mapped_column(Float)  # fused over detectors
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    heatmap_path: Mapped[str | None] = mapped_column(String(512))  # relative to data_dir
    # Where the slice sits in its series (0 = first along the slice normal), its position
    # along that normal and its Instance Number: what a reader needs to find the slice.
    slice_index: Mapped[int | None] = mapped_column(Integer)
    z_mm: Mapped[float | None] = mapped_column(Float)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # Flagged regions of one 3-D lesion share a finding number (1, 2, ... per verdict);
    # see storage/findings.py. None for regions that were not flagged.
    finding: Mapped[int | None] = mapped_column(Integer)

    verdict: Mapped[Verdict] = relationship(back_populates="regions")


DELIVERY_PENDING, DELIVERY_DONE, DELIVERY_FAILED = DeliveryState


class Delivery(Base):
    """A report on its way to one configured destination; retried, never dropped."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("verdict_id", "destination", name="uq_delivery_verdict_destination"),
        Index("ix_delivery_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdict.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(
        EnumText(DeliveryState), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# --- the admin web report (migration 0003) ------------------------------------------------

# Roles: a viewer sees everything; an admin may also act (re-score, re-send, mark, add regions).
ROLE_VIEWER, ROLE_ADMIN = "viewer", "admin"
ROLES = (ROLE_VIEWER, ROLE_ADMIN)

# A person's judgement of a study or region; the newest mark counts and feeds retraining.
MARK_GENUINE, MARK_TAMPERED = "genuine", "tampered"
MARK_LABELS = (MARK_GENUINE, MARK_TAMPERED)


class User(Base):
    """Someone who may log in to the admin web report; passwords are argon2 hashes."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Mark(Base):
    """A confirmed-genuine / confirmed-tampered label on a study (region_id empty) or region."""

    __tablename__ = "mark"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    region_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RequestedRegion(Base):
    """A location an admin asked to be checked; every later scoring of its series checks it."""

    __tablename__ = "requested_region"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    x: Mapped[int] = mapped_column(Integer)  # column
    y: Mapped[int] = mapped_column(Integer)  # row
    radius_px: Mapped[float] = mapped_column(Float)
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# Indexes the admin studies list filters on (existing columns; added by migration 0003).
Index("ix_instance_calling_ae", Instance.calling_ae)
Index("ix_series_modality", Series.modality)
Index("ix_study_patient_id", Study.patient_id)
Index("ix_verdict_outcome", Verdict.outcome)
# Filtered lists and their counts as index-only lookups (migration 0006): current verdicts by
# outcome, and series by modality with their study.
Index(
    "ix_verdict_current_outcome",
    Verdict.outcome,
    Verdict.study_id,
    postgresql_where=Verdict.is_current,
    sqlite_where=Verdict.is_current,
)
Index("ix_series_modality_study", Series.modality, Series.study_id)

# PostgreSQL only (migration 0006, when the pg_trgm extension can be created): trigram indexes
# for the studies list's patient search (ID prefix LIKE, name ILIKE '%...%'). Not in the
# metadata, since SQLite has no equivalent; schema comparisons skip them (``include_object``).
POSTGRESQL_ONLY_INDEXES = ("ix_study_patient_id_trgm", "ix_study_patient_name_trgm")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare: Any) -> bool:
    """Alembic's filter: leave the PostgreSQL-only indexes out of model/schema comparisons."""
    return not (type_ == "index" and name in POSTGRESQL_ONLY_INDEXES)


# --- scheduled retraining: the model registry and training runs (migration 0004) ----------

# Model version states. A candidate is being judged; production scores studies (one per
# detector and modality); retired was production once; rejected failed the promotion gate.
MODEL_CANDIDATE, MODEL_PRODUCTION, MODEL_RETIRED, MODEL_REJECTED = (
    "candidate",
    "production",
    "retired",
    "rejected",
)
MODEL_STATES = (MODEL_CANDIDATE, MODEL_PRODUCTION, MODEL_RETIRED, MODEL_REJECTED)

# Training run states and what started them.
RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED = "running", "succeeded", "failed"
RUN_TRIGGERS = ("schedule", "cli", "admin")


class TrainingRun(Base):
    """One retraining run: who started it, the data it used, how it ended.

    ``owner`` (host:pid) and ``lease_expires_at`` let the next start tell a run whose process
    died from one still going, exactly like scoring jobs.
    """

    __tablename__ = "training_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # {"max_steps": .., "max_minutes": .., "device": ..}
    budget: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Per modality: the instance sha256s trained on and held out for the gate (audit, replay).
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Per modality/detector: produced version id and decision, or why it was skipped.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    """A trained checkpoint and everything needed to judge, serve or reproduce it."""

    __tablename__ = "model_version"
    __table_args__ = (Index("ix_model_version_slot", "detector", "modality", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    detector: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    # Relative to <data_dir>/models.
    checkpoint_path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_run.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # {"train": [instance sha256...], "gate": [...], "patients": n}
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RetrainLock(Base):
    """One row per lock name; a run holds it by a conditional UPDATE (never two at once)."""

    __tablename__ = "retrain_lock"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_run.id"))
    owner: Mapped[str | None] = mapped_column(String(64))
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
