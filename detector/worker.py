"""The scoring worker: takes jobs off the durable queue, scores, records the verdict.

A job is leased, and the lease is renewed while scoring runs; if this process dies the lease
expires (or the next start on this host releases it) and the job runs again. A job that
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
from storage.jobs import ClaimedJob, claim_job, fail_job, finish_job, renew_lease, worker_identity
from storage.models import utcnow

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
            with self.db.session() as session:
                gave_up = fail_job(
                    session,
                    job,
                    f"{type(exc).__name__}: {exc}",
                    self.clock(),
                    self.settings.max_attempts,
                )
            log.warning("job given up" if gave_up else "job will be retried", extra={"job": job.id})
            return True
        finally:
            stop_heartbeat.set()
            heartbeat.join()
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

    def _heartbeat(self, job: ClaimedJob, stop: threading.Event) -> None:
        while not stop.wait(self.settings.lease_s / 3):
            with self.db.session() as session:
                if not renew_lease(
                    session, job.id, self.owner, self.settings.lease_s, self.clock()
                ):
                    log.warning("lost the lease of a running job", extra={"job": job.id})
                    return

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("worker loop error; continuing")
                busy = False
            if not busy:
                stop.wait(self.settings.poll_interval_s)
