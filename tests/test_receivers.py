"""Several receiver processes on one port: every instance stored and indexed exactly once,
readiness counts the processes, a killed receiver is started again, stop ends them all."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from detector.lab.phantoms import write_phantoms
from storage.models import Instance
from tamperscan.service import Service
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("receivers")
    write_phantoms("CT", 1, 16, root, seed=5, size=64)
    return sorted(root.rglob("*.dcm"))


def _send(port: int, files: list[Path]) -> list[int]:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, dcmread(files[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


@pytest.mark.slow
def test_receiver_processes_share_the_port(tmp_path: Path, ct_series: list[Path]) -> None:
    service = Service(make_settings(tmp_path, scp={"receivers": 2}, worker={"enabled": False}))
    service.start()
    pool = service.receivers
    try:
        pool = service.receivers
        assert pool is not None and service.scp is None
        assert pool.alive() == 2 and len(set(pool.pids())) == 2
        assert service._scp_ready() == (True, f"2 receiver processes listening on port {pool.port}")
        # 4 associations at once, each its own connection: the kernel spreads them.
        statuses: list[list[int]] = []
        chunks = [ct_series[i::4] for i in range(4)]
        threads = [
            threading.Thread(target=lambda c=c: statuses.append(_send(pool.port, c)))
            for c in chunks
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(s for batch in statuses for s in batch) == [0] * len(ct_series)
        with service.db.reading() as session:
            count = session.scalar(select(func.count()).select_from(Instance))
            uids = session.scalars(select(Instance.sop_instance_uid)).all()
        assert count == len(ct_series) == len(set(uids))
        # A receiver that dies is started again, and the port keeps working meanwhile.
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (pool.alive() < 2 or victim in pool.pids()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pool.alive() == 2 and victim not in pool.pids() and pool.restarts == 1
        assert _send(pool.port, ct_series[:1]) == [0]  # a duplicate: stored once, acknowledged
    finally:
        service.stop()
    assert all(not _alive(pid) for pid in pool.pids())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
