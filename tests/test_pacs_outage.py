"""A PACS outage with a real Orthanc: reports wait, retry, and arrive exactly once.

Orthanc is stopped for several times the retry back-off while three studies are received
and scored (their verdicts are "not scored": no model, which still sends an SR). Every
delivery attempt in the outage fails and is retried later; when Orthanc is started again on
the same ports and storage, each study's SR arrives, once: one SR per study in Orthanc, one
NewInstance change for it, one delivery row per verdict, delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from sqlalchemy import select

from detector.lab.phantoms import write_phantoms
from storage.models import Delivery, Study, Verdict
from tamperscan.config import load_config
from tamperscan.service import Service
from tests.dicom_helpers import free_port, make_scu, write_config
from tests.test_orthanc import Orthanc, pytestmark  # noqa: F401  (slow, needs Orthanc)

BACKOFF_INITIAL_S, BACKOFF_MAX_S, FAILURES = 0.5, 2.0, 4


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Orthanc, Service]]:
    scp_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", scp_port, free_port())
    path = write_config(
        tmp_path / "config.toml",
        scp_port,
        tmp_path / "data",
        delivery={
            "backoff_initial_s": BACKOFF_INITIAL_S,
            "backoff_max_s": BACKOFF_MAX_S,
            "max_attempts": 100,
            "poll_interval_s": 0.2,
        },
    )
    with path.open("a") as f:
        f.write(
            '\n[[delivery.dicom]]\nname = "orthanc"\nae_title = "ORTHANC"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\ntimeout_s = 3.0\n'
        )
    service = Service(load_config(path, environ={}))
    service.start()
    yield orthanc, service
    service.stop()
    orthanc.stop()


def _send_study(service: Service, folder: Path) -> str:
    files = sorted(folder.glob("*.dcm"))
    ae = make_scu("CT01")
    meta = pydicom.filereader.read_file_meta_info(files[0])
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    try:
        assert all(int(assoc.send_c_store(p).Status) == 0 for p in files)
    finally:
        assoc.release()
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _deliveries(service: Service) -> list[Delivery]:
    with service.db.reading() as session:
        return list(session.scalars(select(Delivery)).all())


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _srs_in_orthanc(orthanc: Orthanc) -> dict[str, list[str]]:
    """Study Instance UID -> SOP Instance UIDs of the SRs Orthanc holds."""
    found: dict[str, list[str]] = {}
    for instance in orthanc.get("/instances?expand"):
        tags = orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
        if tags.get("Modality") == "SR":
            found.setdefault(tags["StudyInstanceUID"], []).append(tags["SOPInstanceUID"])
    return found


def test_reports_survive_a_pacs_outage_and_arrive_exactly_once(
    world: tuple[Orthanc, Service], tmp_path: Path
) -> None:
    orthanc, service = world
    orthanc.stop()
    started = time.monotonic()
    studies = []
    for n in range(3):
        [folder] = write_phantoms(
            "CT", studies=1, slices=2, out_dir=tmp_path / f"p{n}", seed=40 + n, size=64
        )
        studies.append(_send_study(service, folder))
    # Scored and queued for delivery; every attempt fails while the PACS is away, until each
    # has backed off to the longest wait (failures 1, 2, 3, 4 wait 0.5, 1, 2, 2 s).
    _wait(
        lambda: (
            len(_deliveries(service)) == 3
            and all(d.attempts >= FAILURES for d in _deliveries(service))
        ),
        90,
        f"three deliveries that failed {FAILURES} times",
    )
    assert all(d.state == "pending" and d.last_error for d in _deliveries(service))
    failed_attempts = {d.id: d.attempts for d in _deliveries(service)}
    assert time.monotonic() - started > BACKOFF_INITIAL_S + 2 * BACKOFF_MAX_S

    orthanc.start()
    _wait(
        lambda: all(d.state == "delivered" for d in _deliveries(service)),
        BACKOFF_MAX_S * 10,
        "every delivery delivered after the PACS came back",
    )
    time.sleep(BACKOFF_MAX_S * 2)  # room for a duplicate to show up, if one were coming
    srs = _srs_in_orthanc(orthanc)
    assert sorted(srs) == sorted(studies)
    assert all(len(uids) == 1 for uids in srs.values()), srs
    changes = requests.get(f"{orthanc.url}/changes?limit=1000", timeout=30).json()["Changes"]
    new_instances = [c for c in changes if c["ChangeType"] == "NewInstance"]
    assert len(new_instances) == 3  # Orthanc only ever got our three SRs, each once
    deliveries = _deliveries(service)
    with service.db.reading() as session:
        verdicts = session.scalars(select(Verdict)).all()
        assert len(session.scalars(select(Study)).all()) == 3
    assert len(deliveries) == len(verdicts) == 3  # one delivery per verdict, none re-queued
    for delivery in deliveries:  # the failed attempts, then the one that got through
        assert delivery.attempts >= failed_attempts[delivery.id] + 1
