"""``tamperscan worker``: scoring and report delivery on a host without the receiver.

It needs what ``serve`` has: the same database (PostgreSQL when workers run on other hosts;
SQLite only for workers on the serve host itself) and the same data folder, mounted at the
path ``[storage] data_dir`` names (instances are read from it, heatmaps and reports written
to it, models loaded from it). It runs no DICOM listener, no HTTP server, no assembly and no
retraining schedule: add as many as there are GPUs, on as many hosts as needed.
"""

from __future__ import annotations

import logging

from storage.db import Database
from storage.jobs import release_dead_leases
from storage.models import utcnow
from tamperscan.config import Settings
from tamperscan.stages import Stages, run_until_signalled, start_delivery, start_scoring

log = logging.getLogger(__name__)


class WorkerProcess:
    def __init__(self, settings: Settings) -> None:
        # Checked before the database is opened: a default SQLite URL would create the folder.
        if not settings.storage.data_dir.is_dir():
            raise OSError(
                f"data folder {settings.storage.data_dir} does not exist: mount the folder "
                "serve writes to (the same [storage] data_dir) on this host"
            )
        self.settings = settings
        self.db = Database(settings.storage.resolved_database_url())
        self.stages = Stages()

    def start(self) -> None:
        settings = self.settings
        self.db.migrate()
        with self.db.session() as session:
            requeued = release_dead_leases(session, utcnow())
        log.info(
            "worker ready",
            extra={
                "data_dir": str(settings.storage.data_dir),
                "database": self.db.safe_url,
                "concurrency": settings.worker.concurrency,
                "jobs_requeued": requeued,
            },
        )
        start_scoring(self.db, settings, self.stages)
        start_delivery(self.db, settings, self.stages)

    def stop(self) -> None:
        log.info("shutting down")
        self.stages.join(timeout_s=30)
        self.db.dispose()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        run_until_signalled(self.start, self.stop)
