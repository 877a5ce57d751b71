"""The scoring worker: takes jobs off the durable queue, scores, records the verdict.

A job is leased, and the lease is renewed while scoring runs; if this process dies the lease
expires (or the next start on this host releases it) and the job runs again. A worker whose
lease was taken over (it stalled past ``lease_s`` and another worker claimed the job) drops
its result: only the lease holder records a verdict (``storage.jobs.LeaseLost``). A job that
keeps failing is given up after ``max_attempts`` with a ``not_scored`` verdict naming the error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from detector.settings import WorkerSettings
from detector.study_scoring import StudyScorer
from storage.db import Database
from storage.jobs import (
    ClaimedJob,
    LeaseLost,
    claim_job,
    fail_job,
    finish_job,
    renew_lease,
    worker_identity,
)
from storage.models import utcnow
from storage.polling import poll

log = logging.getLogger(__name__)


class ScoringWorker:
    def __init__(
        self,
        db: Database,
        scorer: StudyScorer,
        settings: WorkerSettings,
        name: str = "worker-1",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.scorer = scorer
        self.settings = settings
        self.owner = worker_identity(name)
        self.clock = clock

    def run_once(self) -> bool:
        """Run one job if there is one; False when the queue was empty."""
        with self.db.session() as session:
            job = claim_job(session, self.owner, self.settings.lease_s, self.clock())
        if job is None:
            return False
        log.info(
            "job started",
            extra={
                "job": job.id,
                "study_id": job.study_id,
                "version": job.study_version,
                "attempt": job.attempts,
            },
        )
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job, stop_heartbeat), daemon=True, name="lease"
        )
        heartbeat.start()
        try:
            result = self.scorer.score(job.study_id, job.study_version)
        except Exception as exc:
            log.exception("job failed", extra={"job": job.id})
            self._record_failure(job, f"{type(exc).__name__}: {exc}")
            return True
        finally:
            stop_heartbeat.set()
            heartbeat.join()
        try:
            with self.db.session() as session:
                verdict = finish_job(
                    session,
                    job,
                    result.outcome,
                    result.reason,
                    self.clock(),
                    result.score,
                    result.details,
                    result.regions,
                )
        except LeaseLost:
            log.warning(
                "lease taken over; result dropped",
                extra={"job": job.id, "study_id": job.study_id, "outcome": result.outcome},
            )
            return True
        log.info(
            "verdict recorded",
            extra={
                "job": job.id,
                "study_id": job.study_id,
                "outcome": result.outcome,
                "reason": result.reason,
                "current": verdict.is_current,
            },
        )
        return True

    def _record_failure(self, job: ClaimedJob, error: str) -> None:
        try:
            with self.db.session() as session:
                gave_up = fail_job(session, job, error, self.clock(), self.settings.max_attempts)
        except LeaseLost:
            log.warning("lease taken over; failure dropped", extra={"job": job.id})
            return
        log.warning("job given up" if gave_up else "job will be retried", extra={"job": job.id})

    def _heartbeat(self, job: ClaimedJob, stop: threading.Event) -> None:
        while not stop.wait(self.settings.lease_s / 3):
            try:
                with self.db.session() as session:
                    held = renew_lease(
                        session, job.id, self.owner, self.settings.lease_s, self.clock()
                    )
            except Exception:  # the database is briefly away: try again, the lease may hold
                log.exception("lease renewal failed", extra={"job": job.id})
                continue
            if not held:
                log.warning("lost the lease of a running job", extra={"job": job.id})
                return

    def run(self, stop: threading.Event) -> None:
        poll(self.run_once, stop, self.settings.poll_interval_s, log, "scoring")
