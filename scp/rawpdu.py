"""The few DICOM Upper Layer PDUs the connection guard reads or writes itself (PS3.8 section 9.3).

The guard looks at a connection before pynetdicom does: it reads the first PDU, checks that it
is an A-ASSOCIATE-RQ of a sane length with printable AE titles, and answers refusals with an
A-ASSOCIATE-RJ or A-ABORT. Pure byte handling: no sockets, no database here.
"""

from __future__ import annotations

import struct
from enum import IntEnum

HEADER_LENGTH = 6  # PDU type, reserved, 4-byte big-endian length
# Fixed fields of an A-ASSOCIATE-RQ after the header: protocol version, reserved, called AE,
# calling AE, 32 reserved bytes. Items (contexts, user information) follow.
ASSOCIATE_RQ_FIXED = 2 + 2 + 16 + 16 + 32
# An A-ASSOCIATE-RQ proposing 128 contexts with a dozen transfer syntaxes each, plus a user
# identity token, stays well under this; anything larger is refused before it is read.
ASSOCIATE_RQ_MAX = 1024 * 1024


class PduType(IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortReason(IntEnum):
    """A-ABORT reasons when the service provider (source 2) aborts."""

    NOT_SPECIFIED = 0x00
    UNRECOGNISED_PDU = 0x01
    UNEXPECTED_PDU = 0x02
    INVALID_PARAMETER = 0x06


def parse_header(header: bytes) -> tuple[int, int]:
    """(PDU type, declared length) of a 6-byte PDU header."""
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, length


def is_known_type(pdu_type: int) -> bool:
    return pdu_type in {t.value for t in PduType}


def describe_type(pdu_type: int) -> str:
    try:
        return PduType(pdu_type).name
    except ValueError:
        return f"unknown type 0x{pdu_type:02X}"


def first_pdu_problem(pdu_type: int, length: int) -> tuple[str, AbortReason] | None:
    """Why a connection's first PDU header is refused before its body is read, if it is."""
    if pdu_type != PduType.ASSOCIATE_RQ:
        known = is_known_type(pdu_type)
        reason = AbortReason.UNEXPECTED_PDU if known else AbortReason.UNRECOGNISED_PDU
        return f"first PDU is {describe_type(pdu_type)}, not A-ASSOCIATE-RQ", reason
    if length < ASSOCIATE_RQ_FIXED:
        return f"A-ASSOCIATE-RQ of {length} bytes is too short", AbortReason.INVALID_PARAMETER
    if length > ASSOCIATE_RQ_MAX:
        return (
            f"A-ASSOCIATE-RQ declares {length} bytes, more than {ASSOCIATE_RQ_MAX}",
            AbortReason.INVALID_PARAMETER,
        )
    return None


def ae_titles(pdu: bytes) -> tuple[bytes, bytes]:
    """Raw (called, calling) AE title fields of a complete A-ASSOCIATE-RQ, header included."""
    start = HEADER_LENGTH + 4
    return pdu[start : start + 16], pdu[start + 16 : start + 32]


def ae_title_problem(raw: bytes) -> str | None:
    """Why an AE title field is not a valid AE title (PS3.5 AE: printable ASCII, no backslash)."""
    if raw.strip(b" ") == b"":
        return "is all spaces"
    for byte in raw:
        if byte == 0:
            return "contains NUL"
        if byte > 0x7E:
            return f"contains non-ASCII byte 0x{byte:02X}"
        if byte < 0x20:
            return f"contains control byte 0x{byte:02X}"
        if byte == 0x5C:
            return "contains a backslash"
    return None


def printable(raw: bytes, limit: int = 16) -> str:
    """An AE title field as it may be stored and shown: escaped, stripped, at most ``limit``."""
    return ascii(raw.decode("latin-1").strip(" "))[1:-1][:limit]


def associate_rj(result: int, source: int, diagnostic: int) -> bytes:
    return struct.pack(">BBLBBBB", PduType.ASSOCIATE_RJ, 0, 4, 0, result, source, diagnostic)


def abort(reason: AbortReason) -> bytes:
    """An A-ABORT from the service provider (source 2) with ``reason``."""
    return struct.pack(">BBLBBBB", PduType.ABORT, 0, 4, 0, 0, 0x02, reason)
