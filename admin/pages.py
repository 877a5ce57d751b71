"""The report's HTML pages (GET only): dashboard, studies, one study, models, audit, API docs.

Pages need a login. Parameters are typed (``admin.forms``): out of range answers 422, a study
that does not exist or a page past the end 404, both as an error page.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from admin.api import load_study, past_the_end
from admin.auth import CurrentUser
from admin.context import ReportContext, fmt_time
from admin.forms import AuditQuery, StudyId, StudyQuery
from storage import admin_views

AUDIT_PAGE = 100
# Audit actions whose target is a study id / a SOP Instance UID (the page links them).
STUDY_TARGETS = ("study.", "region.", "report.", "verdict.")
INSTANCE_TARGETS = ("instance.",)


def csv_cell(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (AE titles and UIDs come from outside)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _link_builder(path: str, request: Request) -> Callable[..., str]:
    params = {
        k: v for k, v in request.query_params.items() if k not in ("page", "msg", "err") and v
    }

    def link(**changes: Any) -> str:
        return f"{path}?" + urlencode({**params, **{k: v for k, v in changes.items() if v}})

    return link


def audit_links(session: Any, events: list[Any]) -> dict[int, str]:
    """Where each event's target lives in the report: a study, a model version, a training
    run, or a user's own events."""
    sops = [e.target for e in events if e.target and e.action.startswith(INSTANCE_TARGETS)]
    studies = admin_views.studies_of_instances(session, sops)
    links: dict[int, str] = {}
    for e in events:
        target = e.target or ""
        kind, _, ref = target.partition(":")
        if target.isdigit() and e.action.startswith(STUDY_TARGETS):
            links[e.id] = f"/studies/{target}"
        elif target in studies:
            links[e.id] = f"/studies/{studies[target]}"
        elif kind == "model" and ref.isdigit():
            links[e.id] = f"/models#version-{ref}"
        elif kind == "run" and ref.isdigit():
            links[e.id] = "/models#runs"
        elif target and e.action.startswith("user."):
            links[e.id] = "/audit?" + urlencode({"actor": target})
    return links


def page_router(ctx: ReportContext, api_spec: Callable[[], dict[str, Any]]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    viewer = Depends(ctx.auth.viewer)

    @router.get("/", response_class=HTMLResponse)
    def dashboard_page(request: Request, user: CurrentUser = viewer) -> Response:
        data = ctx.dashboard()
        peak = max([1] + [max(d["received"], d["scored"], d["flagged"]) for d in data["days"]])
        return ctx.render(request, "dashboard.html", d=data, peak=peak)

    @router.get("/studies", response_class=HTMLResponse)
    def studies_page(
        request: Request, query: Annotated[StudyQuery, Query()], user: CurrentUser = viewer
    ) -> Response:
        f = ctx.study_filter(query)
        with ctx.db.reading() as session:
            rows, total = admin_views.list_studies_page(session, f)
            choices = admin_views.filter_choices(session)
        if past_the_end(f.page, total, f.per_page):
            raise HTTPException(404, f"page {f.page} is past the last page")
        return ctx.render(
            request,
            "studies.html",
            rows=rows,
            total=total,
            f=f,
            pages=max(1, -(-total // f.per_page)),
            link=_link_builder("/studies", request),
            choices=choices,
            query=request.query_params,
        )

    @router.get("/studies/{study_id}", response_class=HTMLResponse)
    def study_page(request: Request, study_id: StudyId, user: CurrentUser = viewer) -> Response:
        d = load_study(ctx, study_id)
        viewer_data = [
            {
                "id": series.id,
                "label": f"Series {series.series_number or ''} {series.modality or ''}".strip(),
                "modality": (series.modality or "").upper(),
                "slices": [
                    [sl.id, sl.number, sl.sha, int(sl.flagged), sl.regions] for sl in series.slices
                ],
            }
            for series in d.series
        ]
        start = None
        if d.findings:
            start = [d.findings[0].series.id, d.findings[0].shown_slice.position]
        requested: dict[int, list[list[float]]] = {}
        for r in d.requested:
            sl = d.slices.get(r.sop_instance_uid)
            if sl is not None:
                requested.setdefault(sl.id, []).append([r.x, r.y, r.radius_px])
        return ctx.render(
            request,
            "study.html",
            d=d,
            s=d.study,
            viewer={"study": d.study.id, "series": viewer_data, "start": start},
            requested=requested,
        )

    @router.get("/models", response_class=HTMLResponse)
    def models_page(request: Request, user: CurrentUser = viewer) -> Response:
        return ctx.render(request, "models.html", m=ctx.models_overview())

    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(
        request: Request, query: Annotated[AuditQuery, Query()], user: CurrentUser = viewer
    ) -> Response:
        f = query.to_filter(AUDIT_PAGE)
        with ctx.db.reading() as session:
            events, total = admin_views.audit_page(session, f)
            actions = admin_views.audit_actions(session)
            links = audit_links(session, events)
        if past_the_end(f.page, total, f.per_page):
            raise HTTPException(404, f"page {f.page} is past the last page")
        link = _link_builder("/audit", request)
        return ctx.render(
            request,
            "audit.html",
            events=events,
            total=total,
            page=f.page,
            pages=max(1, -(-total // AUDIT_PAGE)),
            q=query,
            actions=actions,
            links=links,
            link=link,
            csv_link=_link_builder("/audit.csv", request)(),
        )

    @router.get("/audit.csv")
    def audit_csv(query: Annotated[AuditQuery, Query()], user: CurrentUser = viewer) -> Response:
        """Every matching event (not only one page), for a spreadsheet or an incident report."""
        with ctx.db.reading() as session:
            events = admin_views.audit_rows(session, query.to_filter())
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "at_utc", "actor", "action", "target", "detail"])
        for e in events:
            detail = json.dumps(e.detail, sort_keys=True) if e.detail else ""
            row = [e.id, fmt_time(e.at), e.actor, e.action, e.target, detail]
            writer.writerow([csv_cell(v) for v in row])
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="tamperscan-audit.csv"'},
        )

    @router.get("/api/docs", response_class=HTMLResponse)
    def api_docs(request: Request, user: CurrentUser = viewer) -> Response:
        return ctx.render(request, "api_docs.html", spec=api_spec())

    @router.get("/api/openapi.json")
    def openapi_json(user: CurrentUser = viewer) -> dict[str, Any]:
        return api_spec()

    return router
