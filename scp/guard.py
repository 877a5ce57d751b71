"""The connection guard in front of pynetdicom: who may hold a socket, how long, how big a PDU.

pynetdicom starts an association thread for every accepted TCP connection, counts those threads
against ``maximum_associations``, checks nothing about the peer until A-ASSOCIATE-RQ has been
decoded, and reads any PDU length a peer declares. Ten silent connections could therefore
refuse every real association, and one header could make it buffer gigabytes (issue 13).

``GuardedServer`` replaces pynetdicom's accept path (``get_request`` / ``verify_request`` /
``process_request`` of its ``socketserver`` base):

- at accept, on the accepting thread: the host allow-list, a per-host connection cap and a cap
  on connections still waiting for A-ASSOCIATE-RQ; a refused socket is closed at once;
- on a short-lived thread of its own (not an association thread, so not counted): the TLS
  handshake and the whole A-ASSOCIATE-RQ must arrive within ``association_request_timeout_s``;
  its header must announce an A-ASSOCIATE-RQ of a sane length and its AE titles must be valid;
- only then pynetdicom gets the connection, with the PDU already read handed to it through
  ``GuardedAssociationSocket``, which also refuses, before reading it, any later PDU longer than
  ``max_pdu_size``;
- when the association thread ends, however it ended, the hooks are told, so an association
  whose pynetdicom thread died still gets a record (and its peer an A-ABORT, if pynetdicom did
  not already close the connection).

No database here: everything worth recording goes to ``GuardHooks``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from scp import rawpdu
from scp.rawpdu import AbortReason

log = logging.getLogger(__name__)


class GuardHooks(Protocol):
    """What the guard reports; implemented by the SCP, which records it."""

    def connection_refused(self, host: str, port: int, reason: str) -> None:
        """A connection closed before any association was requested."""

    def association_refused(
        self, host: str, port: int, called: str, calling: str, reason: str
    ) -> None:
        """An A-ASSOCIATE-RQ answered with A-ASSOCIATE-RJ by the guard itself."""

    def pdu_refused(self, assoc: Association, reason: str) -> None:
        """A PDU of a running association refused; the association is being aborted."""

    def association_done(self, assoc: Association) -> bool:
        """The association thread ended; True when it ended without a proper close."""


@dataclass(frozen=True)
class GuardLimits:
    allowed_hosts: Callable[[str], bool]
    max_connections_per_host: int
    max_pending_connections: int
    association_request_timeout_s: float
    max_pdu_size: int
    network_timeout_s: float


class _ConnectionTable:
    """Open connections per host and those still before A-ASSOCIATE-RQ, under one lock."""

    def __init__(self, limits: GuardLimits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._per_host: Counter[str] = Counter()
        self._pending: set[socket.socket] = set()

    def admit(self, host: str, sock: socket.socket) -> str | None:
        with self._lock:
            if self._per_host[host] >= self._limits.max_connections_per_host:
                return (
                    f"host {host} already has {self._per_host[host]} connections"
                    " (scp.max_connections_per_host)"
                )
            if len(self._pending) >= self._limits.max_pending_connections:
                return (
                    f"{len(self._pending)} connections already wait for A-ASSOCIATE-RQ"
                    " (scp.max_pending_connections)"
                )
            self._per_host[host] += 1
            self._pending.add(sock)
            return None

    def handed_over(self, sock: socket.socket) -> None:
        with self._lock:
            self._pending.discard(sock)

    def release(self, host: str, sock: socket.socket) -> None:
        with self._lock:
            self._pending.discard(sock)
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]

    def close_pending(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for sock in pending:
            _close(sock)

    def counts(self) -> tuple[int, int]:
        """(open connections, connections before A-ASSOCIATE-RQ)."""
        with self._lock:
            return sum(self._per_host.values()), len(self._pending)


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper, fed the A-ASSOCIATE-RQ the guard read, capping PDU lengths.

    pynetdicom's DUL reads each PDU as ``recv(6)`` (the header) then ``recv(length)``; a length
    above ``max_pdu_size`` is refused here, before a byte of it is read or buffered.
    """

    _prefix: bytearray
    _max_pdu: int
    _hooks: GuardHooks
    _expect_header: bool
    _last_type: int

    def arm(self, first_pdu: bytes, max_pdu: int, hooks: GuardHooks) -> None:
        self._prefix = bytearray(first_pdu)
        self._max_pdu = max_pdu
        self._hooks = hooks
        self._expect_header = True
        self._last_type = 0

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or super().ready

    def _read(self, nr_bytes: int) -> bytearray:
        if not self._prefix:
            return super().recv(nr_bytes)
        chunk = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        if len(chunk) < nr_bytes:
            chunk += super().recv(nr_bytes - len(chunk))
        return chunk

    def recv(self, nr_bytes: int) -> bytearray:
        if self._expect_header:
            data = self._read(nr_bytes)
            if nr_bytes == rawpdu.HEADER_LENGTH and len(data) == nr_bytes:
                self._last_type, _ = rawpdu.parse_header(bytes(data))
                if rawpdu.is_known_type(self._last_type):
                    self._expect_header = False  # pynetdicom reads the body next
                else:  # pynetdicom aborts: say why
                    self._hooks.pdu_refused(
                        self.assoc, f"unrecognised PDU type 0x{self._last_type:02X}"
                    )
            return data
        self._expect_header = True
        # The A-ASSOCIATE-RQ itself (still in the prefix) was checked by the guard against its
        # own limit: max_pdu_size is what we announce for the PDUs that follow it.
        if nr_bytes > self._max_pdu and not self._prefix:
            reason = (
                f"{rawpdu.describe_type(self._last_type)} PDU declares {nr_bytes} bytes,"
                f" more than scp.max_pdu_size {self._max_pdu}"
            )
            log.warning(
                "PDU refused", extra={"peer": self.assoc.requestor.address, "reason": reason}
            )
            self.send(rawpdu.abort(AbortReason.INVALID_PARAMETER))
            self._hooks.pdu_refused(self.assoc, reason)
            return bytearray()  # pynetdicom sees a short PDU: transport closed, association aborted
        return self._read(nr_bytes)


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, given the A-ASSOCIATE-RQ the guard already read."""

    server: GuardedServer

    def __init__(self, request: Any, client_address: Any, server: Any, first_pdu: bytes) -> None:
        self.first_pdu = first_pdu
        self.assoc: Association | None = None
        super().__init__(request, client_address, server)  # runs handle(): starts the thread

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds its AssociationSocket here with no factory to override; the
        # subclass only adds methods and the state ``arm`` sets, so retyping it is safe.
        sock = assoc.dul.socket
        assert sock is not None
        sock.__class__ = GuardedAssociationSocket
        assert isinstance(sock, GuardedAssociationSocket)
        sock.arm(self.first_pdu, self.server.limits.max_pdu_size, self.server.hooks)
        self.assoc = assoc
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's association server with the guard in front (see the module docstring)."""

    request_queue_size = 128  # listen backlog: a burst of connects is accepted, then sorted

    def __init__(
        self,
        *args: Any,
        limits: GuardLimits,
        hooks: GuardHooks,
        reuse_port: bool = False,
        **kwargs: Any,
    ) -> None:
        self.limits = limits
        self.hooks = hooks
        self.table = _ConnectionTable(limits)
        self._closing = False
        self.reuse_port = reuse_port
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # Several receiver processes listen on one port (SO_REUSEPORT): the kernel spreads
        # new connections over them. pynetdicom's server_bind does not call socketserver's.
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        # pynetdicom wraps TLS here, on the accepting thread, with no timeout: a silent client
        # would stop all accepts. The handshake happens in _serve_connection instead.
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host, port = str(client_address[0]), int(client_address[1])
        if not self.limits.allowed_hosts(host):
            reason: str | None = f"host {host} not in scp.allowed_hosts"
        else:
            reason = self.table.admit(host, request)
        if reason is None:
            return True
        log.warning("connection refused", extra={"peer": f"{host}:{port}", "reason": reason})
        self.hooks.connection_refused(host, port, reason)
        return False  # socketserver closes the socket

    def process_request(self, request: Any, client_address: Any) -> None:
        host, port = str(client_address[0]), int(client_address[1])
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"PreAssociation@{host}:{port}",
            daemon=True,
        )
        thread.start()

    def shutdown(self) -> None:
        """Stop accepting and close connections that have not sent A-ASSOCIATE-RQ yet."""
        self._closing = True
        # pynetdicom's shutdown also removes the server from a list only start_server fills.
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        self.table.close_pending()

    def _serve_connection(self, sock: socket.socket, client_address: Any) -> None:
        host, port = str(client_address[0]), int(client_address[1])
        raw = sock
        deadline = time.monotonic() + self.limits.association_request_timeout_s
        try:
            wrapped = self._handshake(raw, host, port)
            if wrapped is None:
                return
            sock = wrapped
            first_pdu = self._read_associate_rq(sock, host, port, deadline)
            if first_pdu is None:
                return
            sock.settimeout(self.limits.network_timeout_s)  # a stalled peer cannot block a read
            self.table.handed_over(raw)
            handler = GuardedRequestHandler(sock, client_address, self, first_pdu)
            assoc = handler.assoc
            assert assoc is not None
            assoc.join()
            assoc.dul.kill_dul()  # stops the DUL thread if pynetdicom's reactor died without it
            if self.hooks.association_done(assoc):
                _send_quietly(sock, rawpdu.abort(AbortReason.NOT_SPECIFIED))
        except Exception as exc:  # never let one connection take the guard down unrecorded
            log.exception("connection failed", extra={"peer": f"{host}:{port}"})
            self.hooks.connection_refused(host, port, f"internal error: {exc!r}"[:120])
        finally:
            self.table.release(host, raw)
            _close(sock)
            if sock is not raw:
                _close(raw)

    def _refuse(self, sock: socket.socket, host: str, port: int, reason: str) -> None:
        if self._closing:
            return
        log.warning("connection refused", extra={"peer": f"{host}:{port}", "reason": reason})
        self.hooks.connection_refused(host, port, reason)

    def _handshake(self, sock: socket.socket, host: str, port: int) -> socket.socket | None:
        """The socket, TLS-wrapped when configured, or None when the handshake failed."""
        if self.ssl_context is None:
            return sock
        timeout = self.limits.association_request_timeout_s
        try:
            sock.settimeout(timeout)
            return self.ssl_context.wrap_socket(sock, server_side=True)
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            log.debug("connection closed before the TLS handshake", extra={"peer": host})
        except TimeoutError:
            self._refuse(sock, host, port, f"TLS handshake not done within {timeout:g} s")
        except (ssl.SSLError, OSError) as exc:
            self._refuse(sock, host, port, f"TLS handshake failed: {exc}"[:128])
        return None

    def _read_associate_rq(
        self, sock: socket.socket, host: str, port: int, deadline: float
    ) -> bytes | None:
        """The checked first PDU, or None when it was refused (and reported) or never came."""
        timeout = self.limits.association_request_timeout_s
        try:
            header, stalled = _read_exact(sock, rawpdu.HEADER_LENGTH, deadline)
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            log.debug("connection closed before A-ASSOCIATE-RQ", extra={"peer": host})
            return None
        except (ssl.SSLError, OSError) as exc:
            self._refuse(sock, host, port, f"connection failed before A-ASSOCIATE-RQ: {exc}")
            return None
        if stalled:
            got = f" ({len(header)} of 6 header bytes)" if header else ""
            self._refuse(sock, host, port, f"no A-ASSOCIATE-RQ within {timeout:g} s{got}")
            return None
        if not header:
            log.debug("connection closed before A-ASSOCIATE-RQ", extra={"peer": host})
            return None
        if len(header) < rawpdu.HEADER_LENGTH:
            self._refuse(sock, host, port, f"closed after {len(header)} bytes of a PDU header")
            return None
        pdu_type, length = rawpdu.parse_header(header)
        problem = rawpdu.first_pdu_problem(pdu_type, length)
        if problem is not None:
            _send_quietly(sock, rawpdu.abort(problem[1]))
            self._refuse(sock, host, port, problem[0])
            return None
        try:
            body, stalled = _read_exact(sock, length, deadline)
        except OSError as exc:
            self._refuse(sock, host, port, f"connection failed inside A-ASSOCIATE-RQ: {exc}")
            return None
        if len(body) < length:
            when = f"not complete within {timeout:g} s" if stalled else "cut off"
            self._refuse(sock, host, port, f"A-ASSOCIATE-RQ {when}: {len(body)} of {length} bytes")
            return None
        pdu = header + body
        if self._ae_titles_refused(sock, host, port, pdu) or self._undecodable(
            sock, host, port, pdu
        ):
            return None
        return pdu

    def _undecodable(self, sock: socket.socket, host: str, port: int, pdu: bytes) -> bool:
        """Refuse an A-ASSOCIATE-RQ pynetdicom cannot decode, which it would abort and then
        hold for ``acse_timeout_s`` as a counted association thread."""
        try:
            decoded = A_ASSOCIATE_RQ()
            decoded.decode(pdu)
            decoded.to_primitive()
        except Exception as exc:
            reason = f"A-ASSOCIATE-RQ cannot be decoded: {exc}"[:128]
            log.warning("association rejected", extra={"peer": f"{host}:{port}", "reason": reason})
            _send_quietly(sock, rawpdu.abort(AbortReason.INVALID_PARAMETER))
            called, calling = rawpdu.ae_titles(pdu)
            self.hooks.association_refused(
                host, port, rawpdu.printable(called), rawpdu.printable(calling), reason
            )
            return True
        return False

    def _ae_titles_refused(self, sock: socket.socket, host: str, port: int, pdu: bytes) -> bool:
        """Answer A-ASSOCIATE-RJ (and report it) when an AE title field is not a valid AE."""
        called, calling = rawpdu.ae_titles(pdu)
        for raw_title, which, diagnostic in ((calling, "calling", 0x03), (called, "called", 0x07)):
            problem = rawpdu.ae_title_problem(raw_title)
            if problem is None:
                continue
            reason = f"{which} AE title {problem}"
            log.warning("association rejected", extra={"peer": f"{host}:{port}", "reason": reason})
            _send_quietly(sock, rawpdu.associate_rj(0x01, 0x01, diagnostic))
            self.hooks.association_refused(
                host, port, rawpdu.printable(called), rawpdu.printable(calling), reason
            )
            return True
        return False


def _read_exact(sock: socket.socket, count: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``count`` bytes before ``deadline``: (data, stalled). Short data without stall: EOF."""
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), True
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(65536, count - len(data)))
        except TimeoutError:
            return bytes(data), True
        if not chunk:
            break
        data += chunk
    return bytes(data), False


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(data)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
