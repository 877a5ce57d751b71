"""The job and delivery queues under contention: only the lease holder records a verdict,
concurrent claims never share a job, a locked row is skipped (PostgreSQL), and a delivery is
sent by one dispatcher at a time. Each test runs on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from detector.settings import DetectorSettings, WorkerSettings
from detector.study_scoring import StudyResult, StudyScorer
from detector.worker import ScoringWorker
from storage.assembly import StudyAssembler
from storage.db import Database
from storage.deliveries import claim_due_deliveries, enqueue_missing
from storage.instances import InstanceStore
from storage.jobs import LeaseLost, claim_job, fail_job, finish_job, renew_lease
from storage.models import Job, JobState, Study, StudyState, Verdict
from storage.settings import AssemblySettings
from tests.test_storage import ORIGIN, Clock, meta


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def queue_studies(db: Database, tmp_path: Path, clock: Clock, count: int) -> None:
    """``count`` one-instance studies through the real ingest path, settled into jobs."""
    store = InstanceStore(db, tmp_path / "data", clock=clock)
    for n in range(1, count + 1):
        store.store(f"bytes {n}".encode(), meta(f"1.2.3.{n}.1", f"1.2.{n}", f"1.2.3.{n}"), ORIGIN)
    clock.advance(11)
    StudyAssembler(db, AssemblySettings(stable_age_s=10, released_age_s=5), clock).tick()


def test_a_worker_whose_lease_was_taken_over_cannot_record_its_verdict(
    db: Database, tmp_path: Path
) -> None:
    clock = Clock()
    queue_studies(db, tmp_path, clock, 1)
    with db.session() as session:
        stalled = claim_job(session, "host:1:a", 60, clock())
    clock.advance(61)  # worker a stalled past its lease; b takes the job over
    with db.session() as session:
        taker = claim_job(session, "host:2:b", 60, clock())
    assert stalled is not None and taker is not None and taker.id == stalled.id
    with db.session() as session:
        assert not renew_lease(session, stalled.id, stalled.owner, 60, clock())
    with pytest.raises(LeaseLost), db.session() as session:
        finish_job(session, stalled, "tampered", "late result", clock())
    with pytest.raises(LeaseLost), db.session() as session:
        fail_job(session, stalled, "late error", clock(), max_attempts=1)
    with db.reading() as session:
        assert session.scalar(select(func.count(Verdict.id))) == 0
        assert session.get(Job, taker.id).state == JobState.RUNNING
    with db.session() as session:
        finish_job(session, taker, "clean", None, clock())
    with db.reading() as session:
        [verdict] = session.scalars(select(Verdict)).all()
        assert (verdict.outcome, verdict.is_current, verdict.job_id) == ("clean", True, taker.id)
        assert session.get(Study, 1).state == StudyState.DONE
        assert session.get(Job, taker.id).attempts == 2


class _TakenOverWhileScoring(StudyScorer):
    """Real scoring, but the job is taken over by another worker while this one scores."""

    other: ScoringWorker
    clock: Clock

    def score(self, study_id: int, study_version: int) -> StudyResult:
        result = super().score(study_id, study_version)
        self.clock.advance(61)  # this worker stalls past its lease ...
        assert self.other.run_once()  # ... and the other claims, scores and records
        return result


def test_worker_drops_its_result_when_its_lease_was_taken_over(
    db: Database, tmp_path: Path
) -> None:
    clock = Clock()
    queue_studies(db, tmp_path, clock, 1)
    settings = WorkerSettings(lease_s=60, poll_interval_s=0.1)
    scorer = _TakenOverWhileScoring(db, tmp_path / "data", DetectorSettings())
    scorer.clock = clock
    taker = ScoringWorker(
        db,
        StudyScorer(db, tmp_path / "data", DetectorSettings()),
        settings,
        name="taker",
        clock=clock,
    )
    scorer.other = taker
    stalled = ScoringWorker(db, scorer, settings, name="stalled", clock=clock)
    assert stalled.run_once()
    with db.reading() as session:
        verdicts = session.scalars(select(Verdict)).all()
        job = session.scalars(select(Job)).one()
    assert len(verdicts) == 1 and verdicts[0].job_id == job.id
    assert (job.state, job.attempts) == (JobState.DONE, 2)
    # No detector for these non-image bytes: an honest not_scored, recorded once.
    assert verdicts[0].outcome == "not_scored" and "CT" in (verdicts[0].reason or "")


def test_concurrent_claims_never_share_a_job(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    queue_studies(db, tmp_path, clock, 24)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while True:
            with db.session() as session:
                job = claim_job(session, f"host:1:{name}", 600, clock())
                if job is None:
                    return
                finish_job(session, job, "clean", None, clock())
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(claimed) == list(range(1, 25))
    with db.reading() as session:
        per_study = Counter(session.scalars(select(Verdict.study_id)).all())
    assert len(per_study) == 24 and set(per_study.values()) == {1}


def test_a_claim_passes_over_a_job_another_worker_is_taking(
    postgres_server: object, tmp_path: Path
) -> None:
    """PostgreSQL: FOR UPDATE SKIP LOCKED, so a claim never waits on another claim."""
    db = Database(postgres_server.new_database())  # type: ignore[attr-defined]
    try:
        clock = Clock()
        queue_studies(db, tmp_path, clock, 2)
        with db.session() as first:
            a = claim_job(first, "host:1:a", 60, clock())  # not committed: rows stay locked
            with db.session() as second:
                b = claim_job(second, "host:1:b", 60, clock())
            assert a is not None and b is not None and (a.id, b.id) == (1, 2)
    finally:
        db.dispose()


def test_a_due_delivery_is_claimed_by_one_dispatcher_until_its_lease_ends(
    db: Database, tmp_path: Path
) -> None:
    clock = Clock()
    queue_studies(db, tmp_path, clock, 1)
    with db.session() as session:
        job = claim_job(session, "host:1:a", 60, clock())
        assert job is not None
        finish_job(session, job, "clean", None, clock())
    with db.session() as session:
        assert enqueue_missing(session, ["pacs"], clock()) == 1
        assert enqueue_missing(session, ["pacs"], clock()) == 0
    with db.session() as session:
        [first] = claim_due_deliveries(session, ["pacs"], clock(), lease_s=30)
    with db.session() as session:
        assert claim_due_deliveries(session, ["pacs"], clock(), lease_s=30) == []
    clock.advance(31)  # the first dispatcher died mid-send: another may send it now
    with db.session() as session:
        [again] = claim_due_deliveries(session, ["pacs"], clock(), lease_s=30)
    assert again.id == first.id
