"""Fuzzing a running ``tamperscan serve`` with malformed DICOM, seeded and bounded.

1,000 malformed instances (every family of ``tests.malformed_families``, details drawn from
one seed) go over C-STORE in batches of 50, and 100 more as STOW-RS parts. After each batch
the service must answer C-ECHO and store a valid instance. At the end the process is still
running with no traceback in its log, every malformed input got a failure status of its
family (or its association was aborted and recorded), none of them is indexed or on disk,
every valid one is, and every refusal is in the audit trail. Change ``SEED`` to explore; a
failure prints the family and the status.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.uid import CTImageStorage
from pynetdicom import _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from scp.dispatch import multipart_related
from storage.models import Association, AuditEvent, Instance
from tests.dicom_helpers import make_scu
from tests.malformed import SYNTAXES, Case, valid_case
from tests.malformed_families import malformed_cases
from tests.test_service_process import Server

pytestmark = pytest.mark.slow

SEED = 20261202
C_STORE_CASES, STOW_CASES, BATCH, STOW_PARTS = 1000, 100, 50, 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send each file's bytes exactly as they are
    server = Server(tmp_path, worker={"enabled": False}, admin={"port": 0}).start()
    yield server
    server.close()
    _config.STORE_SEND_CHUNKED_DATASET = before


def _associate(server: Server) -> Any:
    ae = make_scu("FUZZER")
    for syntax in SYNTAXES:
        ae.add_requested_context(CTImageStorage, [syntax])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TAMPERSCAN")
    assert assoc.is_established, "the service refused a legitimate association"
    return assoc


def _send_batch(server: Server, cases: list[Case], folder: Path) -> list[int | None]:
    """Each case's status; None where the association was aborted (then a new one is made)."""
    statuses: list[int | None] = []
    assoc = _associate(server)
    for n, case in enumerate(cases):
        path = folder / f"{n}.dcm"
        path.write_bytes(case.data)
        answer = assoc.send_c_store(path) if assoc.is_established else None
        if answer is None or "Status" not in answer:
            statuses.append(None)
            assoc = _associate(server)
        else:
            statuses.append(int(answer.Status))
    assoc.release()
    return statuses


def _echo_and_store_valid(server: Server, rng: random.Random, folder: Path) -> str:
    assoc = _associate(server)
    try:
        assert int(assoc.send_c_echo().Status) == 0
        case = valid_case(rng)
        path = folder / "valid.dcm"
        path.write_bytes(case.data)
        assert int(assoc.send_c_store(path).Status) == 0
    finally:
        assoc.release()
    return case.sop_instance_uid


def _stow(server: Server, cases: list[Case]) -> list[int]:
    port = _http_port(server)
    body, content_type = multipart_related([c.data for c in cases])
    response = requests.post(
        f"http://127.0.0.1:{port}/dicom-web/studies",
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 409, response.text
    return [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]


def _http_port(server: Server) -> int:
    """The HTTP server picked a free port; the log line says which."""
    for line in server.log.read_text().splitlines():
        if "HTTP server listening" in line and "port=" in line:
            return int(line.split("port=")[1].split()[0])
    raise AssertionError("no HTTP port in the log")


def _count(server: Server, query: Callable[[], Any]) -> int:
    with server.db.reading() as session:
        return int(session.scalar(query()) or 0)


def test_a_thousand_malformed_instances_are_refused_and_the_service_keeps_working(
    server: Server, tmp_path: Path
) -> None:
    cases = malformed_cases(C_STORE_CASES + STOW_CASES, SEED)
    rng = random.Random(SEED + 1)
    valid: list[str] = []
    wrong: list[tuple[str, str]] = []
    aborted = 0
    for start in range(0, C_STORE_CASES, BATCH):
        batch = cases[start : start + BATCH]
        folder = tmp_path / f"batch{start}"
        folder.mkdir()
        for case, status in zip(batch, _send_batch(server, batch, folder), strict=True):
            if status is None:
                aborted += 1
            elif status not in case.expected:
                wrong.append((case.family, f"0x{status:04X}"))
        assert server.process is not None and server.process.poll() is None, "serve died"
        valid.append(_echo_and_store_valid(server, rng, folder))
    stow_cases = cases[C_STORE_CASES:]
    for start in range(0, STOW_CASES, STOW_PARTS):
        part = stow_cases[start : start + STOW_PARTS]
        for case, status in zip(part, _stow(server, part), strict=True):
            if status not in case.expected:
                wrong.append((f"stow {case.family}", f"0x{status:04X}"))
    assert wrong == [], f"{len(wrong)} inputs got the wrong answer"
    assert server.process.poll() is None
    assert "Traceback" not in server.log.read_text()  # no handler crashed, none was caught
    with server.db.reading() as session:
        indexed = set(session.scalars(select(Instance.sop_instance_uid)).all())
    assert indexed == set(valid)  # every valid one stored and indexed, nothing malformed
    files = [p for p in (server.data_dir / "instances").rglob("*") if p.is_file()]
    assert len(files) == len(valid)
    refused = _count(
        server,
        lambda: select(func.count(AuditEvent.id)).where(AuditEvent.action == "instance.rejected"),
    )
    assert refused == C_STORE_CASES + STOW_CASES - aborted
    if aborted:
        recorded = _count(
            server,
            lambda: select(func.count(Association.id)).where(Association.outcome == "aborted"),
        )
        assert recorded >= aborted
