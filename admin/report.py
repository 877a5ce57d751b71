"""The admin web report: pages, a JSON API, readiness and metrics on the service's HTTP app.

This module wires the parts together: the session layer (Starlette's ``SessionMiddleware``,
``admin.auth.Sessions``), the routers (``admin.api``, ``admin.pages``, ``admin.actions``,
``admin.slices``, and ``/readyz`` + ``/metrics`` here) and the error answers. Only the login
form, ``/static``, ``/healthz`` and ``/readyz`` are public. Pages and ``/api`` need a login
(pages redirect to the form, the API answers 401); acts need the admin role and the session's
CSRF token, and each is audited by the storage function that performs it. The report reads
storage and only queues work (a scoring job, a delivery): it never scores or sends anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from admin.actions import action_router, login_router
from admin.api import api_router, openapi
from admin.auth import Auth, CsrfFailed, Forbidden, LoginRequired, Sessions
from admin.context import HERE, ReadinessCheck, ReportContext
from admin.metrics import render_metrics
from admin.pages import page_router
from admin.settings import AdminSettings
from admin.slices import slice_router
from storage import admin_metrics
from storage.admin_actions import ActionError
from storage.db import Database

log = logging.getLogger(__name__)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/metrics", "/dicom-web"))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class AdminReport:
    """Builds the routes; ``install`` adds them, the session layer and error pages to an app."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        settings: AdminSettings,
        models: Callable[[], list[dict[str, Any]]] = list,
        readiness: dict[str, ReadinessCheck] | None = None,
        retrain_now: Callable[[str], None] | None = None,
        disk_watermark_mb: int = 500,
    ) -> None:
        """``retrain_now(actor)`` starts a retraining run at once; None where retraining is
        disabled, so the report shows no button and answers 409 instead of pretending.
        ``disk_watermark_mb`` is ``[storage] min_free_mb``, which the dashboard's disk tile
        compares the free space with."""
        self.ctx = ReportContext(
            db=db,
            data_dir=data_dir,
            settings=settings,
            auth=Auth(db, settings, data_dir),
            models=models,
            readiness=readiness or {},
            retrain_now=retrain_now,
            disk_watermark_mb=disk_watermark_mb,
        )
        self.auth = self.ctx.auth
        self.api = api_router(self.ctx)
        self.routers = [
            self.ops_router(),
            self.api,
            login_router(self.ctx),
            page_router(self.ctx, lambda: openapi(self.api)),
            action_router(self.ctx),
            slice_router(self.ctx),
        ]

    def install(self, app: FastAPI) -> None:
        app.add_middleware(Sessions, auth=self.auth)
        app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
        app.add_exception_handler(LoginRequired, self._on_login_required)
        app.add_exception_handler(Forbidden, self._on_forbidden)
        app.add_exception_handler(CsrfFailed, self._on_csrf)
        app.add_exception_handler(ActionError, self._on_action_error)
        app.add_exception_handler(RequestValidationError, self._on_invalid)
        app.add_exception_handler(StarletteHTTPException, self._on_http_error)
        for router in self.routers:
            app.include_router(router)

    def _error(self, request: Request, status: int, title: str, detail: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": detail}, status_code=status)
        return self.ctx.render(request, "error.html", status, title=title, detail=detail)

    async def _on_login_required(self, request: Request, _exc: Exception) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "login required"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    async def _on_forbidden(self, request: Request, _exc: Exception) -> Response:
        return self._error(request, 403, "Not allowed", "this needs the admin role")

    async def _on_csrf(self, request: Request, _exc: Exception) -> Response:
        detail = "missing or wrong CSRF token: reload the page and try again"
        return self._error(request, 403, "Refused", detail)

    async def _on_action_error(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 409, "Not done", str(exc))

    async def _on_invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if _wants_json(request):
            return await request_validation_exception_handler(request, exc)
        return self._error(request, 422, "Invalid request", _validation_message(exc))

    async def _on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if _wants_json(request) or exc.status_code not in (404, 405):
            return await http_exception_handler(request, exc)
        title = "Not found" if exc.status_code == 404 else "Not allowed here"
        return self._error(request, exc.status_code, title, str(exc.detail))

    # -- health, readiness, metrics ---------------------------------------------------------

    def check_ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        checks: dict[str, dict[str, Any]] = {}
        try:
            with self.ctx.db.reading() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "detail": "reachable"}
        except Exception as exc:  # any driver error means not ready
            checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        for name, check in self.ctx.readiness.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a failing probe is a "not ready", not a crash
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            checks[name] = {"ok": ok, "detail": detail}
        return all(c["ok"] for c in checks.values()), checks

    def ops_router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)

        @router.get("/readyz")
        def readyz() -> JSONResponse:
            ready, checks = self.check_ready()
            body = {"status": "ready" if ready else "not ready", "checks": checks}
            return JSONResponse(body, status_code=200 if ready else 503)

        @router.get("/metrics")
        def metrics(reader: str = Depends(self.auth.metrics_reader)) -> Response:
            with self.ctx.db.reading() as session:
                counts = admin_metrics.metric_counts(session)
            body, content_type = render_metrics(counts, len(self.ctx.models()))
            return Response(body, media_type=content_type)

        return router
