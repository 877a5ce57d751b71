"""The DICOM Storage SCP (and Verification SCP) the PACS forwards studies to.

Every storage SOP class is accepted in every transfer syntax pydicom knows and stored exactly
as sent. The C-STORE handler runs in the association's thread and answers only once
``InstanceStore.store`` has made the file durable and committed its index row.

Connections reach pynetdicom through ``scp.guard`` (allow-list, connection caps, A-ASSOCIATE-RQ
deadline, PDU length cap); this module records what the guard refuses and how each association
ended, including associations whose pynetdicom thread died.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association as PynetAssociation
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ABORT
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.guard import GuardedServer, GuardLimits
from scp.ingest import ingest
from scp.records import Session, add_association, close_record, close_stale
from scp.refusals import Refusal, RefusalRecorder
from scp.settings import ScpSettings
from storage.db import Database
from storage.instances import InstanceStore, Origin

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent by the service user.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_NO_REASON = (0x01, 0x01, 0x01)


def build_ssl_context(settings: ScpSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(tls.client_ca_file))
    return context


class _SupportedContexts(list[PresentationContext]):
    """The server's supported contexts, copied cheaply for each new association.

    pynetdicom deep-copies them for every association so negotiation cannot change the
    server's own; with every storage class in every transfer syntax that is thousands of UIDs,
    each re-validated by pydicom: tens of milliseconds per association. A context's only
    mutable state is its transfer syntax list, so a shallow copy with its own list is as safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            copies.append(clone)
        return copies


class StorageSCP:
    def __init__(
        self,
        settings: ScpSettings,
        db: Database,
        store: InstanceStore,
        reuse_port: bool = False,
        close_stale_on_start: bool = True,
    ) -> None:
        """``reuse_port``: one of several receiver processes on the port; the process that
        starts them closes the previous run's associations (``close_stale_on_start``)."""
        self.settings = settings
        self.db = db
        self.store = store
        self.reuse_port = reuse_port
        self.close_stale_on_start = close_stale_on_start
        self._sessions: dict[int, Session] = {}
        self._requested: set[int] = set()  # associations our EVT_REQUESTED handler saw
        self._lock = threading.Lock()
        self._ae: AE | None = None
        self._server: GuardedServer | None = None
        self._refusals = RefusalRecorder(db, tls=settings.tls.enabled)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 in tests)."""
        assert self._server is not None, "SCP not started"
        return int(self._server.server_address[1])

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        # Counts association threads; the guard starts one only for a connection that has
        # delivered a valid A-ASSOCIATE-RQ, so idle connections never count.
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_size
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        # Our EVT_REQUESTED handler checks AE titles and hosts itself, so it can audit them.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        return ae

    def close_stale_associations(self) -> int:
        """Associations a previous run left open ended when it did: record them as aborted."""
        return close_stale(self.db)

    def start(self) -> None:
        stale = self.close_stale_associations() if self.close_stale_on_start else 0
        if stale:
            log.warning("associations of a previous run marked aborted", extra={"count": stale})
        # Private and newer storage SOP classes a PACS forwards are accepted too; the C-STORE
        # handler still checks each dataset against its presentation context.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        self._ae = self._make_ae()
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_PDU_SENT, self._on_pdu),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACSE_SENT, self._on_acse_sent),
        ]
        s = self.settings
        limits = GuardLimits(
            allowed_hosts=s.host_allowed,
            max_connections_per_host=s.max_connections_per_host,
            max_pending_connections=s.max_pending_connections,
            association_request_timeout_s=s.association_request_timeout_s,
            max_pdu_size=s.max_pdu_size,
            network_timeout_s=s.network_timeout_s,
        )
        self._server = self._ae.make_server(
            (s.host, s.port),
            evt_handlers=handlers,
            ssl_context=build_ssl_context(s),
            server_class=GuardedServer,
            limits=limits,
            hooks=self,
            reuse_port=self.reuse_port,
        )
        self._server.contexts = _SupportedContexts(self._server.contexts)
        # Accepted sockets inherit this on Linux: each small C-STORE response goes out at
        # once instead of waiting on Nagle's algorithm and the peer's delayed ACK (~40 ms).
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._refusals.start()
        threading.Thread(target=self._server.serve_forever, name="scp-accept", daemon=True).start()
        log.info(
            "DICOM SCP listening",
            extra={
                "ae_title": self.settings.ae_title,
                "host": self.settings.host,
                "port": self.port,
                "tls": self.settings.tls.enabled,
            },
        )
        if not self.settings.allowed_calling_aets:
            log.warning("scp.allowed_calling_aets is empty: any calling AE title is accepted")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let running associations finish for ``grace_s``, then abort."""
        if self._server is None or self._ae is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + grace_s
        # Only established associations may be mid-transfer; a bare TCP connection (a port
        # probe, a load balancer check) that never sent A-ASSOCIATE-RQ is not waited for.
        while time.monotonic() < deadline and any(
            assoc.is_established for assoc in self._ae.active_associations
        ):
            time.sleep(0.05)
        for assoc in self._ae.active_associations:
            if assoc.is_established:
                log.warning(
                    "aborting association at shutdown", extra={"peer": assoc.requestor.address}
                )
            assoc.abort()
        self._server = None
        self._refusals.stop()
        log.info("DICOM SCP stopped")

    # -- what the connection guard reports (scp.guard.GuardHooks) ---------------------------

    def connection_refused(self, host: str, port: int, reason: str) -> None:
        self._refusals.add(Refusal(host, port, reason))

    def association_refused(
        self, host: str, port: int, called: str, calling: str, reason: str
    ) -> None:
        self._refusals.add(Refusal(host, port, reason, called=called, calling=calling))

    def pdu_refused(self, assoc: PynetAssociation, reason: str) -> None:
        with self._lock:
            state = self._sessions.get(id(assoc))
            if state is not None and state.abort_reason is None:
                state.abort_reason = reason[:128]

    def association_done(self, assoc: PynetAssociation) -> bool:
        """Close the record of an association whose thread ended without release or abort.

        pynetdicom's reactor thread can die on malformed input (an exception inside it) and
        leave the peer waiting; the guard calls this after the thread ended, whatever happened.
        """
        key = id(assoc)
        with self._lock:
            requested = key in self._requested
            self._requested.discard(key)
            state = self._sessions.pop(key, None)
        if state is not None:
            close_record(
                self.db,
                state,
                "aborted",
                state.abort_reason
                or "association thread stopped without A-RELEASE or A-ABORT (malformed input)",
                still_open=set(),
            )
            return True
        if not requested:  # pynetdicom refused the A-ASSOCIATE-RQ before our handler ran
            primitive = assoc.requestor.primitive
            self.association_refused(
                assoc.requestor.address,
                assoc.requestor.port,
                str(getattr(primitive, "called_ae_title", "") or "").strip(),
                str(getattr(primitive, "calling_ae_title", "") or "").strip(),
                "A-ASSOCIATE-RQ refused by the DICOM stack (undecodable or invalid)",
            )
            return not (assoc.is_rejected or assoc.is_aborted)
        return False

    # -- association lifecycle -------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        assoc: PynetAssociation = event.assoc
        with self._lock:
            self._requested.add(id(assoc))
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        host, port = assoc.requestor.address, assoc.requestor.port
        rejection: tuple[tuple[int, int, int], str] | None = None
        if not self.settings.host_allowed(host):
            rejection = (REJECT_NO_REASON, f"host {host} not in scp.allowed_hosts")
        elif (
            self.settings.allowed_calling_aets and calling not in self.settings.allowed_calling_aets
        ):
            rejection = (REJECT_CALLING_AE, f"calling AE {calling!r} not in allowed_calling_aets")
        elif self.settings.require_called_aet and called != self.settings.ae_title:
            rejection = (
                REJECT_CALLED_AE,
                f"called AE {called!r} is not {self.settings.ae_title!r}",
            )
        with self.db.session() as session:
            record = add_association(
                session,
                calling=calling,
                called=called,
                host=host,
                port=port,
                tls=self.settings.tls.enabled,
                rejection=rejection[1] if rejection else None,
            )
            session.flush()
            record_id = record.id
        if rejection:
            log.warning(
                "association rejected",
                extra={"calling_ae": calling, "peer": host, "reason": rejection[1]},
            )
            assoc.acse.send_reject(*rejection[0])
            assoc.kill()  # as pynetdicom's own rejections do: lets the A-ASSOCIATE-RJ go out
            return
        with self._lock:
            self._sessions[id(assoc)] = Session(record_id, calling, host)
        log.info("association accepted", extra={"calling_ae": calling, "peer": f"{host}:{port}"})

    def _end(self, event: evt.Event, outcome: str, reason: str | None = None) -> None:
        with self._lock:
            state = self._sessions.pop(id(event.assoc), None)
            still_open = set().union(*(s.studies for s in self._sessions.values()))
        if state is not None:
            close_record(self.db, state, outcome, state.abort_reason or reason, still_open)

    def _on_released(self, event: evt.Event) -> None:
        self._end(event, "released")

    def _on_aborted(self, event: evt.Event) -> None:
        self._end(event, "aborted")

    def _on_pdu(self, event: evt.Event) -> None:
        """Note who aborted and why, so the association record says so."""
        pdu = event.pdu
        if not isinstance(pdu, A_ABORT_RQ):
            return
        sent = event.event is evt.EVT_PDU_SENT
        who = "A-ABORT sent" if sent else "A-ABORT received"
        why = " (malformed or unexpected message)" if sent else ""
        self.pdu_refused(
            event.assoc,
            f"{who}{why}: source {pdu.source}, reason {pdu.reason_diagnostic}",
        )

    def _on_acse_sent(self, event: evt.Event) -> None:
        # pynetdicom aborting from the association thread (a message on an unknown context,
        # a timeout, our shutdown): this fires before EVT_ABORTED; the PDU goes out later.
        if isinstance(event.primitive, A_ABORT):
            reason = "A-ABORT sent (invalid message or context, timeout, or shutdown)"
            self.pdu_refused(event.assoc, reason)

    def _on_rejected(self, event: evt.Event) -> None:
        # pynetdicom's own rejection after our handler accepted (association limit reached).
        self._end(event, "rejected", "rejected by the DICOM stack (scp.max_associations reached?)")

    def _on_closed(self, event: evt.Event) -> None:
        # A connection dropped without A-RELEASE or A-ABORT: treat it as aborted.
        self._end(event, "aborted", "connection closed without A-RELEASE")

    # -- DIMSE services --------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> int | Dataset:
        with self._lock:
            state = self._sessions.get(id(event.assoc))
        origin = Origin(
            channel="dimse",
            calling_ae=state.calling_ae if state else None,
            peer_address=state.peer if state else event.assoc.requestor.address,
            association_id=state.record_id if state else None,
        )
        answer = self._receive(event, state, origin)
        if state is not None and isinstance(answer, Dataset):
            with self._lock:
                state.failed += 1
        return answer

    def _receive(self, event: evt.Event, state: Session | None, origin: Origin) -> int | Dataset:
        result = ingest(
            self.db,
            self.store,
            event.encoded_dataset(),
            lambda: (event.dataset, event.context.transfer_syntax, None),
            origin,
            negotiated_sop_class=event.context.abstract_syntax,
            announced_sop_instance=str(event.request.AffectedSOPInstanceUID or "") or None,
        )
        if not result.ok:
            answer = Dataset()
            answer.Status = result.status
            answer.ErrorComment = result.reason[:64]
            return answer
        if state is not None and result.outcome is not None:
            with self._lock:
                state.studies.add(result.outcome.study_id)
                state.stored += 1
        return 0x0000
