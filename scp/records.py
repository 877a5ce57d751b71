"""What the association table and the audit trail say about each DICOM association.

Writes only: the SCP (``scp/server.py``) and the refusal writer (``scp/refusals.py``) decide what
happened; this module turns it into rows, so an association is recorded the same way whichever
part of the receiver saw it end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from storage.audit import audit
from storage.db import Database
from storage.jobs import mark_released
from storage.models import Association, utcnow

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What we track about one live association."""

    record_id: int
    calling_ae: str
    peer: str
    studies: set[int] = field(default_factory=set)
    stored: int = 0  # counted here and written once when the association ends
    failed: int = 0
    abort_reason: str | None = None  # why it was aborted, when we know


def add_association(
    session: DbSession,
    *,
    calling: str,
    called: str,
    host: str,
    port: int,
    tls: bool,
    rejection: str | None,
) -> Association:
    """An association row: open, or rejected (and audited) with ``rejection`` as the reason."""
    now = utcnow()
    record = Association(
        calling_ae=calling[:16],
        called_ae=called[:16],
        peer_host=host[:64],
        peer_port=port,
        tls=tls,
        started_at=now,
        outcome="rejected" if rejection else "open",
        ended_at=now if rejection else None,
        reject_reason=rejection[:128] if rejection else None,
        instances_stored=0,
        instances_failed=0,
    )
    session.add(record)
    if rejection:
        audit(
            session,
            actor=calling or "?",
            action="association.rejected",
            target=f"{host}:{port}",
            detail={"reason": rejection, "called_ae": called},
        )
    return record


def close_record(
    db: Database, state: Session, outcome: str, reason: str | None, still_open: set[int]
) -> None:
    """Write how an association ended; an abort or late rejection is audited with why."""
    now = utcnow()
    with db.session() as session:
        record = session.get(Association, state.record_id)
        if record is not None:
            record.outcome = outcome
            record.ended_at = now
            record.instances_stored = state.stored
            record.instances_failed = state.failed
            if reason is not None:
                record.reject_reason = reason[:128]
        if outcome == "released":
            mark_released(session, sorted(state.studies - still_open), now)
        else:
            audit(
                session,
                actor=state.calling_ae or "?",
                action=f"association.{outcome}",
                target=state.peer,
                detail={
                    "reason": reason or "A-ABORT or connection closed",
                    "association_id": state.record_id,
                    "instances_stored": state.stored,
                },
            )
    log.info(
        f"association {outcome}",
        extra={"calling_ae": state.calling_ae, "peer": state.peer, "reason": reason},
    )


def close_stale(db: Database) -> int:
    """Associations a previous run left open ended when it did: record them as aborted."""
    with db.session() as session:
        stale = session.scalars(select(Association).where(Association.outcome == "open")).all()
        for record in stale:
            record.outcome = "aborted"
            record.ended_at = utcnow()
            record.reject_reason = "service stopped during the association"
    return len(stale)
