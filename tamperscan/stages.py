"""The background stages ``serve`` and ``worker`` share: scoring workers with the model
reloader, and the report dispatcher; plus the signal-driven run of either process.

Each stage is a thread running ``storage.polling.poll`` over one step, all ending on one stop
event. What runs where is the caller's choice: ``serve`` adds the receiver, assembly and the
HTTP server; ``worker`` runs only these.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from detector.model_set import ModelSet
from detector.serving import ProductionModels
from detector.study_scoring import StudyScorer
from detector.worker import ScoringWorker
from storage.db import Database
from tamperscan.config import Settings
from tamperscan.delivery import SharedDispatcher

log = logging.getLogger(__name__)


class Stages:
    """Threads that run until one stop event is set."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout_s: float = 30) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=timeout_s)


def start_scoring(
    db: Database,
    settings: Settings,
    stages: Stages,
    on_swap: Callable[[ModelSet], None] | None = None,
) -> tuple[ProductionModels, StudyScorer]:
    """Load the production models and start ``[worker] concurrency`` scoring workers."""
    production = ProductionModels(
        db, settings.storage.data_dir, settings.detector, settings.retrain.reload_interval_s
    )
    models = production.load()
    if on_swap is not None:
        on_swap(models)
    scorer = StudyScorer(db, settings.storage.data_dir, settings.detector, models)
    production.scorer = scorer
    production.on_swap = on_swap
    stages.spawn("model-reload", production.run)
    for n in range(settings.worker.concurrency):
        worker = ScoringWorker(db, scorer, settings.worker, name=f"worker-{n + 1}")
        stages.spawn(f"worker-{n + 1}", worker.run)
    return production, scorer


def start_delivery(db: Database, settings: Settings, stages: Stages) -> SharedDispatcher | None:
    """Start the report dispatcher when ``[delivery]`` names a destination."""
    if not settings.delivery.destination_names():
        return None
    dispatcher = SharedDispatcher(
        db, settings.storage.data_dir, settings.reports, settings.delivery
    )
    dispatcher.lease_s = settings.worker.delivery_lease_s
    stages.spawn("dispatcher", dispatcher.run)
    return dispatcher


def run_until_signalled(start: Callable[[], None], stop: Callable[[], None]) -> None:
    """Start, block until SIGTERM or SIGINT, then stop cleanly (also when start fails)."""
    signalled = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        signalled.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        start()
        # Wake up regularly: the kernel may deliver the signal to another thread, and
        # Python runs handlers only when the main thread executes bytecode.
        while not signalled.wait(0.5):
            pass
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
