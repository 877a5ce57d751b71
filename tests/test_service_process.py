"""``tamperscan serve`` as a real process, driven by DCMTK and pynetdicom over loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.db import Database
from storage.files import TEMP_SUFFIX
from storage.models import AuditEvent, Instance, Job, Study, Verdict
from tests.dicom_helpers import (
    REPO,
    TEST_FILES,
    ct_dataset,
    dataset_bytes,
    free_port,
    make_scu,
    serve_process,
    wait_for_port,
    write_config,
)


class Server:
    """A serve process plus read access to its database and files."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.config = write_config(tmp_path / "config.toml", self.port, self.data_dir, **sections)
        self.log = tmp_path / "serve.log"
        self.process: subprocess.Popen | None = None
        self._db: Database | None = None

    def start(self) -> Server:
        self.process = serve_process(self.config, self.log)
        wait_for_port(self.port, process=self.process)
        return self

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(f"sqlite:///{self.data_dir / 'tamperscan.db'}")
        return self._db

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._db is not None:
            self._db.dispose()

    def wait_for(self, predicate: Callable[[Any], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.session() as session:
                value = predicate(session)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"condition not met in {timeout} s; log:\n{self.log.read_text()}")


# These tests are about the pipeline (assembly, versions, restarts), not detection: with no
# detector at all every verdict is the fixed "not_scored: no model for CT".
NO_DETECTORS: dict[str, Any] = {"checks": []}


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**sections: dict[str, Any]) -> Server:
        server = Server(tmp_path, **sections)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.fixture
def reference_storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp in bit-preserving mode: writes exactly the bytes it received."""
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-B", "-od", str(out), "-aet", "TAMPERSCAN", "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield port, out
    finally:
        process.terminate()
        process.wait()


def test_dcmtk_peers_store_and_echo(
    server_factory: Callable[..., Server], reference_storescp: tuple[int, Path]
) -> None:
    server = server_factory(scp={"allowed_calling_aets": ["STORESCU", "ECHOSCU"]}).start()
    port = str(server.port)
    assert dcmtk("echoscu", "-aec", "TAMPERSCAN", "127.0.0.1", port).returncode == 0
    health = [sys.executable, "-m", "tamperscan.cli", "echo", "--config", str(server.config)]
    refused = subprocess.run(health, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 1 and "association rejected" in refused.stderr
    allowed = subprocess.run(
        [*health, "--aet", "ECHOSCU"], capture_output=True, text=True, cwd=REPO
    )
    assert allowed.returncode == 0, allowed.stderr
    sends = [
        (["-xw"], "693_J2KI.dcm"),  # 512x512 CT, JPEG 2000
        (["-xv"], "J2K_pixelrep_mismatch.dcm"),  # 512x512 CT, JPEG 2000 lossless
        ([], "MR_small.dcm"),
        (["-xt"], "MR_small_jpeg_ls_lossless.dcm"),
    ]
    ref_port, ref_dir = reference_storescp
    for options, name in sends:
        # storescu re-encodes what it reads, so "as sent" is what a bit-preserving
        # storescp receives from the same command.
        for target in (port, str(ref_port)):
            result = dcmtk(
                "storescu",
                *options,
                "-aec",
                "TAMPERSCAN",
                "127.0.0.1",
                target,
                str(TEST_FILES / name),
            )
            assert result.returncode == 0, result.stderr
        uid = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True).SOPInstanceUID
        with server.db.session() as session:
            row = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()
            stored = server.data_dir / "instances" / row.file_path
        (reference,) = ref_dir.glob(f"*{uid}*")
        assert dataset_bytes(stored) == dataset_bytes(reference), name
        reference.unlink()

    refused = dcmtk(
        "storescu",
        "-aet",
        "INTRUDER",
        "-aec",
        "TAMPERSCAN",
        "127.0.0.1",
        port,
        str(TEST_FILES / "CT_small.dcm"),
    )
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr or "rejected" in refused.stderr.lower()
    with server.db.session() as session:
        actors = session.scalars(
            select(AuditEvent.actor).where(AuditEvent.action == "association.rejected")
        ).all()
        assert sorted(actors) == ["HEALTHCHECK", "INTRUDER"]
    assert server.stop() == 0


def _send(port: int, datasets: list[pydicom.Dataset], ae_title: str = "MODALITY") -> list[int]:
    ae = make_scu(ae_title)
    ae.add_requested_context(datasets[0].SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def test_series_in_two_associations_is_one_job_and_late_instance_supersedes(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(
        assembly={"stable_age_s": 3.0, "released_age_s": 3.0}, detector=NO_DETECTORS
    ).start()
    study, series = generate_uid(), generate_uid()
    assert _send(server.port, [ct_dataset(study, series, i) for i in (1, 2)]) == [0, 0]
    time.sleep(1.0)  # a pause shorter than stable_age
    assert _send(server.port, [ct_dataset(study, series, i) for i in (3, 4)]) == [0, 0]

    def first_verdict(session: Any) -> Any:
        return session.scalars(select(Verdict)).all()

    verdicts = server.wait_for(first_verdict)
    assert [(v.study_version, v.outcome, v.reason) for v in verdicts] == [
        (1, "not_scored", "no model for CT")
    ]
    time.sleep(1.0)
    with server.db.session() as session:
        assert [j.study_version for j in session.scalars(select(Job)).all()] == [1]

    assert _send(server.port, [ct_dataset(study, series, 5)]) == [0]  # a late instance

    def two_verdicts(session: Any) -> Any:
        rows = session.scalars(select(Verdict).order_by(Verdict.id)).all()
        return rows if len(rows) == 2 else None

    verdicts = server.wait_for(two_verdicts)
    assert [(v.study_version, v.is_current) for v in verdicts] == [(1, False), (2, True)]
    with server.db.session() as session:
        assert [j.study_version for j in session.scalars(select(Job).order_by(Job.id))] == [1, 2]
        assert session.scalars(select(Study)).one().version == 2

    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "tamperscan.cli",
            "status",
            "--json",
            "--config",
            str(server.config),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    (summary,) = json.loads(status.stdout)
    assert summary["instances"] == 5 and summary["state"] == "done" and summary["version"] == 2
    assert summary["verdict"] == "not_scored"
    assert server.stop() == 0


def test_sigterm_stops_cleanly_and_queued_jobs_survive(
    server_factory: Callable[..., Server],
) -> None:
    quiet = {"stable_age_s": 1.0, "released_age_s": 0.5, "poll_interval_s": 0.2}
    server = server_factory(
        worker={"enabled": False}, assembly=quiet, detector=NO_DETECTORS
    ).start()
    study = generate_uid()
    assert _send(server.port, [ct_dataset(study, generate_uid())]) == [0]
    server.wait_for(lambda s: s.scalars(select(Job).where(Job.state == "queued")).all())
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 15
    assert "msg=stopped" in server.log.read_text()

    server.config.write_text(server.config.read_text().replace("enabled = false", "enabled = true"))
    server.start()
    verdict = server.wait_for(lambda s: s.scalars(select(Verdict)).one_or_none())
    assert verdict.outcome == "not_scored"
    assert server.stop(signal.SIGINT) == 0


@pytest.mark.slow
def test_sigkill_mid_transfer_loses_no_acknowledged_instance(
    server_factory: Callable[..., Server],
) -> None:
    quiet = {"stable_age_s": 2.0, "released_age_s": 1.0, "poll_interval_s": 0.2}
    server = server_factory(assembly=quiet, detector=NO_DETECTORS).start()
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(study, series, i, size=128) for i in range(1, 201)]
    acknowledged: list[str] = []

    def sender() -> None:
        ae = make_scu("MODALITY")
        ae.add_requested_context(datasets[0].SOPClassUID)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="TAMPERSCAN")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if "Status" not in status or status.Status != 0:
                    return
                acknowledged.append(str(ds.SOPInstanceUID))
        except Exception:
            return
        finally:
            if assoc.is_established:
                assoc.abort()

    thread = threading.Thread(target=sender)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    thread.join(timeout=60)
    assert 60 <= len(acknowledged) < 200, "the kill must land mid-transfer"

    server.start()  # restart: cleans partial files, resumes assembly and jobs
    instances_dir = server.data_dir / "instances"
    with server.db.session() as session:
        rows = session.scalars(select(Instance)).all()
    indexed = {row.sop_instance_uid: row for row in rows}
    assert set(acknowledged) <= set(indexed), "an acknowledged instance was lost"
    for row in rows:  # nothing indexed that is not on disk, byte for byte
        path = instances_dir / row.file_path
        assert path.is_file()
        stored = pydicom.dcmread(path)
        (sent,) = [d for d in datasets if d.SOPInstanceUID == row.sop_instance_uid]
        assert stored.PixelData == sent.PixelData and stored.InstanceNumber == sent.InstanceNumber
    assert not list(instances_dir.rglob(f"*{TEMP_SUFFIX}"))
    verdict = server.wait_for(lambda s: s.scalars(select(Verdict)).one_or_none())
    assert verdict.outcome == "not_scored"
    with server.db.session() as session:
        assert len(session.scalars(select(Job)).all()) == 1
    assert server.stop() == 0
