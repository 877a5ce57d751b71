"""The connection guard (scp/guard.py) against real sockets on loopback and a running SCP.

All of 127.0.0.0/8 is loopback on Linux: binding the client socket to 127.0.0.2 or 127.0.0.3
makes it a different host for the SCP's allow-list and per-host cap.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import StoragePresentationContexts
from sqlalchemy import select

from scp.refusals import Refusal, RefusalRecorder
from storage.db import Database
from storage.models import AuditEvent
from tamperscan.service import Service
from tests.dicom_helpers import ct_dataset, make_scu
from tests.pdu_helpers import (
    CONTEXTS,
    associate_rq,
    associations,
    connect,
    instances,
    raw_echo,
    read_pdu,
    reasons,
    store_one,
    wait_until,
)


def test_idle_connections_from_a_disallowed_host_do_not_stop_an_allowed_one(
    service_factory: Any,
) -> None:
    service = service_factory(scp={"allowed_hosts": ["127.0.0.1/32"], "max_associations": 2})
    idle = [connect(service.scp.port, source="127.0.0.2") for _ in range(20)]
    try:
        assert store_one(service) == 0x0000  # accepted and stored while the 20 are open
        assert instances(service) == 1
        assert wait_until(lambda: len(reasons(service, "connection.refused")) == 20)
        assert set(reasons(service, "connection.refused")) == {
            "host 127.0.0.2 not in scp.allowed_hosts"
        }
        # Closed at accept: the idle sockets read end-of-stream at once.
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_idle_allowed_connections_time_out_and_never_hold_an_association_slot(
    service_factory: Any,
) -> None:
    service = service_factory(
        scp={
            "association_request_timeout_s": 2.0,
            "max_associations": 1,
            "max_connections_per_host": 10,
        }
    )
    port = service.scp.port
    idle = [connect(port, source="127.0.0.3") for _ in range(12)]  # two over the per-host cap
    try:
        assert store_one(service) == 0x0000  # max_associations = 1: idle ones do not count
        started = time.monotonic()
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed by the SCP: per-host cap, or the timeout
        assert time.monotonic() - started < 4.0
        assert wait_until(lambda: len(reasons(service, "connection.refused")) == 12)
        refused = reasons(service, "connection.refused")
        assert refused.count("no A-ASSOCIATE-RQ within 2 s") == 10
        assert (
            refused.count(
                "host 127.0.0.3 already has 10 connections (scp.max_connections_per_host)"
            )
            == 2
        )
        assert store_one(service, seed=1) == 0x0000
    finally:
        for sock in idle:
            sock.close()


def test_pending_cap_refuses_at_accept_and_frees_at_the_deadline(service_factory: Any) -> None:
    service = service_factory(
        scp={"association_request_timeout_s": 2.0, "max_pending_connections": 3}
    )
    port = service.scp.port
    idle = [connect(port, source=f"127.0.0.{3 + i}") for i in range(3)]
    try:
        with connect(port) as extra:
            extra.settimeout(5)
            assert extra.recv(1) == b""  # the fourth waiting connection is closed at accept
        assert wait_until(lambda: len(reasons(service, "connection.refused")) >= 1)
        assert reasons(service, "connection.refused")[0] == (
            "3 connections already wait for A-ASSOCIATE-RQ (scp.max_pending_connections)"
        )
        time.sleep(2.3)  # the three idle ones are closed at their deadline
        assert store_one(service) == 0x0000
    finally:
        for sock in idle:
            sock.close()


def test_slow_association_request_is_cut_at_the_deadline(service_factory: Any) -> None:
    service = service_factory(scp={"association_request_timeout_s": 2.0})
    rq = associate_rq()
    with connect(service.scp.port) as sock:
        started = time.monotonic()
        sock.sendall(rq[:20])
        for byte in rq[20:30]:  # a byte every 0.3 s: each read succeeds, the deadline holds
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        sock.settimeout(5)
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 6.0
    assert wait_until(lambda: bool(reasons(service, "connection.refused")))
    assert reasons(service, "connection.refused")[0].startswith(
        "A-ASSOCIATE-RQ not complete within 2 s: "
    )


def test_a_4_gib_first_pdu_is_refused_at_its_header(service: Service) -> None:
    with connect(service.scp.port, source="127.0.0.2") as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x07  # A-ABORT, before any body byte
        assert answer[1][2:] == bytes([0x02, 0x06])  # service provider, invalid parameter
        with pytest.raises(OSError):  # the SCP closed the connection: the 16 MiB cannot go
            for _ in range(256):
                sock.sendall(b"\0" * 65536)
    assert wait_until(lambda: bool(reasons(service, "connection.refused")))
    assert reasons(service, "connection.refused") == [
        f"A-ASSOCIATE-RQ declares {0xFFFFFFFF} bytes, more than 1048576"
    ]


def test_a_pdu_over_max_pdu_size_aborts_the_association(service_factory: Any) -> None:
    service = service_factory(scp={"max_pdu_size": 65536})
    with connect(service.scp.port) as sock:
        sock.sendall(associate_rq(contexts=CONTEXTS))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x02
        sock.sendall(struct.pack(">BBL", 0x04, 0, 65537))  # P-DATA-TF one byte over
        abort = read_pdu(sock)
        assert abort is not None and abort[0] == 0x07
        assert abort[1][2:] == bytes([0x02, 0x06])
    assert wait_until(lambda: associations(service)[-1].outcome == "aborted")
    record = associations(service)[-1]
    assert record.reject_reason == (
        "P_DATA_TF PDU declares 65537 bytes, more than scp.max_pdu_size 65536"
    )
    assert reasons(service, "association.aborted") == [record.reject_reason]
    assert raw_echo(service.scp.port) == 0x0000


def test_an_association_request_longer_than_max_pdu_size_is_accepted(
    service_factory: Any,
) -> None:
    # max_pdu_size limits the PDUs after A-ASSOCIATE-RQ; 120 proposed contexts (about what DCMTK's
    # storescu sends) make an RQ of about 8 KB, more than the smallest max_pdu_size allowed.
    service = service_factory(scp={"max_pdu_size": 4096})
    ae = make_scu()
    for context in StoragePresentationContexts:
        ae.add_requested_context(context.abstract_syntax, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    assert assoc.send_c_store(ct_dataset(generate_uid(), generate_uid())).Status == 0
    assoc.release()
    assert instances(service) == 1


def test_pdus_up_to_max_pdu_size_are_received(service_factory: Any) -> None:
    # A 512x512 CT (512 KiB) crosses many full-size PDUs: the cap must not refuse them.
    service = service_factory(scp={"max_pdu_size": 16384})
    ae = make_scu()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    assert assoc.send_c_store(ct_dataset(generate_uid(), generate_uid(), size=512)).Status == 0
    assoc.release()
    assert instances(service) == 1


def test_stop_does_not_wait_for_idle_connections(service_factory: Any) -> None:
    service = service_factory(scp={"association_request_timeout_s": 30.0})
    idle = [connect(service.scp.port) for _ in range(5)]
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 5.0
    for sock in idle:
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed at stop, not left to time out
        sock.close()


def test_connect_and_close_is_not_an_association(service: Service) -> None:
    for _ in range(20):
        socket.create_connection(("127.0.0.1", service.scp.port)).close()
    assert raw_echo(service.scp.port) == 0x0000
    assert len(associations(service)) == 1  # the echo; no row or thread for the 20 probes


def test_a_refusal_flood_beyond_the_queue_is_counted_not_lost(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    recorder = RefusalRecorder(db, tls=False, capacity=3)
    for i in range(10):  # the writer is not running yet: the queue fills after three
        recorder.add(Refusal("192.0.2.7", 1000 + i, "host 192.0.2.7 not in scp.allowed_hosts"))
    recorder.start()
    recorder.stop()
    with db.session() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        details = [e.detail for e in events]
    assert len(details) == 4
    assert details[-1] == {"reason": "record queue full", "count": 7}
