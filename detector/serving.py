"""Which models serve scores: the registry's production versions plus ``[detector] models``.

A registry production version replaces a configured checkpoint of the same detector and
modality (two detectors of one name would collide in a verdict). ``refresh`` is called
periodically by serve and right after a retraining run: when the set of production versions
changed, the new models are loaded beside the old ones, then swapped in between two studies
(``StudyScorer.swap_models``), so a promotion takes effect without a restart and no study is
scored half by one model set and half by another. A model that fails to load is logged and
the previous set keeps scoring. Whenever a set is loaded, studies left ``not_scored`` for want
of a model of a modality the set now covers are queued again (:mod:`storage.rescore`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from detector.model_set import ModelSet
from detector.settings import DetectorSettings
from detector.study_scoring import StudyScorer
from storage.db import Database
from storage.polling import poll
from storage.registry import production_versions

log = logging.getLogger(__name__)


class ProductionModels:
    def __init__(
        self, db: Database, data_dir: Path, settings: DetectorSettings, interval_s: float = 30.0
    ) -> None:
        self.db = db
        self.models_dir = Path(data_dir) / "models"
        self.settings = settings
        self.interval_s = interval_s
        self.scorer: StudyScorer | None = None
        self.on_swap: Callable[[ModelSet], None] | None = None  # e.g. what the admin page shows
        self._key: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def _plan(self) -> tuple[tuple[int, ...], list[Path], dict[Path, int]]:
        with self.db.reading() as session:
            versions = [
                (v.id, v.detector, v.modality, self.models_dir / v.checkpoint_path)
                for v in production_versions(session)
            ]
        slots = {(detector, modality) for _, detector, modality, _ in versions}
        paths: list[Path] = []
        if slots and self.settings.models:
            from detector.checkpoint import kind_and_modality  # torch only when needed
        for path in self.settings.models:
            if slots and kind_and_modality(path) in slots:
                log.info("configured model superseded by the registry", extra={"path": str(path)})
                continue
            paths.append(Path(path))
        ids = {path: vid for vid, _, _, path in versions}
        paths += [path for _, _, _, path in versions]
        return tuple(sorted(v[0] for v in versions)), paths, ids

    def load(self) -> ModelSet:
        """The initial set (serve start): errors propagate, like a bad configured model."""
        with self._lock:
            key, paths, ids = self._plan()
            models = ModelSet.load(
                paths, self.settings.device, self.settings.batch_size, ids, self.settings.checks
            )
            self._key = key
        self._rescore_waiting(models)
        return models

    def _rescore_waiting(self, models: ModelSet) -> None:
        """Queue the "no model for ..." studies that ``models`` can now score."""
        from storage.models import utcnow
        from storage.rescore import requeue_unscored

        modalities = [m for m, group in models.by_modality.items() if group]
        try:
            with self.db.session() as session:
                queued = requeue_unscored(session, modalities, utcnow())
        except Exception:  # never lose the model swap over it; the next load tries again
            log.exception("could not queue the studies waiting for a model")
            return
        if queued:
            log.info("studies waiting for a model queued", extra={"studies": queued})

    def refresh(self) -> bool:
        """Swap in the registry's production set if it changed; True when swapped."""
        if self.scorer is None:
            return False
        with self._lock:
            key, paths, ids = self._plan()
            if key == self._key:
                return False
            try:
                models = ModelSet.load(
                    paths, self.settings.device, self.settings.batch_size, ids, self.settings.checks
                )
            except Exception:
                log.exception("new production models failed to load; keeping the current ones")
                self._key = key  # do not retry a broken file every interval
                return False
            self.scorer.swap_models(models)
            self._key = key
            if self.on_swap is not None:
                self.on_swap(models)
        log.info("production models reloaded", extra={"versions": list(key)})
        self._rescore_waiting(models)
        return True

    def run(self, stop: threading.Event) -> None:
        poll(self.refresh, stop, self.interval_s, log, "model reload", wait_first=True)
