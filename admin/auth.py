"""Logins, roles, sessions and CSRF for the admin web report.

- Passwords: argon2id (argon2-cffi); unknown users cost the same time as known ones.
- Sessions: Starlette's ``SessionMiddleware`` (a signed cookie) holding a random nonce, the user
  id, the login time and a fingerprint of the password hash, so changing a password or removing
  the user ends its sessions, and a session ends ``session_hours`` after login whatever the
  cookie says. The cookie is HttpOnly, SameSite=Lax, and Secure over HTTPS
  (``[admin] cookie_secure``); it is only set once a page needs a CSRF token or a login.
- CSRF: every state-changing request carries ``HMAC(secret, nonce)`` as a form field or the
  ``X-CSRF-Token`` header; the nonce is renewed at login (no session fixation).
- Throttling: after ``login_max_failures`` wrong passwords per user name or client address,
  logins are refused for ``login_lockout_s`` (kept in memory: one ``serve`` process).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from admin.settings import AdminSettings
from storage.db import Database
from storage.models import ROLE_ADMIN, User

COOKIE = "tamperscan_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MIN_PASSWORD = 10

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password too short: at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def load_or_create_secret(path: Path) -> bytes:
    """The cookie-signing key: read it, or make one readable by this user only."""
    if path.exists():
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise RuntimeError(f"{path}: session secret shorter than 32 bytes")
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_urlsafe(48).encode())
    return path.read_bytes().strip()


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, the API answers 401."""


class Forbidden(Exception):
    """Logged in, but the role may not do this."""


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF token."""


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN


class LoginThrottle:
    """Failures per key (user name, client address) inside a sliding lockout window."""

    def __init__(self, max_failures: int, lockout_s: float, clock: Callable[[], float]) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.lockout_s]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login may be tried again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [
                self.lockout_s - (now - recent[-self.max_failures])
                for key in keys
                if len(recent := self._recent(key, now)) >= self.max_failures
            ]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def password_fingerprint(password_hash: str) -> str:
    """What a session keeps of the password hash: a new password ends the old sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class Auth:
    """Everything the routes need to know who is asking and whether they may."""

    def __init__(
        self,
        db: Database,
        settings: AdminSettings,
        data_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.settings = settings
        path = settings.session_secret_file or (data_dir / "admin" / "session.key")
        self.secret = load_or_create_secret(path)
        self.max_age_s = int(settings.session_hours * 3600)
        self.throttle = LoginThrottle(settings.login_max_failures, settings.login_lockout_s, clock)

    # -- who is asking ----------------------------------------------------------------------

    def start_session(self, request: Request, user: User) -> None:
        """A fresh nonce at login: a token planted before login is worthless afterwards."""
        session = request.session
        session.clear()  # marks the session changed, so the new cookie is sent
        session["n"] = secrets.token_urlsafe(16)
        session["u"] = user.id
        session["f"] = password_fingerprint(user.password_hash)
        session["t"] = int(time.time())

    def end_session(self, request: Request) -> None:
        request.session.clear()
        request.session["n"] = secrets.token_urlsafe(16)

    def current_user(self, request: Request) -> CurrentUser | None:
        cached = getattr(request.state, "user", False)
        if cached is not False:
            return cached
        data = request.session
        user_id, login_at = data.get("u"), data.get("t")
        found: CurrentUser | None = None
        fresh = isinstance(login_at, int) and 0 <= time.time() - login_at < self.max_age_s
        if isinstance(user_id, int) and fresh:
            with self.db.reading() as session:
                user = session.get(User, user_id)
            if user is not None and hmac.compare_digest(
                password_fingerprint(user.password_hash), str(data.get("f", ""))
            ):
                found = CurrentUser(user.id, user.username, user.role)
        request.state.user = found
        return found

    def csrf_token(self, request: Request) -> str:
        nonce = request.session.get("n")
        if not isinstance(nonce, str):
            nonce = request.session["n"] = secrets.token_urlsafe(16)
        return hmac.new(self.secret, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()

    async def check_csrf(self, request: Request) -> None:
        sent = request.headers.get(CSRF_HEADER)
        if not sent and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not sent or not hmac.compare_digest(sent, self.csrf_token(request)):
            raise CsrfFailed()

    # -- FastAPI dependencies ---------------------------------------------------------------

    def viewer(self, request: Request) -> CurrentUser:
        """Any logged-in user (viewer or admin)."""
        user = self.current_user(request)
        if user is None:
            raise LoginRequired()
        return user

    async def actor(self, request: Request) -> CurrentUser:
        """An admin sending a valid CSRF token: the only one who may act."""
        user = self.viewer(request)
        await self.check_csrf(request)
        if not user.is_admin:
            raise Forbidden()
        return user

    def metrics_reader(self, request: Request) -> str:
        """Prometheus with the configured bearer token, or a logged-in user."""
        token = self.settings.metrics_token
        header = request.headers.get("authorization", "")
        if token and hmac.compare_digest(header, f"Bearer {token}"):
            return "prometheus"
        return self.viewer(request).username


class Sessions:
    """Starlette's ``SessionMiddleware`` with the Secure flag chosen per request.

    ``cookie_secure = "auto"`` means Secure exactly when the request came over HTTPS, which one
    ``SessionMiddleware`` (a fixed ``https_only``) cannot say: two are kept, one per scheme.
    """

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        secret = auth.secret.decode("latin-1")
        common = {
            "secret_key": secret,
            "session_cookie": COOKIE,
            "max_age": auth.max_age_s,
            "same_site": "lax",
        }
        mode = auth.settings.cookie_secure
        self.plain = SessionMiddleware(app, https_only=mode == "always", **common)  # type: ignore[arg-type]
        self.secure = SessionMiddleware(app, https_only=mode != "never", **common)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") in ("https", "wss")
        await (self.secure if https else self.plain)(scope, receive, send)
