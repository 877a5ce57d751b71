"""Storage: schema and migrations, crash-safe files, study assembly, the job queue, verdicts.

These run against real SQLite files and a real PostgreSQL server (each test once per backend,
see ``database_url`` in conftest.py) with a controllable clock, so time-based rules are tested
without sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect

from storage.assembly import StudyAssembler
from storage.db import Database
from storage.files import InvalidUID, check_uid, instance_relpath, remove_partial_files
from storage.instances import InstanceMeta, InstanceStore, Origin, StoreResult
from storage.jobs import (
    claim_job,
    fail_job,
    finish_job,
    release_dead_leases,
)
from storage.models import (
    DONE,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUPERSEDED,
    POSTGRESQL_ONLY_INDEXES,
    QUEUED,
    RECEIVING,
    Base,
    Job,
    Study,
    Verdict,
    include_object,
)
from storage.settings import AssemblySettings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, tmp_path: Path, clock: Clock) -> InstanceStore:
    return InstanceStore(db, tmp_path / "data", clock=clock)


def meta(sop: str, study: str = "1.2.3", series: str = "1.2.3.4") -> InstanceMeta:
    return InstanceMeta(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_uid=study,
        series_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
    )


ORIGIN = Origin(channel="dimse", calling_ae="PACS", peer_address="127.0.0.1")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_the_models_and_are_idempotent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database(migrated=False)
    db = Database(url)
    try:
        db.migrate()  # from an empty database
        db.migrate()  # and again: a no-op
        with db.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"include_object": include_object}
            )
            assert compare_metadata(context, Base.metadata) == []
            if backend == "postgresql":  # the search indexes only PostgreSQL gets
                names = {i["name"] for i in sa_inspect(connection).get_indexes("study")}
                assert set(POSTGRESQL_ONLY_INDEXES) <= names
            if backend == "sqlite":
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "bad",
    ["", "../etc", "1.2.a", "1..2", "1.02", "/1.2", "1." + "2" * 70]
    + ["1.2.3\n", "1.2.3\n\x00\n", "1.2.3\n\x00", "1.2\x003", " 1.2.3", "1.2.3\t", "\n1.2"],
)
def test_uids_that_could_escape_or_are_invalid_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(bad, "Study Instance UID")


def test_uid_padding_is_the_only_thing_removed() -> None:
    assert check_uid("1.2.3\x00", "SOP Instance UID") == "1.2.3"
    assert check_uid("1.2.3 ", "SOP Instance UID") == "1.2.3"


def test_instance_path_is_built_from_checked_uids_only() -> None:
    path = instance_relpath("1.2", "1.2.3", "1.2.3.4", "ab" * 32)
    assert path == Path("1.2/1.2.3/1.2.3.4.abababababababab.dcm")
    with pytest.raises(InvalidUID):
        instance_relpath("1.2", "..", "1.2.3.4", "ab" * 32)


def test_partial_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    leftover = tmp_path / "a" / ".x.dcm.123abc.partial"
    leftover.write_bytes(b"half")
    kept = tmp_path / "a" / "x.dcm"
    kept.write_bytes(b"whole")
    assert remove_partial_files(tmp_path) == 1
    assert not leftover.exists() and kept.exists()


def test_store_is_durable_and_idempotent(store: InstanceStore, db: Database) -> None:
    first = store.store(b"DICOM-BYTES-1", meta("1.2.3.4.5"), ORIGIN)
    again = store.store(b"DICOM-BYTES-1", meta("1.2.3.4.5"), ORIGIN)
    assert first.result is StoreResult.STORED and again.result is StoreResult.DUPLICATE
    assert first.instance_id == again.instance_id
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == b"DICOM-BYTES-1"
    assert not any(p.name.endswith(".partial") for p in store.root.rglob("*"))


def test_assembly_queues_one_job_after_quiet(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=60, released_age_s=5), clock)
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(30)
    store.store(b"b", meta("1.2.3.4.2"), ORIGIN)  # second association, within stable_age
    clock.advance(59)
    assert assembler.tick() == []
    clock.advance(2)
    assert assembler.tick() == [(1, 1)]
    assert assembler.tick() == []
    with db.session() as session:
        assert session.scalar(select(func.count(Job.id))) == 1
        assert session.get(Study, 1).state == QUEUED


def test_released_association_settles_sooner(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    from storage.jobs import mark_released

    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=60, released_age_s=5), clock)
    outcome = store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    with db.session() as session:
        mark_released(session, [outcome.study_id], clock())
    clock.advance(4)
    assert assembler.tick() == []
    clock.advance(2)
    assert assembler.tick() == [(1, 1)]


def test_late_instance_reopens_supersedes_queued_job_and_versions(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock)
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(11)
    assembler.tick()
    store.store(b"b", meta("1.2.3.4.2"), ORIGIN)  # arrives before the job ran
    with db.session() as session:
        study = session.get(Study, 1)
        assert (study.state, study.version) == (RECEIVING, 2)
        assert session.scalars(select(Job.state)).all() == [JOB_SUPERSEDED]
    clock.advance(11)
    assert assembler.tick() == [(1, 2)]


def test_newer_verdict_supersedes_and_older_never_takes_over(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock)
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(11)
    assembler.tick()
    with db.session() as session:
        v1 = claim_job(session, "host:1:w", 60, clock())
    store.store(b"b", meta("1.2.3.4.2"), ORIGIN)  # late instance while v1 is being scored
    clock.advance(11)
    assembler.tick()
    with db.session() as session:
        v2 = claim_job(session, "host:1:w", 60, clock())
        assert v1 is not None and v2 is not None and (v1.study_version, v2.study_version) == (1, 2)
        finish_job(session, v2, "clean", None, clock())
        finish_job(session, v1, "tampered", None, clock())  # older version finishes last
    with db.session() as session:
        verdicts = session.scalars(select(Verdict).order_by(Verdict.id)).all()
        assert [(v.study_version, v.is_current) for v in verdicts] == [(2, True), (1, False)]
        assert session.get(Study, 1).state == DONE


def test_expired_lease_is_claimed_again_and_poison_job_gives_up(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock)
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(11)
    assembler.tick()
    with db.session() as session:
        first = claim_job(session, "host:1:a", 60, clock())
        assert claim_job(session, "host:1:b", 60, clock()) is None  # leased
    clock.advance(61)
    with db.session() as session:
        second = claim_job(session, "host:1:b", 60, clock())
        assert first is not None and second is not None and second.attempts == 2
        assert fail_job(session, second, "boom", clock(), max_attempts=3) is False
        third = claim_job(session, "host:1:b", 60, clock())
        assert third is not None and fail_job(session, third, "boom", clock(), 3) is True
    with db.session() as session:
        verdict = session.scalars(select(Verdict)).one()
        assert verdict.outcome == "not_scored" and "boom" in (verdict.reason or "")


def test_leases_of_a_dead_process_on_this_host_are_released(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    import socket

    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock)
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(11)
    assembler.tick()
    dead_pid = 2**22 + 12345  # above pid_max on Linux by default: no such process
    with db.session() as session:
        claim_job(session, f"{socket.gethostname()}:{dead_pid}:worker-1", 600, clock())
    with db.session() as session:
        assert release_dead_leases(session, clock()) == 1
        job = session.scalars(select(Job)).one()
        assert job.state == JOB_QUEUED
        claim_job(session, f"{socket.gethostname()}:{os.getpid()}:worker-1", 600, clock())
    with db.session() as session:
        assert release_dead_leases(session, clock()) == 0  # our own, alive
        assert session.scalars(select(Job)).one().state == JOB_RUNNING


def test_report_arriving_after_scoring_does_not_reopen_the_study(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    from dataclasses import replace

    assembler = StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock)
    store.store(b"image", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(11)
    assembler.tick()
    # Our own SR comes back from the PACS: stored and indexed, but no new version to score.
    report = replace(meta("1.2.3.9.9", series="1.2.3.9"), is_source_image=False)
    assert store.store(b"sr", report, ORIGIN).result is StoreResult.STORED
    with db.session() as session:
        study = session.get(Study, 1)
        assert (study.state, study.version) == (QUEUED, 1)
    store.store(b"late image", meta("1.2.3.4.2"), ORIGIN)  # a real late image still does
    with db.session() as session:
        assert session.get(Study, 1).version == 2
