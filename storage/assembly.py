"""Study assembly: DICOM has no "study complete" message, so quiet time decides.

A study is complete after ``stable_age_s`` without a new instance, or ``released_age_s``
after its sender released the association normally. Then exactly one scoring job is queued
for that study version (see ``storage.jobs.enqueue_stable_studies``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from storage.db import Database
from storage.jobs import enqueue_stable_studies
from storage.models import utcnow
from storage.polling import poll
from storage.settings import AssemblySettings

log = logging.getLogger(__name__)


class StudyAssembler:
    def __init__(
        self,
        db: Database,
        settings: AssemblySettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    def tick(self) -> list[tuple[int, int]]:
        """Queue jobs for every study that became stable since the last tick."""
        with self.db.session() as session:
            queued = enqueue_stable_studies(
                session, self.clock(), self.settings.stable_age_s, self.settings.released_age_s
            )
        for study_id, version in queued:
            log.info("study stable, job queued", extra={"study_id": study_id, "version": version})
        return queued

    def run(self, stop: threading.Event) -> None:
        poll(self.tick, stop, self.settings.poll_interval_s, log, "study assembly")
