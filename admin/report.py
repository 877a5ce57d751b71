"""The admin web report: pages, a JSON API, readiness and metrics on the service's HTTP app.

Only the login form, ``/static``, ``/healthz`` and ``/readyz`` are public. Pages and ``/api``
need a login (pages redirect to the form, the API answers 401); acts need the admin role and
the session's CSRF token, and each is audited by the storage function that performs it. The
report reads storage and only queues work (a scoring job, a delivery): it never scores or
sends anything itself.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select, text

from admin import images
from admin.auth import (
    Auth,
    CsrfFailed,
    CurrentUser,
    Forbidden,
    LoginRequired,
    SessionMiddleware,
    verify_password,
)
from admin.metrics import render_metrics
from admin.settings import AdminSettings
from storage import admin_queries as q
from storage.db import Database
from storage.models import MARK_LABELS, VERDICT_OUTCOMES, Region, User, utcnow
from storage.users import get_user, record_login, record_login_failure

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
ReadinessCheck = Callable[[], tuple[bool, str]]


def _fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _fmt_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _safe_next(target: str | None) -> str:
    """Only a local path may follow the login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _region_json(r: Region, mark: str | None = None) -> dict[str, Any]:
    return {
        "id": r.id,
        "series_uid": r.series_uid,
        "sop_instance_uid": r.sop_instance_uid,
        "x": r.x,
        "y": r.y,
        "radius_px": r.radius_px,
        "source": r.source,
        "scores": r.scores,
        "p_value": r.p_value,
        "flagged": r.flagged,
        "has_heatmap": bool(r.heatmap_path),
        "mark": mark,
    }


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
    ) -> None:
        """``retrain_now(actor)`` starts a retraining run at once; None where retraining is
        disabled, so the report shows no button and answers 409 instead of pretending."""
        self.db = db
        self.data_dir = data_dir
        self.instance_root = data_dir / "instances"
        self.settings = settings
        self.models = models
        self.retrain_now = retrain_now
        self.models_dir = data_dir / "models"
        self.readiness = readiness or {}
        self.auth = Auth(db, settings, data_dir)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters.update(time=_fmt_time, p=_fmt_p, bytes=_fmt_bytes)
        env.globals.update(outcomes=VERDICT_OUTCOMES, mark_labels=MARK_LABELS)

    # -- wiring -----------------------------------------------------------------------------

    def install(self, app: FastAPI) -> None:
        app.add_middleware(SessionMiddleware, auth=self.auth, skip_prefixes=("/dicom-web",))
        app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
        app.add_exception_handler(LoginRequired, self._on_login_required)
        app.add_exception_handler(Forbidden, self._on_forbidden)
        app.add_exception_handler(CsrfFailed, self._on_csrf)
        app.add_exception_handler(q.ActionError, self._on_action_error)
        self.routers = [self.ops_router(), self.api_router(), self.page_router()]
        for router in self.routers:
            app.include_router(router)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        user = self.auth.current_user(request)
        context.update(
            user=user,
            csrf=self.auth.csrf_token(request),
            message=request.query_params.get("msg"),
            error=request.query_params.get("err"),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    @staticmethod
    def _wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/metrics"))

    async def _on_login_required(self, request: Request, _exc: Exception) -> Response:
        if self._wants_json(request):
            return JSONResponse({"detail": "login required"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    async def _on_forbidden(self, request: Request, _exc: Exception) -> Response:
        detail = "this needs the admin role"
        if self._wants_json(request):
            return JSONResponse({"detail": detail}, status_code=403)
        return self.render(request, "error.html", 403, title="Not allowed", detail=detail)

    async def _on_csrf(self, request: Request, _exc: Exception) -> Response:
        detail = "missing or wrong CSRF token: reload the page and try again"
        if self._wants_json(request):
            return JSONResponse({"detail": detail}, status_code=403)
        return self.render(request, "error.html", 403, title="Refused", detail=detail)

    async def _on_action_error(self, request: Request, exc: Exception) -> Response:
        if self._wants_json(request):
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return self.render(request, "error.html", 409, title="Not done", detail=str(exc))

    # -- health, readiness, metrics ---------------------------------------------------------

    def check_ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        checks: dict[str, dict[str, Any]] = {}
        try:
            with self.db.reading() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "detail": "reachable"}
        except Exception as exc:  # any driver error means not ready
            checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        for name, check in self.readiness.items():
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
            with self.db.reading() as session:
                counts = q.metric_counts(session)
            body, content_type = render_metrics(counts, len(self.models()))
            return Response(body, media_type=content_type)

        return router

    # -- shared reads and acts ---------------------------------------------------------------

    def _filter(
        self,
        verdict: str | None,
        date_from: str | None,
        date_to: str | None,
        modality: str | None,
        calling_ae: str | None,
        patient: str | None,
        sort: str,
        order: str,
        page: int,
        per_page: int,
    ) -> q.StudyFilter:
        def day(value: str | None, name: str) -> date | None:
            if not value:
                return None
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise q.ActionError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from None

        return q.StudyFilter(
            verdict=verdict or None,
            date_from=day(date_from, "from"),
            date_to=day(date_to, "to"),
            modality=modality or None,
            calling_ae=calling_ae or None,
            patient=patient or None,
            sort=sort,
            descending=order != "asc",
            page=page,
            per_page=per_page,
        )

    def _detail(self, study_id: int) -> q.StudyDetail:
        with self.db.reading() as session:
            detail = q.study_detail(session, study_id)
        if detail is None:
            raise q.ActionError(f"no study {study_id}")
        return detail

    def _act(self, action: str, study_id: int, user: CurrentUser, **kw: Any) -> str:
        """Run one act in its own transaction; returns what to tell the person."""
        now = utcnow()
        with self.db.session() as session:
            if action == "rescore":
                version = q.rescore_study(session, study_id, user.username, now)
                return f"re-scoring queued as study version {version}"
            if action == "resend":
                count = q.resend_report(session, study_id, user.username, now)
                return f"report queued again for {count} destination(s)"
            if action == "mark":
                mark = q.add_mark(
                    session,
                    study_id,
                    kw["label"],
                    user.username,
                    now,
                    kw.get("region_id"),
                    kw.get("note"),
                )
                what = f"region {mark.region_id}" if mark.region_id else "study"
                return f"{what} marked confirmed {mark.label}"
            if action == "region":
                requested = q.add_requested_region(
                    session,
                    study_id,
                    kw["instance_id"],
                    kw["x"],
                    kw["y"],
                    kw["radius_px"],
                    user.username,
                    now,
                )
                return (
                    f"region at ({requested.x}, {requested.y}) will be checked at every scoring; "
                    "re-score the study to check it now"
                )
        raise q.ActionError(f"unknown action {action!r}")

    def _model_act(self, action: str, user: CurrentUser, **kw: Any) -> str:
        """Promote, roll back or retrain in one audited transaction; what to tell the person.

        Registry refusals arrive as ``ActionError`` (409). Serving notices a new production
        version by polling the registry (``detector.serving.ProductionModels``), not from here.
        """
        now = utcnow()
        with self.db.session() as session:
            if action == "promote":
                reason = (kw.get("reason") or "").strip() or f"promoted by {user.username}"
                version = q.promote_version(
                    session, kw["version_id"], user.username, now, reason[:2000], self.models_dir
                )
                return (
                    f"version {version.id} is now the production {version.detector} model for "
                    f"{version.modality}; scoring switches to it at the next model reload"
                )
            if action == "rollback":
                restored = q.rollback_slot(
                    session, kw["detector"], kw["modality"], user.username, now
                )
                return (
                    f"rolled back: version {restored.id} is the production {restored.detector} "
                    f"model for {restored.modality} again"
                )
            if action == "retrain":
                if self.retrain_now is None:
                    raise q.ActionError(
                        "retraining is disabled in this service ([retrain] enabled = false)"
                    )
                q.request_retrain(session, user.username)
                self.retrain_now(user.username)  # raising rolls the audit event back
                return "retraining started; its run appears under Training runs"
        raise q.ActionError(f"unknown action {action!r}")

    def _models(self) -> dict[str, Any]:
        with self.db.reading() as session:
            seen = q.model_versions_seen(session)
            registry = q.registry_overview(session)
        return {
            "loaded": self.models(),
            "seen_in_verdicts": seen,
            "registry": registry,
            "retrain_available": self.retrain_now is not None,
        }

    def _disk(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.data_dir if self.data_dir.exists() else Path("/"))
        return {"total": usage.total, "used": usage.used, "free": usage.free}

    def _dashboard(self) -> dict[str, Any]:
        with self.db.reading() as session:
            data = q.dashboard(session, utcnow())
            data["last_retrain"] = q.last_training_run(session)
        data["disk"] = self._disk()
        data["models"] = self.models()
        return data

    # -- JSON API -------------------------------------------------------------------------

    def api_router(self) -> APIRouter:
        router = APIRouter(prefix="/api", tags=["api"])
        viewer = Depends(self.auth.viewer)
        actor = Depends(self.auth.actor)

        @router.get("/dashboard", summary="Counts today and per day, queue, models, disk")
        def api_dashboard(user: CurrentUser = viewer) -> dict[str, Any]:
            return self._dashboard()

        @router.get("/studies", summary="Studies, filtered, sorted and paginated")
        def api_studies(
            user: CurrentUser = viewer,
            verdict: str | None = None,
            date_from: str | None = Query(None, alias="from"),
            date_to: str | None = Query(None, alias="to"),
            modality: str | None = None,
            calling_ae: str | None = None,
            patient: str | None = None,
            sort: str = "received",
            order: str = "desc",
            page: int = 1,
            per_page: int = 50,
        ) -> dict[str, Any]:
            f = self._filter(
                verdict,
                date_from,
                date_to,
                modality,
                calling_ae,
                patient,
                sort,
                order,
                page,
                per_page,
            )
            with self.db.reading() as session:
                rows, total = q.list_studies_page(session, f)
            return {
                "total": total,
                "page": f.page,
                "per_page": f.per_page,
                "studies": [
                    {**r.__dict__, "last_received_at": r.last_received_at.isoformat()} for r in rows
                ],
            }

        @router.get("/studies/{study_id}", summary="One study: series, verdicts, regions")
        def api_study(study_id: int, user: CurrentUser = viewer) -> dict[str, Any]:
            d = self._detail(study_id)
            s = d.study
            return {
                "id": s.id,
                "study_uid": s.study_uid,
                "patient_id": s.patient_id,
                "patient_name": s.patient_name,
                "study_date": s.study_date,
                "accession_number": s.accession_number,
                "description": s.description,
                "state": s.state,
                "version": s.version,
                "series": d.series,
                "verdicts": [
                    {
                        "id": v.id,
                        "study_version": v.study_version,
                        "outcome": v.outcome,
                        "reason": v.reason,
                        "score": v.score,
                        "current": v.is_current,
                        "created_at": v.created_at.isoformat(),
                        "details": v.details,
                    }
                    for v in d.verdicts
                ],
                "regions_checked": d.regions_checked,
                "regions": [_region_json(r, d.region_marks.get(r.id)) for r in d.regions],
                "deliveries": [
                    {
                        "id": x.id,
                        "verdict_id": x.verdict_id,
                        "destination": x.destination,
                        "state": x.state,
                        "attempts": x.attempts,
                        "last_error": x.last_error,
                        "delivered_at": x.delivered_at.isoformat() if x.delivered_at else None,
                    }
                    for x in d.deliveries
                ],
                "marks": [
                    {
                        "id": m.id,
                        "region_id": m.region_id,
                        "label": m.label,
                        "actor": m.actor,
                        "note": m.note,
                        "created_at": m.created_at.isoformat(),
                    }
                    for m in d.marks
                ],
                "requested_regions": [
                    {
                        "id": r.id,
                        "sop_instance_uid": r.sop_instance_uid,
                        "x": r.x,
                        "y": r.y,
                        "radius_px": r.radius_px,
                        "requested_by": r.requested_by,
                    }
                    for r in d.requested
                ],
            }

        @router.get("/models", summary="Loaded models, the registry and training runs")
        def api_models(user: CurrentUser = viewer) -> dict[str, Any]:
            return self._models()

        @router.post("/models/{version_id}/promote", summary="Make a version production (admin)")
        def api_promote(
            version_id: int, body: dict[str, Any] | None = None, user: CurrentUser = actor
        ) -> dict[str, str]:
            reason = str((body or {}).get("reason") or "")
            result = self._model_act("promote", user, version_id=version_id, reason=reason)
            return {"result": result}

        @router.post("/models/rollback", summary="Restore the previous production version (admin)")
        def api_rollback(body: dict[str, Any], user: CurrentUser = actor) -> dict[str, str]:
            detector, modality = body.get("detector"), body.get("modality")
            if not isinstance(detector, str) or not isinstance(modality, str):
                raise q.ActionError("detector and modality are required strings")
            return {
                "result": self._model_act("rollback", user, detector=detector, modality=modality)
            }

        @router.post("/models/retrain", summary="Start a retraining run now (admin)")
        def api_retrain(user: CurrentUser = actor) -> dict[str, str]:
            return {"result": self._model_act("retrain", user)}

        @router.get("/audit", summary="The audit trail, newest first")
        def api_audit(
            user: CurrentUser = viewer,
            page: int = 1,
            action: str | None = None,
            actor_name: str | None = Query(None, alias="actor"),
        ) -> dict[str, Any]:
            with self.db.reading() as session:
                events, total = q.audit_page(session, page, 100, action, actor_name)
            return {
                "total": total,
                "events": [
                    {
                        "id": e.id,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "action": e.action,
                        "target": e.target,
                        "detail": e.detail,
                    }
                    for e in events
                ],
            }

        @router.post("/studies/{study_id}/rescore", summary="Queue a new scoring (admin)")
        def api_rescore(study_id: int, user: CurrentUser = actor) -> dict[str, str]:
            return {"result": self._act("rescore", study_id, user)}

        @router.post("/studies/{study_id}/resend", summary="Send the SR again (admin)")
        def api_resend(study_id: int, user: CurrentUser = actor) -> dict[str, str]:
            return {"result": self._act("resend", study_id, user)}

        @router.post("/studies/{study_id}/marks", summary="Mark study/region genuine or tampered")
        def api_mark(
            study_id: int,
            body: dict[str, Any],
            user: CurrentUser = actor,
        ) -> dict[str, str]:
            region_id = body.get("region_id")
            return {
                "result": self._act(
                    "mark",
                    study_id,
                    user,
                    label=str(body.get("label", "")),
                    region_id=int(region_id) if region_id is not None else None,
                    note=body.get("note"),
                )
            }

        @router.post("/studies/{study_id}/regions", summary="Ask for a region to be checked")
        def api_region(study_id: int, body: dict[str, Any], user: CurrentUser = actor) -> dict:
            try:
                kw = {
                    "instance_id": int(body["instance_id"]),
                    "x": int(body["x"]),
                    "y": int(body["y"]),
                    "radius_px": float(body.get("radius_px", 12)),
                }
            except (KeyError, TypeError, ValueError):
                raise q.ActionError("instance_id, x and y are required numbers") from None
            return {"result": self._act("region", study_id, user, **kw)}

        self._api_routes = router.routes
        return router

    def openapi(self) -> dict[str, Any]:
        return get_openapi(
            title="TamperScan admin API",
            version="1",
            description="Session-cookie authenticated; POST needs the X-CSRF-Token header.",
            routes=self._api_routes,
        )

    # -- pages ------------------------------------------------------------------------------

    def page_router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        viewer = Depends(self.auth.viewer)
        actor = Depends(self.auth.actor)
        auth = self.auth

        @router.get("/login", response_class=HTMLResponse)
        def login_form(request: Request, next: str = "/") -> Response:
            return self.render(request, "login.html", next=_safe_next(next))

        @router.post("/login")
        async def login(
            request: Request,
            username: str = Form(""),
            password: str = Form(""),
            next: str = Form("/"),
        ) -> Response:
            await auth.check_csrf(request)
            client = request.client.host if request.client else "?"
            keys = (f"user:{username.lower()}", f"client:{client}")
            wait = auth.throttle.retry_after(*keys)
            if wait > 0:
                with self.db.session() as session:
                    record_login_failure(session, username, client, "throttled")
                response = self.render(
                    request,
                    "login.html",
                    429,
                    next=_safe_next(next),
                    login_error=f"Too many failed logins. Try again in {int(wait) + 1} s.",
                )
                response.headers["Retry-After"] = str(int(wait) + 1)
                return response
            with self.db.reading() as session:
                user: User | None = get_user(session, username)
            if not verify_password(user.password_hash if user else None, password):
                auth.throttle.failed(*keys)
                with self.db.session() as session:
                    record_login_failure(session, username, client, "wrong user name or password")
                return self.render(
                    request,
                    "login.html",
                    401,
                    next=_safe_next(next),
                    login_error="Wrong user name or password.",
                )
            assert user is not None
            auth.throttle.succeeded(keys[0])
            with self.db.session() as session:
                record_login(session, user.id, utcnow(), client)
            auth.start_session(request, user)
            return RedirectResponse(_safe_next(next), status_code=303)

        @router.post("/logout")
        async def logout(request: Request, user: CurrentUser = viewer) -> Response:
            await auth.check_csrf(request)
            with self.db.session() as session:
                from storage.audit import audit

                audit(session, actor=user.username, action="logout")
            auth.end_session(request)
            return RedirectResponse("/login", status_code=303)

        @router.get("/", response_class=HTMLResponse)
        def dashboard_page(request: Request, user: CurrentUser = viewer) -> Response:
            data = self._dashboard()
            peak = max([1] + [max(d["received"], d["scored"], d["flagged"]) for d in data["days"]])
            return self.render(request, "dashboard.html", d=data, peak=peak)

        @router.get("/studies", response_class=HTMLResponse)
        def studies_page(
            request: Request,
            user: CurrentUser = viewer,
            verdict: str | None = None,
            date_from: str | None = Query(None, alias="from"),
            date_to: str | None = Query(None, alias="to"),
            modality: str | None = None,
            calling_ae: str | None = None,
            patient: str | None = None,
            sort: str = "received",
            order: str = "desc",
            page: int = 1,
            per_page: int = 50,
        ) -> Response:
            f = self._filter(
                verdict,
                date_from,
                date_to,
                modality,
                calling_ae,
                patient,
                sort,
                order,
                page,
                per_page,
            )
            with self.db.reading() as session:
                rows, total = q.list_studies_page(session, f)
                choices = q.filter_choices(session)
            params = {
                k: v
                for k, v in request.query_params.items()
                if k not in ("page", "msg", "err") and v
            }
            pages = max(1, -(-total // f.per_page))

            def link(**changes: Any) -> str:
                return "/studies?" + urlencode({**params, **changes})

            return self.render(
                request,
                "studies.html",
                rows=rows,
                total=total,
                f=f,
                pages=pages,
                link=link,
                choices=choices,
                query=request.query_params,
            )

        @router.get("/studies/{study_id}", response_class=HTMLResponse)
        def study_page(
            request: Request, study_id: int, user: CurrentUser = viewer, slice: int | None = None
        ) -> Response:
            d = self._detail(study_id)
            all_ids = [i["id"] for s in d.series for i in s["instances"]]
            if slice not in all_ids:
                first = next((r for r in d.regions if r.flagged), None)
                slice = d.instance_ids.get(first.sop_instance_uid) if first else None
                if slice is None and all_ids:
                    slice = all_ids[len(all_ids) // 2]
            return self.render(request, "study.html", d=d, s=d.study, slice_id=slice)

        @router.get("/studies/{study_id}/instances/{instance_id}.png")
        def instance_png(
            study_id: int,
            instance_id: int,
            user: CurrentUser = viewer,
            size: int | None = Query(None, ge=16, le=2048),
            overlay: bool = False,
        ) -> Response:
            with self.db.reading() as session:
                found = q.instance_file(session, study_id, instance_id)
                circles: list[tuple[int, int, float, tuple[int, int, int]]] = []
                if found is not None and overlay:
                    detail_regions = session.execute(
                        select(Region.x, Region.y, Region.radius_px, Region.flagged)
                        .join(
                            q.Verdict,
                            (q.Verdict.id == Region.verdict_id) & q.Verdict.is_current.is_(True),
                        )
                        .join(q.Instance, q.Instance.sop_instance_uid == Region.sop_instance_uid)
                        .where(Region.study_id == study_id, q.Instance.id == instance_id)
                    ).all()
                    circles += [
                        (
                            x,
                            y,
                            r or 8.0,
                            images.FLAGGED_COLOUR if flagged else images.CHECKED_COLOUR,
                        )
                        for x, y, r, flagged in detail_regions
                        if flagged
                    ]
                    circles += [
                        (r.x, r.y, r.radius_px, images.ADMIN_COLOUR)
                        for r in session.scalars(
                            select(q.RequestedRegion).where(
                                q.RequestedRegion.study_id == study_id,
                                q.RequestedRegion.sop_instance_uid
                                == select(q.Instance.sop_instance_uid)
                                .where(q.Instance.id == instance_id)
                                .scalar_subquery(),
                            )
                        ).all()
                    ]
            if found is None:
                return JSONResponse({"detail": "no such slice in this study"}, status_code=404)
            path = self.instance_root / found[0]
            try:
                if overlay:
                    body = images.overlay_png(path, found[1], circles)
                else:
                    body = images.slice_png(path, found[1], size)
            except images.ImageError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
            return Response(body, media_type="image/png", headers={"Cache-Control": "private"})

        @router.get("/regions/{region_id}.png")
        def region_png(
            region_id: int, user: CurrentUser = viewer, scale: int = Query(2, ge=1, le=4)
        ) -> Response:
            with self.db.reading() as session:
                found = q.region_with_file(session, region_id)
            if found is None:
                return JSONResponse({"detail": "no such region"}, status_code=404)
            region, rel, modality = found
            heatmap = None
            if region.heatmap_path:
                candidate = (self.data_dir / region.heatmap_path).resolve()
                if candidate.is_relative_to((self.data_dir / "heatmaps").resolve()):
                    heatmap = candidate
            colour = images.FLAGGED_COLOUR if region.flagged else images.CHECKED_COLOUR
            if region.source == "admin" and not region.flagged:
                colour = images.ADMIN_COLOUR
            try:
                body = images.overlay_png(
                    self.instance_root / rel,
                    modality,
                    [(region.x, region.y, region.radius_px or 8.0, colour)],
                    heatmap,
                    (region.x, region.y),
                    scale,
                )
            except images.ImageError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
            return Response(body, media_type="image/png", headers={"Cache-Control": "private"})

        def back(study_id: int, message: str, anchor: str = "") -> Response:
            return RedirectResponse(
                f"/studies/{study_id}?{urlencode({'msg': message})}{anchor}", status_code=303
            )

        @router.post("/studies/{study_id}/rescore")
        def rescore(study_id: int, user: CurrentUser = actor) -> Response:
            return back(study_id, self._act("rescore", study_id, user))

        @router.post("/studies/{study_id}/resend")
        def resend(study_id: int, user: CurrentUser = actor) -> Response:
            return back(study_id, self._act("resend", study_id, user))

        @router.post("/studies/{study_id}/mark")
        def mark(
            study_id: int,
            label: str = Form(...),
            region_id: int | None = Form(None),
            note: str = Form(""),
            user: CurrentUser = actor,
        ) -> Response:
            message = self._act("mark", study_id, user, label=label, region_id=region_id, note=note)
            return back(study_id, message, f"#region-{region_id}" if region_id else "")

        @router.post("/studies/{study_id}/regions")
        def add_region(
            study_id: int,
            instance_id: int = Form(...),
            x: int = Form(...),
            y: int = Form(...),
            radius_px: float = Form(12.0),
            user: CurrentUser = actor,
        ) -> Response:
            message = self._act(
                "region", study_id, user, instance_id=instance_id, x=x, y=y, radius_px=radius_px
            )
            return RedirectResponse(
                f"/studies/{study_id}?{urlencode({'msg': message, 'slice': instance_id})}#viewer",
                status_code=303,
            )

        @router.get("/models", response_class=HTMLResponse)
        def models_page(request: Request, user: CurrentUser = viewer) -> Response:
            return self.render(request, "models.html", m=self._models())

        def to_models(message: str) -> Response:
            return RedirectResponse(f"/models?{urlencode({'msg': message})}", status_code=303)

        @router.post("/models/{version_id}/promote")
        def promote(version_id: int, reason: str = Form(""), user: CurrentUser = actor) -> Response:
            return to_models(self._model_act("promote", user, version_id=version_id, reason=reason))

        @router.post("/models/rollback")
        def rollback(
            detector: str = Form(...), modality: str = Form(...), user: CurrentUser = actor
        ) -> Response:
            return to_models(
                self._model_act("rollback", user, detector=detector, modality=modality)
            )

        @router.post("/models/retrain")
        def retrain(user: CurrentUser = actor) -> Response:
            return to_models(self._model_act("retrain", user))

        @router.get("/audit", response_class=HTMLResponse)
        def audit_page(
            request: Request,
            user: CurrentUser = viewer,
            page: int = 1,
            action: str | None = None,
            actor_name: str | None = Query(None, alias="actor"),
        ) -> Response:
            with self.db.reading() as session:
                events, total = q.audit_page(session, page, 100, action or None, actor_name or None)
            return self.render(
                request,
                "audit.html",
                events=events,
                total=total,
                page=max(1, page),
                pages=max(1, -(-total // 100)),
                action=action or "",
                actor=actor_name or "",
            )

        @router.get("/api/docs", response_class=HTMLResponse)
        def api_docs(request: Request, user: CurrentUser = viewer) -> Response:
            return self.render(request, "api_docs.html", spec=self.openapi())

        @router.get("/api/openapi.json")
        def openapi_json(user: CurrentUser = viewer) -> dict[str, Any]:
            return self.openapi()

        return router
