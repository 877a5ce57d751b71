"""``tamperscan serve``: the SCP, study assembly and scoring workers in one process.

Start order follows the data: database (migrated), leftovers of a crash cleaned, then the
consumers (assembler, workers, report dispatcher), then the inputs that feed them (the SCP,
then the HTTP server with STOW-RS). Stop order is the reverse: stop accepting (HTTP first,
then DICOM), let running requests and associations finish their writes, stop the consumers;
queued jobs and deliveries stay in the database for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from admin.http import HttpServer, create_app
from detector.study_scoring import ModelSet, StudyScorer
from detector.worker import ScoringWorker
from scp.dicomweb import StowService
from scp.dispatch import Dispatcher
from scp.server import StorageSCP
from storage.assembly import StudyAssembler
from storage.db import Database
from storage.files import remove_partial_files
from storage.instances import InstanceStore
from storage.jobs import release_dead_leases
from storage.models import utcnow
from tamperscan.config import Settings

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.storage.resolved_database_url())
        self.store = InstanceStore(self.db, settings.storage.data_dir, settings.storage.min_free_mb)
        self.scp = StorageSCP(settings.scp, self.db, self.store)
        routers = []
        if settings.dicomweb.enabled:
            routers.append(StowService(self.db, self.store, settings.dicomweb).router())
        self.app = create_app(routers)
        self.http = HttpServer(self.app, settings.admin.host, settings.admin.port)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        settings = self.settings
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.db.migrate()
        leftovers = remove_partial_files(self.store.root)
        with self.db.session() as session:
            requeued = release_dead_leases(session, utcnow())
        log.info(
            "storage ready",
            extra={
                "data_dir": str(settings.storage.data_dir),
                "database": self._safe_url(),
                "partial_files_removed": leftovers,
                "jobs_requeued": requeued,
            },
        )
        assembler = StudyAssembler(self.db, settings.assembly)
        self._spawn("assembler", assembler.run)
        if settings.worker.enabled:
            models = ModelSet.load(
                settings.detector.models, settings.detector.device, settings.detector.batch_size
            )
            scorer = StudyScorer(self.db, settings.storage.data_dir, settings.detector, models)
            for n in range(settings.worker.concurrency):
                worker = ScoringWorker(self.db, scorer, settings.worker, name=f"worker-{n + 1}")
                self._spawn(f"worker-{n + 1}", worker.run)
        if settings.delivery.destination_names():
            dispatcher = Dispatcher(
                self.db, settings.storage.data_dir, settings.reports, settings.delivery
            )
            self._spawn("dispatcher", dispatcher.run)
        self.scp.start()
        self.http.start()

    def _safe_url(self) -> str:
        return self.db.engine.url.render_as_string(hide_password=True)

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        log.info("shutting down")
        self.http.stop()
        self.scp.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.db.dispose()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Block until SIGTERM or SIGINT, then stop cleanly."""
        signalled = threading.Event()

        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            signalled.set()

        previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            # Wake up regularly: the kernel may deliver the signal to another thread, and
            # Python runs handlers only when the main thread executes bytecode.
            while not signalled.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
