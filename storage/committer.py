"""Group commit: many receiving threads, one writer at a time, one transaction per batch.

pynetdicom runs one thread per association, and each C-STORE must be durable and indexed
before it is acknowledged. Done one by one, every instance pays its own folder fsync and its
own SQLite commit (a WAL fsync under ``synchronous=FULL``) while holding the only write lock.
Here the handlers queue their instance; the first of them commits everything queued as one
batch while the others wait, then hands the lead to the next waiting handler (leader and
followers: no thread of its own, so a lone association pays no hand-over). Per batch:

1. writes each file to a temporary name, ``fdatasync``s it and renames it into place
   (a write that fails fails only that instance);
2. fsyncs each touched folder once, so every rename of the batch is durable;
3. indexes all rows in ONE transaction, then wakes every waiting handler with its outcome.

The order is what makes an acknowledgement mean "on disk and indexed" after a power cut: a
committed row only ever names a file whose bytes and name were already synced. If the batch
transaction fails (a constraint, a full disk), each instance is indexed on its own, so only
the instances that really fail are refused.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database
from storage.files import fsync_dirs, write_unsynced_name

log = logging.getLogger(__name__)

T = TypeVar("T")  # what indexing one instance returns (instances.py: its StoreOutcome)

MAX_BATCH = 64  # instances per transaction; bounds the memory a batch holds and its latency


@dataclass
class Pending(Generic[T]):
    """One instance waiting for the committer; ``outcome`` or ``error`` is set when done."""

    target: Path  # absolute final path
    data: bytes
    index: Callable[[Session], T]  # adds the rows for this instance, returns its outcome
    on_failure: Callable[[], None]  # undo what was written when the instance is refused
    done: threading.Event = field(default_factory=threading.Event)
    outcome: T | None = None
    error: BaseException | None = None
    written: bool = False
    lead: bool = False  # woken to commit the next batch, not because it is done

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class GroupCommitter:
    """Group commit without a writer thread of its own: the first waiting handler leads.

    A handler that submits while no batch is being committed commits at once, in its own
    thread (a lone association pays no hand-over to another thread). Handlers that submit
    meanwhile wait; when the leader's batch is done it passes the lead to the first of them,
    who commits everything that queued up as the next batch (``max_batch`` at most).
    ``submit`` blocks until the instance is durable or refused.
    """

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[Pending] = []
        self._leading = False  # a batch is being committed
        self._idle = threading.Condition(self._lock)
        self._enabled = False
        self.batches = 0  # how many transactions were committed (tests and metrics)

    def start(self) -> None:
        self._enabled = True

    def stop(self) -> None:
        """Refuse new work (callers write by themselves again); let queued batches finish."""
        with self._idle:
            self._enabled = False
            self._idle.wait_for(lambda: not self._leading and not self._waiting, timeout=60)

    @property
    def running(self) -> bool:
        return self._enabled

    def submit(self, pending: Pending[T]) -> T:
        """Commit ``pending`` (leading a batch, or in one another handler leads); returns its
        outcome or raises what failed it."""
        with self._lock:
            self._waiting.append(pending)
            lead = not self._leading
            if lead:
                self._leading = True
        if not lead:
            pending.done.wait()
            if pending.lead:  # woken by the previous leader: this handler commits next
                pending.lead = False
                pending.done.clear()
                self._lead()  # its own instance is first in the batch
        else:
            self._lead()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        if pending.outcome is None:
            raise RuntimeError("group commit ended without an outcome or an error")
        return pending.outcome

    def _lead(self) -> None:
        """Commit one batch of what is waiting, then pass the lead on (or give it up)."""
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        try:
            self.commit(batch)
        except BaseException as exc:  # never leave a handler waiting forever
            log.exception("group commit failed")
            for pending in batch:
                if not pending.done.is_set():
                    pending.fail(exc)
        with self._idle:
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
                successor.done.set()  # wakes it to lead; it waits again for its outcome
            else:
                self._leading = False
                self._idle.notify_all()

    def commit(self, batch: list[Pending]) -> None:
        """Write, sync, index and release one batch (runs in the leading handler's thread)."""
        for pending in batch:
            try:
                write_unsynced_name(pending.target, pending.data)
                pending.written = True
            except OSError as exc:
                pending.fail(exc)
        live = [p for p in batch if p.written]
        if not live:
            return
        try:
            fsync_dirs({p.target.parent for p in live})
        except OSError as exc:  # the names may not be durable: refuse them all
            for pending in live:
                self._refuse(pending, exc)
            return
        try:
            with self.db.session() as session:
                outcomes = [p.index(session) for p in live]
        except Exception:
            log.warning("batch index failed, indexing its instances one by one", exc_info=True)
            for pending in live:
                self._index_alone(pending)
            return
        self.batches += 1
        for pending, outcome in zip(live, outcomes, strict=True):
            pending.outcome = outcome
            pending.done.set()

    def _index_alone(self, pending: Pending) -> None:
        for attempt in range(2):
            try:
                with self.db.session() as session:
                    pending.outcome = pending.index(session)
            except IntegrityError as exc:
                # Another process indexed the same UID at the same moment (PostgreSQL); the
                # second pass sees its row and resolves duplicate or replace.
                if attempt:
                    self._refuse(pending, exc)
                    return
            except Exception as exc:
                self._refuse(pending, exc)
                return
            else:
                pending.done.set()
                return

    @staticmethod
    def _refuse(pending: Pending, exc: BaseException) -> None:
        try:
            pending.on_failure()
        except OSError:
            log.exception("could not remove the file of a refused instance")
        pending.fail(exc)
