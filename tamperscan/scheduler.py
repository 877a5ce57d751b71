"""The retraining schedule inside ``tamperscan serve`` (APScheduler 3).

- Job store: ``SQLAlchemyJobStore`` on the service database (table ``apscheduler_jobs``), so
  the next run time survives restarts; the job is re-added on every start with the configured
  crontab line (``replace_existing``), so editing ``[retrain] cron`` takes effect on restart.
- Missed runs (service down at 02:00) are coalesced into one run at start-up, unless missed by
  more than ``misfire_grace_hours``; ``max_instances=1`` and a one-thread executor keep this
  process to one run at a time, and the registry's run lock keeps all processes (a
  ``tamperscan retrain --now`` beside serve included) to one.
- ``run_now`` (the admin action) submits the same job function once, immediately.

APScheduler pickles jobs into the store, so the job is this module's ``scheduled_retrain``,
which finds the live runner of the database it names. The name stored is the database URL
with its password masked (``Database.safe_url``): secrets never land in a table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from detector.settings import RetrainSettings
from storage.db import Database

log = logging.getLogger(__name__)

JOB_ID = "retrain"
JOB_TABLE = "apscheduler_jobs"
JOB_FUNC = "tamperscan.scheduler:scheduled_retrain"

Runner = Callable[[str, str | None], Any]
_runners: dict[str, Runner] = {}
_runners_lock = threading.Lock()


def scheduled_retrain(db_url: str, trigger: str = "schedule", actor: str | None = None) -> None:
    """The stored job: run retraining with the runner registered for ``db_url`` (the
    password-masked URL of the service database)."""
    with _runners_lock:
        runner = _runners.get(db_url)
    if runner is None:
        log.warning("retraining job fired without a runner", extra={"database": db_url})
        return
    runner(trigger, actor)


class RetrainScheduler:
    def __init__(
        self,
        db: Database,
        settings: RetrainSettings,
        runner: Runner,
        *,
        timezone: tzinfo | None = None,
        executor: Any = None,
        scheduler_class: type[BaseScheduler] = BackgroundScheduler,
    ) -> None:
        """``executor`` and ``scheduler_class`` let tests drive the schedule with their own
        clock (no background thread, jobs run inline)."""
        self.db = db
        self.settings = settings
        self.runner = runner
        self.trigger = CronTrigger.from_crontab(settings.cron, timezone=timezone)
        kwargs: dict[str, Any] = {}
        if timezone is not None:
            kwargs["timezone"] = timezone
        self.scheduler = scheduler_class(
            jobstores={"default": SQLAlchemyJobStore(engine=db.engine, tablename=JOB_TABLE)},
            executors={"default": executor or ThreadPoolExecutor(max_workers=1)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.misfire_grace_hours * 3600),
            },
            **kwargs,
        )

    def start(self, paused: bool = False) -> None:
        with _runners_lock:
            _runners[self.db.safe_url] = self._run
        self.scheduler.start(paused=True)
        self.scheduler.add_job(
            JOB_FUNC,
            self.trigger,
            id=JOB_ID,
            name="nightly retraining",
            kwargs={"db_url": self.db.safe_url, "trigger": "schedule"},
            replace_existing=True,
        )
        job = self.scheduler.get_job(JOB_ID)
        log.info(
            "retraining scheduled",
            extra={"cron": self.settings.cron, "next_run": str(job.next_run_time if job else None)},
        )
        if not paused:
            self.scheduler.resume()

    def next_run_time(self) -> datetime | None:
        job = self.scheduler.get_job(JOB_ID)
        return job.next_run_time if job is not None else None

    def run_now(self, trigger: str = "admin", actor: str | None = None) -> None:
        """Run the job once, now (the admin action); refused by the run lock if one is going."""
        self.scheduler.add_job(
            JOB_FUNC,
            id=f"{JOB_ID}-now",
            name="retraining now",
            kwargs={"db_url": self.db.safe_url, "trigger": trigger, "actor": actor},
            replace_existing=True,
        )

    def _run(self, trigger: str, actor: str | None) -> None:
        from detector.retrain import RetrainBusy

        try:
            self.runner(trigger, actor)
        except RetrainBusy as exc:
            log.warning("retraining skipped", extra={"reason": str(exc)})

    def shutdown(self, wait: bool = True) -> None:
        with _runners_lock:
            if _runners.get(self.db.safe_url) == self._run:
                del _runners[self.db.safe_url]
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
