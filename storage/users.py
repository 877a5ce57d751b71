"""Users of the admin web report. Hashing happens in ``admin.auth``; this module keeps rows.

Every change is audited in the same transaction as the change itself.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.models import ROLES, User

USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class UserError(ValueError):
    """A user operation that cannot be done (the message says why)."""


def _check(username: str, role: str | None = None) -> None:
    if not USERNAME.match(username):
        raise UserError(
            f"invalid user name {username!r}: 1-64 letters, digits or . _ @ - characters"
        )
    if role is not None and role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def add_user(
    session: Session, username: str, password_hash: str, role: str, now: datetime, actor: str
) -> User:
    _check(username, role)
    if get_user(session, username) is not None:
        raise UserError(f"user {username!r} exists already (use passwd to change the password)")
    user = User(
        username=username,
        password_hash=password_hash,
        role=role,
        created_at=now,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    audit(session, actor=actor, action="user.add", target=username, detail={"role": role})
    return user


def set_password(
    session: Session,
    username: str,
    password_hash: str,
    now: datetime,
    actor: str,
    role: str | None = None,
) -> User:
    """New password (and optionally role); existing sessions of the user stop working."""
    _check(username, role)
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    user.password_hash = password_hash
    user.password_changed_at = now
    detail: dict[str, str] = {}
    if role is not None and role != user.role:
        detail = {"role": role, "previous_role": user.role}
        user.role = role
    audit(session, actor=actor, action="user.passwd", target=username, detail=detail or None)
    return user


def remove_user(session: Session, username: str, actor: str) -> None:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    session.delete(user)
    audit(session, actor=actor, action="user.remove", target=username)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)).all())


def record_login(session: Session, user_id: int, now: datetime, client: str) -> None:
    user = session.get(User, user_id)
    if user is not None:
        user.last_login_at = now
        audit(session, actor=user.username, action="login", detail={"client": client})


def record_login_failure(session: Session, username: str, client: str, reason: str) -> None:
    audit(
        session,
        actor=username[:64] or "anonymous",
        action="login.failed",
        detail={"client": client, "reason": reason},
    )
