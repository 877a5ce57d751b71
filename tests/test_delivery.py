"""Reports on their way: queued per verdict and destination, retried with backoff, never lost.

The destination is DCMTK's storescp, a real DICOM peer on loopback; "down" means nothing
listens on its port.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from scp.dispatch import Dispatcher
from scp.settings import DeliverySettings, ReportSettings
from storage.db import Database
from storage.deliveries import backoff_s, resend
from storage.models import AuditEvent, Delivery, Verdict
from tests.dicom_helpers import ct_dataset, free_port, make_scu, wait_for_port
from tests.test_report import add_verdict, dciodvfy_errors, flagged_regions, store_study


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class StoreSCP:
    """DCMTK storescp as the PACS: start and stop it at will on a fixed port."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["storescp", "-aet", "PACS", "+xa", "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.folder.iterdir()) if p.is_file()]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    peer = StoreSCP(tmp_path / "pacs", free_port())
    yield peer
    peer.stop()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """Once on SQLite, once on PostgreSQL (``database_url`` in conftest.py)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def delivery_settings(port: int, **extra: Any) -> DeliverySettings:
    values: dict[str, Any] = {
        "dicom": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        "max_attempts": 3,
        "backoff_initial_s": 10.0,
        "backoff_max_s": 15.0,
    }
    values.update(extra)
    return DeliverySettings.model_validate(values)


def only_delivery(db: Database) -> Delivery:
    with db.reading() as session:
        return session.scalars(select(Delivery)).one()


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_down_destination_is_retried_with_backoff_then_delivered(
    db: Database, tmp_path: Path, pacs: StoreSCP
) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir)
    verdict_id = add_verdict(
        db, datasets[0].StudyInstanceUID, "tampered", flagged_regions(datasets)
    )
    clock = Clock()
    dispatcher = Dispatcher(
        db, data_dir, ReportSettings(), delivery_settings(pacs.port), clock=clock
    )
    assert dispatcher.run_once()  # attempted: the PACS is down
    first = only_delivery(db)
    assert (first.state, first.attempts) == ("pending", 1)
    assert "no association" in (first.last_error or "")
    assert first.next_attempt_at == clock.now + timedelta(seconds=10)
    assert not dispatcher.run_once()  # not due yet: nothing attempted
    clock.advance(10)
    pacs.start()
    assert dispatcher.run_once()
    done = only_delivery(db)
    assert (done.state, done.attempts, done.last_error) == ("delivered", 2, None)
    [received] = pacs.received()
    with db.reading() as session:
        verdict = session.get(Verdict, verdict_id)
        assert verdict is not None
    assert received.SOPInstanceUID == verdict.sr_sop_instance_uid
    assert received.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert received.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert not dispatcher.run_once()  # one verdict, one destination, one delivery


def test_retry_limit_then_failed_then_resend_sends_the_same_report(
    db: Database, tmp_path: Path, pacs: StoreSCP
) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir, count=2)
    add_verdict(db, datasets[0].StudyInstanceUID, "tampered", flagged_regions(datasets))
    clock = Clock()
    reports = ReportSettings(key_images=True)
    dispatcher = Dispatcher(db, data_dir, reports, delivery_settings(pacs.port), clock=clock)
    for _ in range(3):
        assert dispatcher.run_once()
        clock.advance(15)
    failed = only_delivery(db)
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert not dispatcher.run_once()  # failed stays failed (visible), not retried on its own
    with db.reading() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "report.failed")).one()

    pacs.start()
    with db.session() as session:
        assert resend(session, clock(), all_failed=True) == 1
    assert dispatcher.run_once()
    assert only_delivery(db).state == "delivered"
    first = sorted(ds.SOPInstanceUID for ds in pacs.received())
    assert len(first) == 3  # the SR and a key image per flagged region
    for path in pacs.folder.iterdir():
        assert dciodvfy_errors(path) == []

    # Resending a delivered report sends the very same objects again (idempotent).
    for path in pacs.folder.iterdir():
        path.unlink()
    with db.session() as session:
        assert resend(session, clock(), delivery_ids=[only_delivery(db).id]) == 1
    assert dispatcher.run_once()
    assert sorted(ds.SOPInstanceUID for ds in pacs.received()) == first


def test_not_scored_reports_follow_the_setting(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir, count=1)
    add_verdict(db, datasets[0].StudyInstanceUID, "not_scored", reason="no model for CT")
    clock = Clock()
    quiet = Dispatcher(
        db,
        data_dir,
        ReportSettings(send_not_scored=False),
        delivery_settings(free_port()),
        clock=clock,
    )
    assert not quiet.run_once()
    with db.reading() as session:
        assert session.scalars(select(Delivery)).all() == []
    Dispatcher(
        db, data_dir, ReportSettings(), delivery_settings(free_port()), clock=clock
    ).run_once()
    assert only_delivery(db).attempts == 1


@pytest.mark.slow
def test_nothing_is_lost_across_a_restart_of_serve(tmp_path: Path, pacs: StoreSCP) -> None:
    """A study arrives by C-STORE while the PACS is down; after a restart it is delivered."""
    first = _service_with_destination(tmp_path, pacs.port)
    try:
        study = pydicom.uid.generate_uid()
        series = pydicom.uid.generate_uid()
        scu = make_scu()
        scu.add_requested_context(pydicom.uid.CTImageStorage)
        assoc = scu.associate("127.0.0.1", first.scp.port, ae_title="TAMPERSCAN")
        assert assoc.is_established
        for n in range(1, 3):
            assert assoc.send_c_store(ct_dataset(study, series, index=n)).Status == 0
        assoc.release()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with first.db.reading() as session:
                row = session.scalars(select(Delivery)).first()
            if row is not None and row.attempts >= 2:
                break
            time.sleep(0.2)
        assert row is not None and row.state == "pending" and row.attempts >= 2
    finally:
        first.stop()
    pacs.start()
    second = _service_with_destination(tmp_path, pacs.port)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not pacs.received():
            time.sleep(0.2)
        [received] = pacs.received()
        assert received.StudyInstanceUID == study
        # The PACS answers before the dispatcher records the success: wait for the commit.
        while time.monotonic() < deadline:
            with second.db.reading() as session:
                delivery = session.scalars(select(Delivery)).one()
                verdict = session.get(Verdict, delivery.verdict_id)
            if delivery.state == "delivered":
                break
            time.sleep(0.1)
        assert delivery.state == "delivered"
        assert verdict is not None and received.SOPInstanceUID == verdict.sr_sop_instance_uid
    finally:
        second.stop()


def _service_with_destination(tmp_path: Path, port: int) -> Any:
    from tamperscan.config import load_config
    from tamperscan.service import Service
    from tests.dicom_helpers import write_config

    path = write_config(
        tmp_path / "restart.toml",
        0,
        tmp_path / "restart-data",
        delivery={
            "max_attempts": 50,
            "backoff_initial_s": 0.3,
            "backoff_max_s": 0.5,
            "poll_interval_s": 0.2,
        },
    )
    with path.open("a") as f:
        f.write(
            f'\n[[delivery.dicom]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
            f"port = {port}\n"
        )
    service = Service(load_config(path, environ={}))
    service.start()
    return service


def test_cli_lists_and_resends_failed_deliveries(
    db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tamperscan.cli import main
    from tests.dicom_helpers import write_config

    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir, count=1)
    add_verdict(db, datasets[0].StudyInstanceUID, "not_scored", reason="no model for CT")
    clock = Clock()
    dispatcher = Dispatcher(
        db, data_dir, ReportSettings(), delivery_settings(free_port(), max_attempts=1), clock=clock
    )
    dispatcher.run_once()
    assert only_delivery(db).state == "failed"
    config = write_config(tmp_path / "config.toml", 0, data_dir, storage={"database_url": db.url})
    assert main(["deliveries", "--config", str(config), "--state", "failed"]) == 0
    assert "failed" in capsys.readouterr().out
    assert main(["deliveries", "--config", str(config), "--resend-failed"]) == 0
    assert "1 deliveries queued again" in capsys.readouterr().out
    assert (only_delivery(db).state, only_delivery(db).attempts) == ("pending", 0)
