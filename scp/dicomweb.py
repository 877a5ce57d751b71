"""DICOMweb STOW-RS in: ``POST /dicom-web/studies[/{study}]``, for a DICOMweb-only PACS.

Feeds the same ingest path as C-STORE (``scp.ingest``): each part's encoding and values are
checked (``scp.validate``) and it is stored with ``InstanceStore.store`` (file fsynced, index
row committed) before it is counted as stored, so a part that fails any check is never half
accepted. A client that disconnects before its body is complete gets nothing stored. The answer is a
PS3.18 STOW-RS response: a DICOM JSON dataset with a ReferencedSOPSequence (stored) and a
FailedSOPSequence (refused, with the same Failure Reason codes C-STORE would answer), HTTP 200
when all were stored, 202 when some were, 409 when none were. ``Warning`` headers carry the
reasons as text. Protected like the SCP: a client-address allow-list and an optional bearer
token. A request counts as one finished transfer (like an A-RELEASE) for study assembly.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hmac
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from io import BytesIO

import pydicom
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from scp.ingest import IngestResult, ingest, refuse
from scp.settings import DicomwebSettings
from scp.validate import (
    DECODE_FAILED,
    RejectedInstance,
)
from storage.audit import audit
from storage.db import Database
from storage.files import InvalidUID, check_uid
from storage.instances import InstanceStore, Origin
from storage.jobs import mark_released
from storage.models import utcnow

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_WARNINGS = 20


@dataclass
class PartResult:
    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None  # None: stored
    reason: str = ""
    study_id: int | None = None


def parse_multipart(content_type: str, body: bytes) -> list[EmailMessage]:
    """The parts of a multipart/related body (Python's email parser, not hand-rolled)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("the body is not multipart")
    if not message.get_boundary():
        raise ValueError("the Content-Type has no boundary")
    parts = [p for p in message.iter_parts() if isinstance(p, EmailMessage)]
    if not parts:
        raise ValueError("no parts found (wrong boundary, or the body is cut short)")
    return parts


def _part_result(result: IngestResult) -> PartResult:
    failure = None if result.ok else result.status
    study_id = result.outcome.study_id if result.outcome is not None else None
    return PartResult(
        result.sop_class_uid, result.sop_instance_uid, failure, result.reason, study_id
    )


class StowService:
    """The STOW-RS endpoint's logic, separate from HTTP so each step stays testable."""

    def __init__(self, db: Database, store: InstanceStore, settings: DicomwebSettings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
        router.add_api_route("/studies", self._post, methods=["POST"])
        router.add_api_route("/studies/{study_uid}", self._post, methods=["POST"])
        return router

    async def _post(self, request: Request, study_uid: str | None = None) -> Response:
        peer = request.client.host if request.client else "?"
        refusal = self._check_access(request, peer)
        if refusal is not None:
            return refusal
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media != "multipart/related" or "application/dicom" not in content_type.lower():
            return _problem(415, 'expected multipart/related; type="application/dicom"', peer)
        limit = self.settings.max_request_mb * 1024 * 1024
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _problem(413, f"request larger than {self.settings.max_request_mb} MiB", peer)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return _problem(
                        413, f"request larger than {self.settings.max_request_mb} MiB", peer
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            # Nothing was stored (parts are ingested only from a complete body) and nobody
            # is left to answer: one log line, no traceback.
            log.warning(
                "STOW-RS client disconnected before the body was complete",
                extra={"peer": peer, "received_bytes": size},
            )
            return Response(status_code=400)
        body = b"".join(chunks)
        try:
            parts = parse_multipart(content_type, body)
        except ValueError as exc:
            return _problem(400, f"malformed multipart/related body: {exc}", peer)
        results = await run_in_threadpool(self.ingest, parts, peer, study_uid)
        return self._response(results)

    def _check_access(self, request: Request, peer: str) -> Response | None:
        if not self.settings.host_allowed(peer):
            self._audit_refusal(peer, f"host {peer} not in dicomweb.allowed_hosts")
            return _problem(403, "client address not allowed", peer)
        token = self.settings.bearer_token
        if token:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                self._audit_refusal(peer, "missing or wrong bearer token")
                response = _problem(401, "a valid bearer token is required", peer)
                response.headers["WWW-Authenticate"] = 'Bearer realm="tamperscan"'
                return response
        return None

    def _audit_refusal(self, peer: str, reason: str) -> None:
        log.warning("STOW-RS request refused", extra={"peer": peer, "reason": reason})
        with self.db.session() as session:
            audit(
                session,
                actor="stow",
                action="stow.rejected",
                target=peer,
                detail={"reason": reason},
            )

    def ingest(
        self, parts: list[EmailMessage], peer: str, study_uid: str | None
    ) -> list[PartResult]:
        """Check and store each part like a C-STORE; a finished request releases its studies."""
        origin = Origin(channel="stow", peer_address=peer)
        results = [self._ingest_part(n, part, origin, study_uid) for n, part in enumerate(parts, 1)]
        stored = sorted({r.study_id for r in results if r.study_id is not None})
        if stored:
            with self.db.session() as session:
                mark_released(session, stored, utcnow())
        return results

    def _ingest_part(
        self, n: int, part: EmailMessage, origin: Origin, study_uid: str | None
    ) -> PartResult:
        if part.get_content_type() != "application/dicom":
            reason = f"part {n}: media type {part.get_content_type()} is not application/dicom"
            return _part_result(refuse(self.db, origin, DECODE_FAILED, reason))
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            return _part_result(refuse(self.db, origin, DECODE_FAILED, f"part {n}: empty part"))

        def decode() -> tuple[Dataset, str, str | None]:
            try:
                ds = pydicom.dcmread(BytesIO(payload))
                meta = ds.file_meta
                # The file meta's class plays the presentation context's part.
                announced = str(meta.get("MediaStorageSOPClassUID", "") or "") or None
                return ds, str(meta.TransferSyntaxUID), announced
            except (InvalidDicomError, AttributeError) as exc:
                raise RejectedInstance(
                    DECODE_FAILED, f"part {n} is not a DICOM file (PS3.10): {exc}"
                ) from exc

        result = ingest(
            self.db,
            self.store,
            payload,
            decode,
            origin,
            expected_study_uid=study_uid,
        )
        return _part_result(result)

    @staticmethod
    def _response(results: list[PartResult]) -> Response:
        answer = Dataset()
        stored = [r for r in results if r.failure is None]
        failed = [r for r in results if r.failure is not None]
        if stored:
            answer.ReferencedSOPSequence = [
                _sop_item(r.sop_class_uid, r.sop_instance_uid) for r in stored
            ]
        if failed:
            items = []
            for r in failed:
                item = _sop_item(r.sop_class_uid, r.sop_instance_uid)
                item.FailureReason = r.failure
                items.append(item)
            answer.FailedSOPSequence = items
        status = 200 if not failed else (202 if stored else 409)
        response = JSONResponse(answer.to_json_dict(), status_code=status, media_type=DICOM_JSON)
        for r in failed[:MAX_WARNINGS]:
            text = f"{r.sop_instance_uid or '?'}: {r.reason}".replace('"', "'")
            # A header value must be printable ASCII: a hostile UID may hold a newline.
            text = "".join(c if " " <= c <= "~" else "?" for c in text)[:300]
            response.headers.append("Warning", f'299 tamperscan "{text}"')
        return response


def _sop_item(sop_class: str, sop_instance: str) -> Dataset:
    """A response item; a UID that is not valid (why it failed, maybe) is left out."""
    item = Dataset()
    for keyword, value in (
        ("ReferencedSOPClassUID", sop_class),
        ("ReferencedSOPInstanceUID", sop_instance),
    ):
        with contextlib.suppress(InvalidUID):
            setattr(item, keyword, check_uid(value, keyword))
    return item


def _problem(status: int, detail: str, peer: str) -> JSONResponse:
    if status >= 500 or status in (400, 413, 415):
        log.warning(
            "STOW-RS request refused", extra={"status": status, "detail": detail, "peer": peer}
        )
    return JSONResponse({"detail": detail}, status_code=status)
