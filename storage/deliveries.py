"""The delivery queue: one row per (verdict, destination), retried with backoff, never dropped.

The scoring worker only records verdicts; ``enqueue_missing`` turns each current verdict into a
pending delivery per configured destination. A delivery that keeps failing ends as ``failed``
after ``max_attempts``: it stays visible and ``resend`` puts it back in the queue. Rows are
only ever updated, so nothing is lost across a restart; a send that was cut off by a crash is
simply sent again (the report keeps its UIDs, so the receiver sees the same object).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from storage.db import skip_locked
from storage.models import (
    DELIVERY_DONE,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    NOT_SCORED,
    Delivery,
    Verdict,
)


@dataclass(frozen=True)
class DueDelivery:
    id: int
    verdict_id: int
    destination: str
    attempts: int


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: initial, 2x, 4x... capped."""
    return min(max_s, initial_s * 2 ** max(0, failures - 1))


def enqueue_missing(
    session: Session,
    destinations: Sequence[str],
    now: datetime,
    include_not_scored: bool = True,
) -> int:
    """Create a pending delivery for every current verdict that has none for a destination."""
    created = 0
    for name in destinations:
        query = (
            select(Verdict.id)
            .outerjoin(
                Delivery,
                and_(Delivery.verdict_id == Verdict.id, Delivery.destination == name),
            )
            .where(Verdict.is_current.is_(True), Delivery.id.is_(None))
            .order_by(Verdict.id)
        )
        if not include_not_scored:
            query = query.where(Verdict.outcome != NOT_SCORED)
        # Several dispatchers (one per worker host): a verdict another one is queuing is
        # skipped on PostgreSQL; on SQLite the write transaction already serialises them.
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=Verdict, skip_locked=True)
        for verdict_id in session.scalars(query).all():
            session.add(
                Delivery(
                    verdict_id=verdict_id,
                    destination=name,
                    state=DELIVERY_PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            created += 1
    session.flush()
    return created


def due_deliveries(
    session: Session, destinations: Sequence[str], now: datetime, limit: int = 20
) -> list[DueDelivery]:
    """Pending deliveries whose time has come, oldest first (only for configured names)."""
    rows = session.execute(
        select(Delivery.id, Delivery.verdict_id, Delivery.destination, Delivery.attempts)
        .where(
            Delivery.state == DELIVERY_PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.destination.in_(list(destinations)),
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    ).all()
    return [DueDelivery(r.id, r.verdict_id, r.destination, r.attempts) for r in rows]


def claim_due_deliveries(
    session: Session, destinations: Sequence[str], now: datetime, lease_s: float, limit: int = 4
) -> list[DueDelivery]:
    """Like ``due_deliveries``, for a dispatcher that shares the queue with others: the rows
    it returns are not due again for ``lease_s`` (the attempt's outcome sets the next time),
    so no two dispatchers send the same delivery at once; a dispatcher killed mid-send leaves
    them to be sent again after the lease. Locked rows are skipped on PostgreSQL."""
    query = (
        select(Delivery)
        .where(
            Delivery.state == DELIVERY_PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.destination.in_(list(destinations)),
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    )
    claimed = []
    for delivery in session.scalars(skip_locked(session, query)).all():
        delivery.next_attempt_at = now + timedelta(seconds=lease_s)
        claimed.append(
            DueDelivery(delivery.id, delivery.verdict_id, delivery.destination, delivery.attempts)
        )
    return claimed


def mark_delivered(session: Session, delivery_id: int, now: datetime) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            state=DELIVERY_DONE,
            attempts=Delivery.attempts + 1,
            delivered_at=now,
            last_error=None,
        )
    )


def mark_attempt_failed(
    session: Session,
    delivery_id: int,
    error: str,
    now: datetime,
    max_attempts: int,
    initial_s: float,
    max_s: float,
) -> str:
    """Record a failed attempt: back off, or end as ``failed``. Returns the new state."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise LookupError(f"no delivery {delivery_id}")
    delivery.attempts += 1
    delivery.last_error = error[:2000]
    if delivery.attempts >= max_attempts:
        delivery.state = DELIVERY_FAILED
    else:
        delivery.next_attempt_at = now + timedelta(
            seconds=backoff_s(delivery.attempts, initial_s, max_s)
        )
    return delivery.state


def resend(
    session: Session,
    now: datetime,
    delivery_ids: Sequence[int] = (),
    verdict_id: int | None = None,
    all_failed: bool = False,
) -> int:
    """Put deliveries back in the queue with a fresh attempt budget; returns how many.

    Works on failed and delivered rows alike (re-sending a delivered report sends the same
    SR, so the receiver keeps one copy).
    """
    conditions = []
    if delivery_ids:
        conditions.append(Delivery.id.in_(list(delivery_ids)))
    if verdict_id is not None:
        conditions.append(Delivery.verdict_id == verdict_id)
    if all_failed:
        conditions.append(Delivery.state == DELIVERY_FAILED)
    if not conditions:
        return 0
    result = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(state=DELIVERY_PENDING, attempts=0, next_attempt_at=now, delivered_at=None)
    )
    return int(result.rowcount or 0)


def list_deliveries(session: Session, state: str | None = None, limit: int = 100) -> list[Delivery]:
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Delivery.state == state)
    return list(session.scalars(query).all())
