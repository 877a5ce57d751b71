"""``tamperscan serve``: the SCP, study assembly and scoring workers in one process.

(With ``[scp] receivers`` above 1 the DICOM receiver runs in that many processes of its own
on the same port, :mod:`tamperscan.receivers`; STOW-RS stays in this one.)

Start order follows the data: database (migrated), leftovers of a crash cleaned, then the
consumers (assembler, workers, report dispatcher), then the inputs that feed them (the SCP,
then the HTTP server with STOW-RS). Stop order is the reverse: stop accepting (HTTP first,
then DICOM), let running requests and associations finish their writes, stop the consumers;
queued jobs and deliveries stay in the database for the next start.
"""

from __future__ import annotations

import gc
import logging

from admin.http import HttpServer, create_app
from admin.report import AdminReport
from detector.model_set import ModelSet
from detector.retrain import Retrainer
from detector.serving import ProductionModels
from detector.study_scoring import StudyScorer
from scp.dicomweb import StowService
from scp.ingest import set_default_relax
from scp.server import StorageSCP
from storage.admin_actions import ActionError
from storage.assembly import StudyAssembler
from storage.db import Database
from storage.files import remove_partial_files
from storage.instances import InstanceStore
from storage.jobs import release_dead_leases
from storage.models import utcnow
from storage.registry import fail_dead_runs
from tamperscan.config import Settings
from tamperscan.receivers import ReceiverPool
from tamperscan.scheduler import RetrainScheduler
from tamperscan.stages import Stages, run_until_signalled, start_delivery, start_scoring

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.storage.resolved_database_url())
        self.store = InstanceStore(self.db, settings.storage.data_dir, settings.storage.min_free_mb)
        set_default_relax(settings.validation.relax)  # C-STORE and STOW-RS alike
        # One receiver inside this process, or several receiver processes on the port.
        self.scp: StorageSCP | None = None
        self.receivers: ReceiverPool | None = None
        if settings.scp.receivers > 1:
            self.receivers = ReceiverPool(settings, self.db, settings.scp.receivers)
        else:
            self.scp = StorageSCP(settings.scp, self.db, self.store)
        routers = []
        if settings.dicomweb.enabled:
            routers.append(StowService(self.db, self.store, settings.dicomweb).router())
        self.app = create_app(routers)
        self.models: ModelSet | None = None
        self.report: AdminReport | None = None
        if settings.admin.enabled:
            self.report = AdminReport(
                self.db,
                settings.storage.data_dir,
                settings.admin,
                models=lambda: self.models.describe() if self.models is not None else [],
                readiness={"dicom_listener": self._scp_ready, "models": self._models_ready},
                retrain_now=self._retrain_now if settings.retrain.enabled else None,
                disk_watermark_mb=settings.storage.min_free_mb,
            )
            self.report.install(self.app)
        self.http = HttpServer(
            self.app,
            settings.admin.host,
            settings.admin.port,
            trusted_proxies=[str(net) for net in settings.admin.trusted_proxies],
        )
        self.stages = Stages()
        self.scheduler: RetrainScheduler | None = None
        self.production: ProductionModels | None = None

    def start(self) -> None:
        settings = self.settings
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.db.migrate()
        leftovers = remove_partial_files(self.store.root)
        with self.db.session() as session:
            requeued = release_dead_leases(session, utcnow())
            fail_dead_runs(session, utcnow())  # a retraining run killed with the last process
        log.info(
            "storage ready",
            extra={
                "data_dir": str(settings.storage.data_dir),
                "database": self.db.safe_url,
                "partial_files_removed": leftovers,
                "jobs_requeued": requeued,
            },
        )
        assembler = StudyAssembler(self.db, settings.assembly)
        self.stages.spawn("assembler", assembler.run)
        scorer = None
        if settings.worker.enabled:
            # The registry's production models plus [detector] models, reloaded on promotion.
            self.production, scorer = start_scoring(
                self.db, settings, self.stages, on_swap=lambda new: setattr(self, "models", new)
            )
        start_delivery(self.db, settings, self.stages)
        if settings.retrain.enabled:
            self._start_retraining(scorer)
        self.store.start_group_commit()  # before the inputs: they hand their writes to it
        # Everything loaded so far (torch, the models, the schema) lives as long as the
        # process: keep it out of the collector, so a full collection (pynetdicom forces one
        # every 60 accept-loop turns) takes milliseconds instead of stalling every association.
        gc.freeze()
        if self.receivers is not None:
            self.receivers.start()
        else:
            assert self.scp is not None
            self.scp.start()
        self.http.start()

    @property
    def dicom_port(self) -> int:
        """The port the DICOM receiver(s) listen on (resolved when configured as 0)."""
        if self.receivers is not None:
            return self.receivers.port
        assert self.scp is not None
        return self.scp.port

    def _scp_ready(self) -> tuple[bool, str]:
        if self.receivers is not None:
            alive, count = self.receivers.alive(), self.receivers.count
            if alive < count:
                return False, f"{alive} of {count} receiver processes listening"
            return True, f"{count} receiver processes listening on port {self.receivers.port}"
        try:
            return True, f"listening on port {self.dicom_port}"
        except (AssertionError, OSError):
            return False, "DICOM listener not started"

    def _models_ready(self) -> tuple[bool, str]:
        wanted = len(self.settings.detector.models) if self.settings.worker.enabled else 0
        loaded = len(self.models.describe()) if self.models is not None else 0
        if loaded < wanted:
            return False, f"{loaded} of {wanted} configured models loaded"
        return True, f"{loaded} models loaded" if wanted else "no model configured"

    def _retrain_now(self, actor: str) -> None:
        """The admin's "retrain now": the same job as the schedule, submitted once."""
        if self.scheduler is None:  # enabled, but start() has not set the scheduler up (yet)
            raise ActionError("retraining is enabled but not running in this service yet")
        self.scheduler.run_now("admin", actor)

    def _start_retraining(self, scorer: StudyScorer | None) -> None:
        """The nightly job; training yields to live scoring between its steps."""
        retrainer = Retrainer(
            self.db,
            self.settings.storage.data_dir,
            self.settings.retrain,
            between_steps=scorer.activity.yield_to_scoring if scorer is not None else None,
            stop=self.stages.stop_event,
        )

        def run(trigger: str, actor: str | None) -> None:
            report = retrainer.run(trigger, actor)
            if report.promoted and self.production is not None:
                self.production.refresh()

        self.scheduler = RetrainScheduler(self.db, self.settings.retrain, run)
        self.scheduler.start()

    def stop(self) -> None:
        log.info("shutting down")
        self.http.stop()
        if self.receivers is not None:
            self.receivers.stop()
        elif self.scp is not None:
            self.scp.stop()
        self.store.stop_group_commit()  # after the inputs: what they queued is committed
        self.stages.stop_event.set()  # a running retraining stops at its next step, as failed
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self.stages.join(timeout_s=30)
        self.db.dispose()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Block until SIGTERM or SIGINT, then stop cleanly."""
        run_until_signalled(self.start, self.stop)
