"""Records of refused connections and associations, written on a thread of their own.

The connection guard refuses on the accepting thread: waiting there for the database (a busy
SQLite writer) would stall every accept, which is the starvation the guard exists to prevent.
Refusals are queued and written in batches; when a flood fills the queue, the overflow is
counted and written as one summary row, so the audit trail says how much was not itemised.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from scp.records import add_association
from storage.audit import audit
from storage.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    host: str
    port: int
    reason: str
    # Set for a refused A-ASSOCIATE-RQ (an association row is written); None for a connection
    # that never requested an association (an audit row only).
    called: str | None = None
    calling: str | None = None


class RefusalRecorder:
    def __init__(self, db: Database, tls: bool, capacity: int = 10_000) -> None:
        self._db = db
        self._tls = tls
        self._queue: queue.Queue[Refusal | None] = queue.Queue(maxsize=capacity)
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scp-refusals", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)  # blocks only while a flood fills the queue; the writer drains it
        self._thread.join(timeout_s)
        self._thread = None

    def add(self, refusal: Refusal) -> None:
        try:
            self._queue.put_nowait(refusal)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def _run(self) -> None:
        while True:
            try:
                batch: list[Refusal | None] = [self._queue.get(timeout=1.0)]
            except queue.Empty:
                batch = []  # still write the count of refusals a flood made us drop
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            refusals = [r for r in batch if r is not None]
            try:
                self._write(refusals)
            except Exception:
                log.exception("could not record refused connections", extra={"count": len(batch)})
            if None in batch:
                return

    def _write(self, refusals: list[Refusal]) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if not refusals and not dropped:
            return
        with self._db.session() as session:
            for r in refusals:
                target = f"{r.host}:{r.port}"
                if r.called is None or r.calling is None:
                    audit(
                        session,
                        actor=r.host,
                        action="connection.refused",
                        target=target,
                        detail={"reason": r.reason},
                    )
                    continue
                add_association(
                    session,
                    calling=r.calling,
                    called=r.called,
                    host=r.host,
                    port=r.port,
                    tls=self._tls,
                    rejection=r.reason,
                )
            if dropped:
                audit(
                    session,
                    actor="scp",
                    action="connection.refused",
                    detail={"reason": "record queue full", "count": dropped},
                )
