"""Seeded raw-PDU fuzzing of a running SCP: garbage, truncated PDUs, huge declared lengths,
wrong PDU types, malformed DIMSE and stalled connections. Every input must leave a record
(refusal or abort), the SCP must keep answering C-ECHO and storing between batches, and no
association thread may be left behind."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from storage.models import AuditEvent
from tamperscan.service import Service
from tests.pdu_helpers import (
    CONTEXTS,
    acceptor_threads,
    associate_rq,
    command_set,
    connect,
    echo_rq,
    instances,
    p_data,
    raw_echo,
    read_pdu,
    store_one,
    wait_until,
)

SEED = 20261213
PER_FAMILY = 12
RECORD_ACTIONS = ("connection.refused", "association.rejected", "association.aborted")
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]

Rng = np.random.Generator


def records(service: Service) -> int:
    with service.db.session() as session:
        count = session.scalar(
            select(func.count(AuditEvent.id)).where(AuditEvent.action.in_(RECORD_ACTIONS))
        )
    return int(count or 0)


def _bytes(rng: Rng, low: int, high: int) -> bytes:
    return rng.integers(0, 256, int(rng.integers(low, high)), dtype=np.uint8).tobytes()


def _garbage(rng: Rng) -> bytes:
    """Random bytes that do not start with a valid PDU type."""
    return bytes([int(rng.integers(0x08, 0x100))]) + _bytes(rng, 0, 300)


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the SCP may already have aborted and closed
        sock.sendall(data)


def _finish(sock: socket.socket) -> None:
    """Read what the SCP answers until it closes (bounded), then close our end."""
    sock.settimeout(5)
    for _ in range(4):
        answer = read_pdu(sock)
        if answer is None or answer[0] in (0x03, 0x07):  # closed, rejected or aborted
            break
    sock.close()


# -- before any association -----------------------------------------------------------------


def first_garbage(rng: Rng, port: int, source: str) -> None:
    sock = connect(port, source)
    _send(sock, _garbage(rng))
    _finish(sock)


def first_truncated(rng: Rng, port: int, source: str) -> None:
    rq = associate_rq(contexts=CONTEXTS)
    sock = connect(port, source)
    _send(sock, rq[: int(rng.integers(1, len(rq)))])
    sock.shutdown(socket.SHUT_WR)  # cut: the rest never comes
    _finish(sock)


def first_huge(rng: Rng, port: int, source: str) -> None:
    pdu_type = int(rng.integers(1, 8))
    length = int(rng.integers(2**21, 2**32))
    sock = connect(port, source)
    _send(sock, struct.pack(">BBL", pdu_type, 0, length) + _bytes(rng, 0, 4096))
    _finish(sock)


def first_wrong_type(rng: Rng, port: int, source: str) -> None:
    pdu_type = int(rng.choice([2, 3, 4, 5, 6, 7, int(rng.integers(8, 256))]))
    body = _bytes(rng, 4, 200)
    sock = connect(port, source)
    _send(sock, struct.pack(">BBL", pdu_type, 0, len(body)) + body)
    _finish(sock)


def first_bad_items(rng: Rng, port: int, source: str) -> None:
    """A well-framed A-ASSOCIATE-RQ whose items are garbage."""
    rq = bytearray(associate_rq(contexts=CONTEXTS))
    start = 6 + 68
    for i in rng.integers(start, len(rq), int(rng.integers(1, 12))):
        rq[int(i)] = int(rng.integers(0, 256))
    sock = connect(port, source)
    _send(sock, bytes(rq))
    _finish(sock)


# -- inside an association ------------------------------------------------------------------


def _associated(port: int, source: str) -> socket.socket:
    sock = connect(port, source)
    sock.sendall(associate_rq(contexts=CONTEXTS))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == 0x02, answer
    return sock


def _malformed_command(rng: Rng) -> bytes:
    choice = int(rng.integers(0, 6))
    if choice == 0:
        return p_data(int(rng.integers(5, 256)), echo_rq())  # unknown context id
    if choice == 1:
        return p_data(1, command_set(AffectedSOPClassUID=Verification, MessageID=1))
    if choice == 2:
        return p_data(1, command_set(CommandField=[0x30, 0x01], MessageID=1))
    if choice == 3:
        field = int(rng.integers(0x0100, 0x7FFF))
        return p_data(1, command_set(CommandField=field, MessageID=1, CommandDataSetType=0x0101))
    if choice == 4:
        return p_data(1, _bytes(rng, 1, 400))  # garbled command bytes
    long_uid = "1." + "2" * int(rng.integers(63, 120))
    return p_data(
        3,
        command_set(
            AffectedSOPClassUID=CTImageStorage,
            CommandField=0x0001,
            MessageID=1,
            Priority=0,
            CommandDataSetType=0x0000,
            AffectedSOPInstanceUID=long_uid,
        ),
    ) + p_data(3, _bytes(rng, 10, 500), command=False)


def assoc_garbage(rng: Rng, port: int, source: str) -> None:
    sock = _associated(port, source)
    _send(sock, _garbage(rng))
    _finish(sock)


def assoc_huge(rng: Rng, port: int, source: str) -> None:
    sock = _associated(port, source)
    pdu_type = int(rng.choice([1, 2, 4, 5, 6]))
    _send(sock, struct.pack(">BBL", pdu_type, 0, int(rng.integers(2**20, 2**32))))
    _finish(sock)


def assoc_wrong_type(rng: Rng, port: int, source: str) -> None:
    sock = _associated(port, source)
    choice = int(rng.integers(0, 4))
    if choice == 0:
        _send(sock, associate_rq(contexts=CONTEXTS))  # a second A-ASSOCIATE-RQ
    elif choice == 1:
        body = _bytes(rng, 4, 100)
        _send(sock, struct.pack(">BBL", int(rng.choice([2, 3, 6])), 0, len(body)) + body)
    elif choice == 2:
        _send(sock, struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # the peer aborts
    else:
        _send(sock, struct.pack(">BBL", int(rng.integers(8, 256)), 0, 4) + b"\0" * 4)
    _finish(sock)


def assoc_truncated(rng: Rng, port: int, source: str) -> None:
    sock = _associated(port, source)
    pdu = p_data(1, echo_rq())
    _send(sock, pdu[: int(rng.integers(1, len(pdu)))])
    sock.shutdown(socket.SHUT_WR)
    _finish(sock)


def assoc_malformed_dimse(rng: Rng, port: int, source: str) -> None:
    sock = _associated(port, source)
    _send(sock, _malformed_command(rng))
    _finish(sock)


FAMILIES: list[Callable[[Rng, int, str], None]] = [
    first_garbage,
    first_truncated,
    first_huge,
    first_wrong_type,
    first_bad_items,
    assoc_garbage,
    assoc_huge,
    assoc_wrong_type,
    assoc_truncated,
    assoc_malformed_dimse,
]


def _stall(port: int, data: bytes, source: str, associate: bool) -> None:
    sock = _associated(port, source) if associate else connect(port, source)
    _send(sock, data)
    sock.settimeout(15)
    while read_pdu(sock) is not None:  # wait for the SCP to give up on us
        pass
    sock.close()


def _check_alive(service: Service, seed: int, threads_before: int) -> None:
    assert raw_echo(service.scp.port) == 0x0000
    assert store_one(service, seed=seed) == 0x0000
    assert wait_until(lambda: acceptor_threads() <= threads_before, timeout=10)
    assert any(t.name == "scp-accept" and t.is_alive() for t in threading.enumerate())


@pytest.mark.slow
def test_raw_pdu_fuzz_every_input_recorded_and_scp_keeps_serving(service_factory: Any) -> None:
    service = service_factory(
        scp={
            "association_request_timeout_s": 3.0,
            "network_timeout_s": 2.0,
            "max_pdu_size": 65536,
            "max_connections_per_host": 40,
        }
    )
    port = service.scp.port
    rng = np.random.default_rng(SEED)
    threads_before = acceptor_threads()
    started = time.monotonic()
    total = 0
    for batch, family in enumerate(FAMILIES):
        for _ in range(PER_FAMILY):
            before = records(service)
            source = str(rng.choice(SOURCES))
            family(rng, port, source)
            assert wait_until(lambda n=before: records(service) > n, timeout=8), (
                f"{family.__name__} #{total}: no refusal or abort recorded"
            )
            total += 1
        _check_alive(service, seed=batch, threads_before=threads_before)

    # Stalled connections, all at once: before the header, inside the A-ASSOCIATE-RQ, and
    # inside a P-DATA-TF PDU of a running association.
    before = records(service)
    rq = associate_rq(contexts=CONTEXTS)
    stalls = [
        (b"", False),
        (rq[:3], False),
        (rq[:40], False),
        (rq[:-5], False),
        (p_data(1, echo_rq())[:9], True),
        (struct.pack(">BBL", 0x04, 0, 4000) + b"\0" * 100, True),
    ] * 2
    workers = [
        threading.Thread(target=_stall, args=(port, data, SOURCES[i % 4], assoc))
        for i, (data, assoc) in enumerate(stalls)
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    _check_alive(service, seed=99, threads_before=threads_before + 4)  # 4 stalled associations
    for worker in workers:
        worker.join(30)
    assert not any(worker.is_alive() for worker in workers)
    assert wait_until(lambda: records(service) >= before + len(stalls), timeout=10)
    total += len(stalls)
    _check_alive(service, seed=100, threads_before=threads_before)

    assert instances(service) == len(FAMILIES) + 2
    assert total == len(FAMILIES) * PER_FAMILY + len(stalls)
    assert time.monotonic() - started < 90
