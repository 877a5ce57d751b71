"""How the SCP ends and records associations it refuses or aborts: invalid AE titles, malformed
DIMSE messages that killed pynetdicom threads, the association limit, 50 at once."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tamperscan.service import Service
from tests.dicom_helpers import ct_dataset, make_scu
from tests.pdu_helpers import (
    CONTEXTS,
    acceptor_threads,
    associate_rq,
    associations,
    command_set,
    connect,
    echo_rq,
    instances,
    p_data,
    raw_echo,
    read_pdu,
    reasons,
    wait_until,
)


@pytest.mark.parametrize(
    ("calling", "called", "diagnostic", "reason"),
    [
        (b"CT\0\0\0\0", b"TAMPERSCAN", 0x03, "calling AE title contains NUL"),
        (b" " * 16, b"TAMPERSCAN", 0x03, "calling AE title is all spaces"),
        ("CTÄ".encode("latin-1"), b"TAMPERSCAN", 0x03, "calling AE title contains non-ASCII"),
        (b"PACS", b"\0" * 16, 0x07, "called AE title contains NUL"),
    ],
    ids=["nul", "spaces", "non-ascii", "called-nul"],
)
def test_invalid_ae_titles_are_rejected_and_recorded(
    service: Service, calling: bytes, called: bytes, diagnostic: int, reason: str
) -> None:
    with connect(service.scp.port) as sock:
        sock.sendall(associate_rq(called=called, calling=calling))
        answer = read_pdu(sock)
    assert answer is not None and answer[0] == 0x03  # A-ASSOCIATE-RJ
    assert answer[1][1:] == bytes([0x01, 0x01, diagnostic])
    assert wait_until(lambda: len(associations(service)) == 1)
    record = associations(service)[0]
    assert record.outcome == "rejected"
    assert record.reject_reason is not None and record.reject_reason.startswith(reason)
    assert reasons(service, "association.rejected")[0].startswith(reason)
    assert raw_echo(service.scp.port) == 0x0000


def _store_rq(sop_instance_uid: str, sop_class: str = str(CTImageStorage)) -> bytes:
    return command_set(
        AffectedSOPClassUID=sop_class,
        CommandField=0x0001,
        MessageID=1,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance_uid,
    )


def _dataset() -> bytes:
    raw = encode(ct_dataset(generate_uid(), generate_uid()), True, True)
    assert raw is not None
    return raw


MALFORMED = {
    "102-char-sop-instance-uid": lambda: [
        p_data(3, _store_rq("1." + "2" * 100)),
        p_data(3, _dataset(), command=False),
    ],
    "context-id-out-of-range": lambda: [p_data(99, echo_rq())],
    "missing-command-field": lambda: [
        p_data(1, command_set(AffectedSOPClassUID=Verification, MessageID=1))
    ],
    "unhashable-list-command-field": lambda: [
        p_data(
            1,
            command_set(
                AffectedSOPClassUID=Verification,
                CommandField=[0x0030, 0x0001],
                MessageID=1,
                CommandDataSetType=0x0101,
            ),
        )
    ],
    "unknown-command-field-keyerror": lambda: [
        p_data(
            1,
            command_set(
                AffectedSOPClassUID=Verification,
                CommandField=0x7777,
                MessageID=1,
                CommandDataSetType=0x0101,
            ),
        )
    ],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_dimse_ends_in_a_recorded_abort(service: Service, name: str) -> None:
    threads_before = acceptor_threads()
    with connect(service.scp.port) as sock:
        sock.sendall(associate_rq(contexts=CONTEXTS))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x02
        started = time.monotonic()
        for pdu in MALFORMED[name]():
            sock.sendall(pdu)
        reply = read_pdu(sock)  # an A-ABORT, a failure status, or the connection closed
        assert time.monotonic() - started < 5.0  # never left waiting for its own timeout
        if reply is not None and reply[0] == 0x04:
            status = struct.unpack("<H", reply[1][-2:])[0]
            assert status != 0x0000
        else:
            assert reply is None or reply[0] == 0x07
    assert wait_until(lambda: associations(service)[-1].outcome == "aborted")
    assert associations(service)[-1].reject_reason
    assert len(reasons(service, "association.aborted")) == 1
    assert wait_until(lambda: acceptor_threads() <= threads_before)  # no thread left behind
    assert raw_echo(service.scp.port) == 0x0000


def test_an_association_over_the_limit_is_recorded_as_rejected(service_factory: Any) -> None:
    service = service_factory(scp={"max_associations": 1})
    first, second = make_scu("FIRST"), make_scu("SECOND")
    for ae in (first, second):
        ae.add_requested_context(Verification)
    held = first.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert held.is_established
    refused = second.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert refused.is_rejected and refused.acceptor.primitive.result == 0x02
    held.release()
    outcomes = ["released", "rejected"]
    assert wait_until(lambda: [a.outcome for a in associations(service)] == outcomes)
    record = associations(service)[1]
    assert record.calling_ae == "SECOND" and record.reject_reason is not None
    assert "max_associations" in record.reject_reason
    assert len(reasons(service, "association.rejected")) == 1


@pytest.mark.slow
def test_fifty_concurrent_associations_all_stored_and_recorded(service_factory: Any) -> None:
    service = service_factory(
        scp={"max_associations": 50, "max_connections_per_host": 50, "max_pending_connections": 64}
    )
    port, count, per_association = service.scp.port, 50, 2
    study = generate_uid()
    barrier = threading.Barrier(count, timeout=60)
    results: list[list[int]] = [[] for _ in range(count)]

    def send(index: int) -> None:
        ae = make_scu(f"SCU{index:02d}")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
        barrier.wait()  # all 50 established at the same time before anything is sent
        if not assoc.is_established:
            return
        for k in range(per_association):
            ds = ct_dataset(study, generate_uid(), index=index * 10 + k, size=32)
            results[index].append(int(assoc.send_c_store(ds).Status))
        assoc.release()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [[0x0000] * per_association] * count
    assert instances(service) == count * per_association
    assert wait_until(lambda: all(a.outcome == "released" for a in associations(service)))
    records = associations(service)
    assert len(records) == count
    assert sorted(a.calling_ae for a in records) == [f"SCU{i:02d}" for i in range(count)]
    assert all(a.instances_stored == per_association for a in records)
