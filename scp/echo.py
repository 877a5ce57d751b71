"""C-ECHO as a client: is a DICOM node (ours or a peer) up and willing to talk to us?"""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    detail: str


def echo(
    host: str, port: int, called_aet: str, calling_aet: str = "TAMPERSCAN-CLI", timeout: float = 10
) -> EchoResult:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        return EchoResult(False, f"association rejected (reason {primitive.reason_str})")
    if not assoc.is_established:
        return EchoResult(False, f"no association with {host}:{port} (aborted or unreachable)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        return EchoResult(False, "no C-ECHO response")
    if status.Status != 0x0000:
        return EchoResult(False, f"C-ECHO status 0x{status.Status:04X}")
    return EchoResult(True, f"{called_aet}@{host}:{port} answered C-ECHO")
