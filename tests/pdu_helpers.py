"""Raw DICOM Upper Layer PDUs over plain sockets, for tests that must send what no SCU would,
and the SCP records those tests read back."""

from __future__ import annotations

import socket
import struct
import threading
import time
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from storage.models import Association, AuditEvent, Instance
from tests.dicom_helpers import ct_dataset, make_scu

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def ae_field(title: bytes | str) -> bytes:
    raw = title.encode() if isinstance(title, str) else title
    return raw.ljust(16, b" ")[:16]


def associate_rq(
    called: bytes | str = "TAMPERSCAN",
    calling: bytes | str = "RAWSCU",
    contexts: list[tuple[int, str, list[str]]] | None = None,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU; contexts are (id, abstract syntax, transfer syntaxes)."""
    contexts = contexts or [(1, str(Verification), [str(ImplicitVRLittleEndian)])]
    proposed = b"".join(
        _item(
            0x20,
            struct.pack(">BBBB", cid, 0, 0, 0)
            + _item(0x30, abstract.encode())
            + b"".join(_item(0x40, ts.encode()) for ts in syntaxes),
        )
        for cid, abstract, syntaxes in contexts
    )
    user = _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.826.0.1.3"))
    body = (
        struct.pack(">HH", 1, 0)
        + ae_field(called)
        + ae_field(calling)
        + b"\0" * 32
        + _item(0x10, APPLICATION_CONTEXT)
        + proposed
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def p_data(context_id: int, payload: bytes, command: bool = True, last: bool = True) -> bytes:
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def release_rq() -> bytes:
    return struct.pack(">BBLI", 0x05, 0, 4, 0)


def command_set(**elements: Any) -> bytes:
    """A DIMSE command set (implicit VR little endian) with its group length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    assert body is not None
    ds.CommandGroupLength = len(body)
    full = encode(ds, True, True)
    assert full is not None
    return full


def echo_rq(message_id: int = 1) -> bytes:
    return command_set(
        AffectedSOPClassUID=Verification,
        CommandField=0x0030,
        MessageID=message_id,
        CommandDataSetType=0x0101,
    )


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """(type, body) of the next PDU, or None when the peer closed the connection."""
    header = _read(sock, 6)
    if len(header) < 6:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, _read(sock, length)


def _read(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def response_status(body: bytes) -> int:
    """The Status of a DIMSE response carried in one P-DATA-TF PDU body."""
    _length, _cid, _header = struct.unpack(">IBB", body[:6])
    ds = decode(BytesIO(body[6:]), True, True)
    return int(ds.Status)


def raw_echo(port: int, source: str = "127.0.0.1") -> int:
    """C-ECHO over a raw socket; the status, after a clean release."""
    with connect(port, source) as sock:
        sock.sendall(associate_rq())
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x02, answer
        sock.sendall(p_data(1, echo_rq()))
        reply = read_pdu(sock)
        assert reply is not None and reply[0] == 0x04, reply
        sock.sendall(release_rq())
        read_pdu(sock)
        return response_status(reply[1])


def count_records(db: Any) -> int:
    """Audit rows plus association rows: a refusal or an abort adds at least one."""
    with db.session() as session:
        audits = session.scalar(select(func.count(AuditEvent.id))) or 0
        associations = session.scalar(select(func.count(Association.id))) or 0
    return int(audits) + int(associations)


def wait_until(condition: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


CONTEXTS = [
    (1, str(Verification), [str(ImplicitVRLittleEndian)]),
    (3, str(CTImageStorage), [str(ImplicitVRLittleEndian)]),
]


def reasons(service: Any, action: str) -> list[str]:
    with service.db.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        return [str((e.detail or {}).get("reason")) for e in events]


def associations(service: Any) -> list[Association]:
    with service.db.session() as session:
        return list(session.scalars(select(Association).order_by(Association.id)).all())


def store_one(service: Any, seed: int = 0) -> int:
    ae = make_scu()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    try:
        ds = ct_dataset(generate_uid(), generate_uid(), seed=seed)
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def instances(service: Any) -> int:
    with service.db.session() as session:
        return len(session.scalars(select(Instance.id)).all())


def acceptor_threads() -> int:
    return sum("AcceptorThread" in t.name for t in threading.enumerate())
