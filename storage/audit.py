"""The audit trail: who did what to which object, kept in the same transaction as the act."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from storage.models import AuditEvent, utcnow


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(at=utcnow(), actor=actor[:64], action=action, target=target, detail=detail)
    session.add(event)
    return event
