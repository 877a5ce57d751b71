"""The HTML forms' routes (POST): log in and out, and the admin's acts on studies and models.

Each act runs ``admin.acts`` and redirects back to the page it came from with a message
(post/redirect/get), so reloading the page never repeats an act. Bodies are the typed models
of ``admin.forms`` read from the form.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from admin import acts
from admin.auth import CurrentUser, verify_password
from admin.context import ReportContext
from admin.forms import MarkBody, PromoteBody, RegionBody, RollbackBody, StudyId, VersionId
from storage.audit import audit
from storage.models import User, utcnow
from storage.users import get_user, record_login, record_login_failure


def safe_next(target: str | None) -> str:
    """Only a local path may follow the login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _back(study_id: int, message: str, anchor: str = "", **params: object) -> Response:
    query = urlencode({"msg": message, **params})
    return RedirectResponse(f"/studies/{study_id}?{query}{anchor}", status_code=303)


def _to_models(message: str) -> Response:
    return RedirectResponse(f"/models?{urlencode({'msg': message})}", status_code=303)


def login_router(ctx: ReportContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    auth = ctx.auth
    viewer = Depends(auth.viewer)

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        return ctx.render(request, "login.html", next=safe_next(next))

    @router.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        await auth.check_csrf(request)
        client = request.client.host if request.client else "?"
        keys = (f"user:{username.lower()}", f"client:{client}")
        wait = auth.throttle.retry_after(*keys)
        if wait > 0:
            with ctx.db.session() as session:
                record_login_failure(session, username, client, "throttled")
            response = ctx.render(
                request,
                "login.html",
                429,
                next=safe_next(next),
                login_error=f"Too many failed logins. Try again in {int(wait) + 1} s.",
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        with ctx.db.reading() as session:
            user: User | None = get_user(session, username)
        if not verify_password(user.password_hash if user else None, password):
            auth.throttle.failed(*keys)
            with ctx.db.session() as session:
                record_login_failure(session, username, client, "wrong user name or password")
            return ctx.render(
                request,
                "login.html",
                401,
                next=safe_next(next),
                login_error="Wrong user name or password.",
            )
        assert user is not None
        auth.throttle.succeeded(keys[0])
        with ctx.db.session() as session:
            record_login(session, user.id, utcnow(), client)
        auth.start_session(request, user)
        return RedirectResponse(safe_next(next), status_code=303)

    @router.post("/logout")
    async def logout(request: Request, user: CurrentUser = viewer) -> Response:
        await auth.check_csrf(request)
        with ctx.db.session() as session:
            audit(session, actor=user.username, action="logout")
        auth.end_session(request)
        return RedirectResponse("/login", status_code=303)

    return router


def action_router(ctx: ReportContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    actor = Depends(ctx.auth.actor)

    @router.post("/studies/{study_id}/rescore")
    def rescore(study_id: StudyId, user: CurrentUser = actor) -> Response:
        return _back(study_id, acts.rescore(ctx, study_id, user))

    @router.post("/studies/{study_id}/resend")
    def resend(study_id: StudyId, user: CurrentUser = actor) -> Response:
        return _back(study_id, acts.resend(ctx, study_id, user))

    @router.post("/studies/{study_id}/mark")
    def mark(
        study_id: StudyId, body: Annotated[MarkBody, Form()], user: CurrentUser = actor
    ) -> Response:
        anchor = f"#region-{body.region_id}" if body.region_id else ""
        return _back(study_id, acts.mark(ctx, study_id, body, user), anchor)

    @router.post("/studies/{study_id}/regions")
    def add_region(
        study_id: StudyId, body: Annotated[RegionBody, Form()], user: CurrentUser = actor
    ) -> Response:
        message = acts.add_region(ctx, study_id, body, user)
        return _back(study_id, message, "#viewer", slice=body.instance_id)

    @router.post("/models/{version_id}/promote")
    def promote(
        version_id: VersionId, body: Annotated[PromoteBody, Form()], user: CurrentUser = actor
    ) -> Response:
        return _to_models(acts.promote(ctx, version_id, body, user))

    @router.post("/models/rollback")
    def rollback(body: Annotated[RollbackBody, Form()], user: CurrentUser = actor) -> Response:
        return _to_models(acts.rollback(ctx, body, user))

    @router.post("/models/retrain")
    def retrain(user: CurrentUser = actor) -> Response:
        return _to_models(acts.retrain(ctx, user))

    return router
