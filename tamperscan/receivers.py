"""Several DICOM receiver processes on one port, so ingest uses every core.

One Python process runs one core at a time (pynetdicom decodes and our checks validate in
Python), so ``serve`` with ``[scp] receivers = N > 1`` starts N receiver processes instead of
receiving in its own. Each binds the same port with ``SO_REUSEPORT`` (Linux): the kernel hands
each new connection to one of them. Each process validates, writes and indexes through its own
group committer, so "acknowledged = on disk and indexed" holds per instance exactly as in one
process; the index is the shared database (SQLite in WAL mode serialises their transactions,
PostgreSQL runs them side by side).

The parent resolves the port first (port 0 picks a free one, for tests) and holds it bound, not
listening, until every receiver listens; it closes the previous run's open associations once,
before any receiver starts. A receiver that dies is started again after a pause; ``stop``
asks each to finish its associations and queued writes, then waits.
The connection limits (``max_associations``, ``max_connections_per_host``,
``max_pending_connections``) apply per receiver process.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

from scp.ingest import set_default_relax
from scp.records import close_stale
from scp.server import StorageSCP
from storage.db import Database
from storage.instances import InstanceStore
from tamperscan.config import Settings
from tamperscan.logs import setup_logging

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # a receiver imports pynetdicom and pydicom before it listens
RESTART_PAUSE_S = 1.0


def _receiver_main(settings: Settings, index: int, ready: Connection) -> None:
    """One receiver process: the C-STORE SCP and a group committer until SIGTERM.

    SIGINT is ignored (Ctrl-C reaches the whole process group; the parent decides), and the
    parent learns that the port is served through ``ready``: a pipe, not a shared lock, so a
    receiver killed at any moment leaves nothing behind in the parent.
    """
    setup_logging(settings.logging.level, settings.logging.format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db = Database(settings.storage.resolved_database_url())
    store = InstanceStore(db, settings.storage.data_dir, settings.storage.min_free_mb)
    set_default_relax(settings.validation.relax)
    scp = StorageSCP(settings.scp, db, store, reuse_port=True, close_stale_on_start=False)
    store.start_group_commit()
    gc.freeze()  # see Service.start: keeps pynetdicom's forced collections short
    scp.start()
    log.info("receiver process listening", extra={"receiver": index, "port": scp.port})
    ready.send(scp.port)
    ready.close()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scp.stop()
        store.stop_group_commit()
        db.dispose()


class ReceiverPool:
    """The receiver processes of one ``serve``; the parent's view of them."""

    def __init__(self, settings: Settings, db: Database, count: int) -> None:
        if count < 2:
            raise ValueError("a receiver pool has at least 2 processes")
        self.settings = settings
        self.db = db
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._procs: list[SpawnProcess | None] = [None] * count
        self._ready: list[bool] = [False] * count
        self._watch: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pipes: list[Connection | None] = [None] * count
        self.port = 0
        self.restarts = 0

    def _reserve_port(self) -> socket.socket:
        """Bind (not listen) with SO_REUSEPORT, so the port is ours before any receiver runs."""
        s = self.settings.scp
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.port))
        self.port = int(sock.getsockname()[1])
        return sock

    def _spawn(self, index: int) -> None:
        settings = self.settings.model_copy(
            update={"scp": self.settings.scp.model_copy(update={"port": self.port})}
        )
        self._ready[index] = False
        theirs, ours = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_receiver_main,
            args=(settings, index, ours),
            name=f"tamperscan-receiver-{index}",
            daemon=False,
        )
        proc.start()
        ours.close()
        self._procs[index] = proc
        self._pipes[index] = theirs

    def _await_ready(self, index: int, deadline: float) -> None:
        pipe, proc = self._pipes[index], self._procs[index]
        assert pipe is not None and proc is not None
        while not pipe.poll(0.2):
            if not proc.is_alive():
                raise OSError(f"receiver process {index} exited ({proc.exitcode})")
            if time.monotonic() > deadline:
                raise OSError(f"receiver process {index} did not listen in time")
        try:
            pipe.recv()
        except EOFError:
            raise OSError(f"receiver process {index} exited before listening") from None
        pipe.close()
        self._ready[index] = True

    def start(self) -> None:
        stale = close_stale(self.db)
        if stale:
            log.warning("associations of a previous run marked aborted", extra={"count": stale})
        reservation = self._reserve_port()
        try:
            for index in range(self.count):
                self._spawn(index)
            deadline = time.monotonic() + READY_TIMEOUT_S
            for index in range(self.count):
                self._await_ready(index, deadline)
        except BaseException:
            self.stop()
            raise
        finally:
            reservation.close()
        self._watch = threading.Thread(target=self._supervise, name="receivers", daemon=True)
        self._watch.start()
        log.info("DICOM receivers listening", extra={"processes": self.count, "port": self.port})

    def _supervise(self) -> None:
        """Start a receiver that died again (its unacknowledged instances were never ours)."""
        while not self._stopping.wait(RESTART_PAUSE_S):
            for index, proc in enumerate(self._procs):
                if proc is not None and not proc.is_alive() and not self._stopping.is_set():
                    log.error(
                        "receiver process died, starting it again",
                        extra={"receiver": index, "exitcode": proc.exitcode},
                    )
                    self.restarts += 1
                    self._spawn(index)
                    try:
                        self._await_ready(index, time.monotonic() + READY_TIMEOUT_S)
                    except OSError:
                        log.exception("receiver process did not come back", extra={"i": index})

    def alive(self) -> int:
        """How many receivers are running and listening."""
        return sum(
            1
            for proc, ready in zip(self._procs, self._ready, strict=True)
            if proc is not None and proc.is_alive() and ready
        )

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def stop(self, grace_s: float = 20.0) -> None:
        """Let each receiver finish its associations and queued writes, then end it."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._watch is not None:
            self._watch.join(timeout=READY_TIMEOUT_S)  # a restart in progress ends first
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()  # SIGTERM: the receiver stops accepting and drains
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            if proc is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("receiver did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.join(5)
