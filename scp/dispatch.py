"""Reports back to the PACS: the delivery queue worker and its two senders.

Decoupled from scoring: the worker only records verdicts. This thread turns each current
verdict into one delivery per configured destination (``storage.deliveries``), builds the
verdict's report once (``scp.report``, fixed UIDs, kept under ``<data_dir>/reports``) and sends
it by C-STORE or STOW-RS. A failed attempt waits with exponential backoff; after
``max_attempts`` the delivery shows as ``failed`` until someone resends it. Nothing is sent
from memory only: state lives in the database, so a restart continues where it stopped.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pydicom
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.keyimage import ensure_key_images
from scp.report import ReportFile, ensure_sr
from scp.settings import DeliverySettings, DicomDestination, DicomwebDestination, ReportSettings
from storage.audit import audit
from storage.db import Database
from storage.deliveries import (
    DueDelivery,
    due_deliveries,
    enqueue_missing,
    mark_attempt_failed,
    mark_delivered,
)
from storage.models import DELIVERY_FAILED, utcnow

log = logging.getLogger(__name__)


def ensure_report(
    db: Database, data_dir: Path, verdict_id: int, settings: ReportSettings
) -> list[ReportFile]:
    """The verdict's report files (the SR, then key images), built on first use and kept."""
    sr, data = ensure_sr(db, data_dir, verdict_id, settings)
    files = [sr]
    if settings.key_images:
        files += ensure_key_images(db, data_dir, verdict_id, settings, data)
    return files


# C-STORE statuses that mean "stored": success and the warnings (coercion, elements discarded).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """A send did not succeed; the message says what the destination answered."""


class Sender(Protocol):
    name: str

    def send(self, files: Sequence[ReportFile]) -> None: ...


def _client_ssl_context(destination: DicomDestination) -> ssl.SSLContext | None:
    tls = destination.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class DicomSender:
    """C-STORE to a DICOM peer, proposing only the SOP classes being sent."""

    def __init__(self, destination: DicomDestination) -> None:
        self.destination = destination
        self.name = destination.name

    def send(self, files: Sequence[ReportFile]) -> None:
        d = self.destination
        ae = AE(ae_title=d.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = d.timeout_s
        for sop_class in sorted({f.sop_class_uid for f in files}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        context = _client_ssl_context(d)
        tls_args = (context, d.host) if context is not None else None
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise DeliveryError(f"association rejected by {d.ae_title}@{d.host}:{d.port}")
            raise DeliveryError(f"no association with {d.ae_title}@{d.host}:{d.port}")
        try:
            for f in files:
                accepted = [
                    c for c in assoc.accepted_contexts if c.abstract_syntax == f.sop_class_uid
                ]
                if not accepted:
                    raise DeliveryError(f"{d.ae_title} does not accept SOP class {f.sop_class_uid}")
                status = assoc.send_c_store(pydicom.dcmread(f.path))
                if not status or "Status" not in status:
                    raise DeliveryError(f"no C-STORE response for {f.sop_instance_uid}")
                if status.Status not in STORED_STATUSES:
                    comment = status.get("ErrorComment", "")
                    raise DeliveryError(
                        f"C-STORE of {f.sop_instance_uid} answered 0x{status.Status:04X} {comment}"
                    )
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> bool:
        """C-ECHO the destination (a health check for operators)."""
        d = self.destination
        ae = AE(ae_title=d.calling_ae_title)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = d.timeout_s
        context = _client_ssl_context(d)
        assoc = ae.associate(
            d.host, d.port, ae_title=d.ae_title, tls_args=(context, d.host) if context else None
        )
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and status.Status == 0x0000
        finally:
            assoc.release()


def multipart_related(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type header."""
    boundary = f"tamperscan-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for data in parts:
        chunks.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def stow_failures(response: requests.Response) -> list[str]:
    """Failed instances named in a STOW-RS response body (DICOM JSON), as readable text."""
    try:
        body: Any = response.json()
    except ValueError:
        return []
    failures = []
    if isinstance(body, dict):
        for item in body.get("00081198", {}).get("Value", []) or []:
            sop = (item.get("00081155", {}).get("Value") or ["?"])[0]
            reason = (item.get("00081197", {}).get("Value") or [0])[0]
            failures.append(f"{sop}: failure reason 0x{int(reason):04X}")
    return failures


class StowSender:
    """STOW-RS to a DICOMweb server: POST <url>/studies with every file in one request."""

    def __init__(self, destination: DicomwebDestination) -> None:
        self.destination = destination
        self.name = destination.name

    def send(self, files: Sequence[ReportFile]) -> None:
        d = self.destination
        body, content_type = multipart_related([f.path.read_bytes() for f in files])
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if d.auth_header:
            headers["Authorization"] = d.auth_header
        try:
            response = requests.post(
                f"{d.url}/studies",
                data=body,
                headers=headers,
                timeout=d.timeout_s,
                verify=d.verify_tls,
            )
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS to {d.url} failed: {exc}") from exc
        failures = stow_failures(response)
        if response.status_code == 200 and not failures:
            return
        detail = "; ".join(failures) or response.text[:300]
        raise DeliveryError(f"STOW-RS to {d.url} answered HTTP {response.status_code}: {detail}")


def make_senders(settings: DeliverySettings) -> dict[str, Sender]:
    senders: dict[str, Sender] = {d.name: DicomSender(d) for d in settings.dicom}
    senders.update({d.name: StowSender(d) for d in settings.dicomweb})
    return senders


class Dispatcher:
    """Queues a delivery per current verdict and destination, builds reports, sends them."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        reports: ReportSettings,
        delivery: DeliverySettings,
        senders: dict[str, Sender] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.data_dir = data_dir
        self.reports = reports
        self.delivery = delivery
        self.senders = senders if senders is not None else make_senders(delivery)
        self.clock = clock

    def run(self, stop: threading.Event) -> None:
        log.info("report dispatcher started", extra={"destinations": ",".join(self.senders)})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("report dispatcher pass failed")
                busy = False
            if not busy:
                stop.wait(self.delivery.poll_interval_s)

    def run_once(self) -> bool:
        """Queue what is missing, attempt what is due; True when something was attempted."""
        names = list(self.senders)
        if not names:
            return False
        with self.db.session() as session:
            created = enqueue_missing(
                session, names, self.clock(), include_not_scored=self.reports.send_not_scored
            )
            if created:
                log.info("reports queued", extra={"deliveries": created})
        with self.db.reading() as session:
            due = due_deliveries(session, names, self.clock())
        for delivery in due:
            self._attempt(delivery)
        return bool(due)

    def _attempt(self, delivery: DueDelivery) -> None:
        sender = self.senders[delivery.destination]
        try:
            files = ensure_report(self.db, self.data_dir, delivery.verdict_id, self.reports)
            sender.send(files)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            with self.db.session() as session:
                state = mark_attempt_failed(
                    session,
                    delivery.id,
                    error,
                    self.clock(),
                    self.delivery.max_attempts,
                    self.delivery.backoff_initial_s,
                    self.delivery.backoff_max_s,
                )
                if state == DELIVERY_FAILED:
                    audit(
                        session,
                        actor="dispatcher",
                        action="report.failed",
                        target=delivery.destination,
                        detail={"verdict_id": delivery.verdict_id, "error": error},
                    )
            log.warning(
                "report delivery failed" if state == DELIVERY_FAILED else "report delivery retry",
                extra={
                    "delivery": delivery.id,
                    "verdict_id": delivery.verdict_id,
                    "destination": delivery.destination,
                    "attempt": delivery.attempts + 1,
                    "error": error,
                },
            )
            return
        with self.db.session() as session:
            mark_delivered(session, delivery.id, self.clock())
            audit(
                session,
                actor="dispatcher",
                action="report.delivered",
                target=delivery.destination,
                detail={
                    "verdict_id": delivery.verdict_id,
                    "sop_instance_uids": [f.sop_instance_uid for f in files],
                },
            )
        log.info(
            "report delivered",
            extra={
                "delivery": delivery.id,
                "verdict_id": delivery.verdict_id,
                "destination": delivery.destination,
                "sop": files[0].sop_instance_uid,
            },
        )
