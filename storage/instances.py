"""Persisting received instances: bytes on disk first, then the index, then the answer.

``InstanceStore.store`` is the single ingest path for C-STORE and STOW-RS. It returns only
after the file is durable and the index row is committed, so the caller may acknowledge.
In ``serve`` the writes go through one group committer (``start_group_commit``), so the
concurrent associations share their folder fsyncs and their index transactions.
"""

from __future__ import annotations

import enum
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.append import AppendTarget, append_instance, append_target
from storage.audit import audit
from storage.committer import GroupCommitter, Pending
from storage.db import Database
from storage.files import content_hash, instance_relpath, write_atomically
from storage.models import (
    JOB_QUEUED,
    JOB_SUPERSEDED,
    RECEIVING,
    Instance,
    Job,
    Series,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceMeta:
    """What the index needs from a dataset; every UID here has been checked."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_number: int | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    # An original image a verdict is about. Reports, key objects and secondary captures
    # (our own SR echoed back by the PACS among them) never re-open a scored study.
    is_source_image: bool = True


@dataclass(frozen=True)
class Origin:
    """Who sent an instance and over which channel (``dimse`` or ``stow``)."""

    channel: str
    calling_ae: str | None = None
    peer_address: str | None = None
    association_id: int | None = None


class StoreResult(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing written
    REPLACED = "replaced"  # same SOP Instance UID, new bytes: newest kept, old file kept


@dataclass(frozen=True)
class StoreOutcome:
    result: StoreResult
    instance_id: int
    study_id: int


class OutOfSpace(RuntimeError):
    """The data disk is below the configured free-space watermark."""


class InstanceStore:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        min_free_mb: int = 0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.root = data_dir / "instances"
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.clock = clock
        self.committer: GroupCommitter | None = None

    def path_of(self, instance: Instance) -> Path:
        return self.root / instance.file_path

    def free_bytes(self) -> int:
        probe = self.root if self.root.exists() else self.root.parent
        probe.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(probe).free

    def start_group_commit(self) -> None:
        """From now on ``store`` commits through the group committer (shared batches)."""
        if self.committer is None:
            self.committer = GroupCommitter(self.db)
            self.committer.start()

    def stop_group_commit(self) -> None:
        """Finish the queued writes; ``store`` writes by itself again."""
        committer, self.committer = self.committer, None
        if committer is not None:
            committer.stop()

    def store(self, data: bytes, meta: InstanceMeta, origin: Origin) -> StoreOutcome:
        """Write ``data`` (a complete DICOM file) durably and index it; raises on failure."""
        sha = content_hash(data)
        target: AppendTarget | None = None
        with self.db.reading() as session:
            rows = Instance.__table__.c  # Core: no ORM layer on the hot path
            known = (
                session.connection()
                .execute(
                    select(rows.id, rows.study_id, rows.sha256, rows.file_path).where(
                        rows.sop_instance_uid == meta.sop_instance_uid
                    )
                )
                .one_or_none()
            )
            if known is None:
                target = append_target(session, meta)
        if known is not None and known.sha256 == sha and (self.root / known.file_path).exists():
            return StoreOutcome(StoreResult.DUPLICATE, known.id, known.study_id)
        free = self.free_bytes()
        if free - len(data) < self.min_free_bytes:
            raise OutOfSpace(
                f"{free // (1024 * 1024)} MiB free in {self.root}, "
                f"watermark {self.min_free_bytes // (1024 * 1024)} MiB"
            )
        relpath = instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid, sha)

        def forget() -> None:
            # Not indexed (a full or locked database): the answer will be a failure, so the
            # new file goes too. A file an index row already names (same bytes) stays.
            if known is None or known.sha256 != sha:
                (self.root / relpath).unlink(missing_ok=True)

        def index(session: Session) -> StoreOutcome:
            nonlocal target  # taken once: a retry (e.g. after a unique-key race) goes the full way
            append, target = target, None
            if append is not None:
                now = self.clock()
                new_id = append_instance(
                    session, append, meta, origin, relpath, sha, len(data), now
                )
                if new_id is not None:
                    return StoreOutcome(StoreResult.STORED, new_id, append.study_id)
            return self._index(session, meta, origin, relpath, sha, len(data))

        committer = self.committer
        if committer is not None and committer.running:
            outcome: StoreOutcome = committer.submit(
                Pending(self.root / relpath, data, index, forget)
            )
            return outcome
        write_atomically(self.root / relpath, data)
        try:
            for attempt in range(2):
                try:
                    with self.db.session() as session:
                        return index(session)
                except IntegrityError:
                    # Another association indexed the same UID at the same moment (non-SQLite
                    # backends); the second pass sees its row and resolves duplicate/replace.
                    if attempt:
                        raise
        except Exception:
            forget()
            raise
        raise AssertionError("unreachable")

    def _index(
        self,
        session: Session,
        meta: InstanceMeta,
        origin: Origin,
        relpath: Path,
        sha: str,
        size: int,
    ) -> StoreOutcome:
        now = self.clock()
        study = self._upsert_study(session, meta, now)
        series = self._upsert_series(session, meta, study)
        instance = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid)
        ).one_or_none()
        result = StoreResult.STORED
        if instance is None:
            instance = Instance(sop_instance_uid=meta.sop_instance_uid, replaced_count=0)
        elif instance.sha256 == sha:
            result = StoreResult.DUPLICATE
        else:
            result = StoreResult.REPLACED
            audit(
                session,
                actor=origin.calling_ae or origin.channel,
                action="instance.replaced",
                target=meta.sop_instance_uid,
                detail={
                    "old_sha256": instance.sha256,
                    "new_sha256": sha,
                    "old_file": instance.file_path,
                    "peer": origin.peer_address,
                },
            )
            if instance.study_id != study.id and meta.is_source_image:
                self._reopen(session, session.get(Study, instance.study_id), now)
            instance.replaced_count += 1
        if result is not StoreResult.DUPLICATE and (
            meta.is_source_image or study.state == RECEIVING
        ):
            self._reopen(session, study, now)
        instance.study_id = study.id
        instance.series_id = series.id
        instance.sop_class_uid = meta.sop_class_uid
        instance.transfer_syntax_uid = meta.transfer_syntax_uid
        instance.instance_number = meta.instance_number
        instance.file_path = relpath.as_posix()
        instance.size_bytes = size
        instance.sha256 = sha
        instance.calling_ae = origin.calling_ae
        instance.peer_address = origin.peer_address
        instance.association_id = origin.association_id
        instance.received_at = now
        session.add(instance)  # only now: it is complete, so an autoflush cannot see it half-set
        session.flush()
        if result is StoreResult.REPLACED:
            log.warning(
                "instance replaced with different bytes",
                extra={"sop": meta.sop_instance_uid, "study": meta.study_uid},
            )
        return StoreOutcome(result, instance.id, study.id)

    def _upsert_study(self, session: Session, meta: InstanceMeta, now: datetime) -> Study:
        study = session.scalars(
            select(Study).where(Study.study_uid == meta.study_uid)
        ).one_or_none()
        if study is None:
            study = Study(
                study_uid=meta.study_uid,
                state=RECEIVING,
                version=1,
                first_received_at=now,
                last_received_at=now,
            )
            session.add(study)
        for field, value in (
            ("patient_id", meta.patient_id),
            ("patient_name", meta.patient_name),
            ("study_date", meta.study_date),
            ("accession_number", meta.accession_number),
            ("description", meta.study_description),
        ):
            if value and not getattr(study, field):
                setattr(study, field, value)
        session.flush()
        return study

    def _upsert_series(self, session: Session, meta: InstanceMeta, study: Study) -> Series:
        series = session.scalars(
            select(Series).where(Series.series_uid == meta.series_uid)
        ).one_or_none()
        if series is None:
            series = Series(
                series_uid=meta.series_uid,
                study_id=study.id,
                modality=meta.modality,
                series_number=meta.series_number,
                description=meta.series_description,
            )
            session.add(series)
            session.flush()
        return series

    @staticmethod
    def _reopen(session: Session, study: Study | None, now: datetime) -> None:
        """New content: the study is receiving again; a queued older version is superseded."""
        if study is None:
            return
        if study.state != RECEIVING:
            study.version += 1
            study.state = RECEIVING
            session.execute(
                update(Job)
                .where(Job.study_id == study.id, Job.state == JOB_QUEUED)
                .values(state=JOB_SUPERSEDED, finished_at=now)
            )
        study.last_received_at = now
        study.released_at = None


def record_rejection(db: Database, origin: Origin, reason: str, sop_uid: str | None) -> None:
    """Count and audit an instance we refused, so security staff can see malformed traffic."""
    with db.session() as session:
        audit(
            session,
            actor=origin.calling_ae or origin.channel,
            action="instance.rejected",
            target=sop_uid,
            detail={"reason": reason, "peer": origin.peer_address, "channel": origin.channel},
        )
