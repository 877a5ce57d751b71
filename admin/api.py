"""The JSON API under ``/api``: the same reads and acts as the pages, as JSON.

Reads need a login; acts need the admin role and the ``X-CSRF-Token`` header. Parameters are
typed (``admin.forms``): out of range answers 422, a missing row or a page past the end 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.openapi.utils import get_openapi

from admin import acts
from admin.auth import CurrentUser
from admin.context import ReportContext
from admin.forms import (
    AuditQuery,
    MarkBody,
    PromoteBody,
    RegionBody,
    RollbackBody,
    StudyId,
    StudyQuery,
    VersionId,
)
from storage import admin_study, admin_views
from storage.models import Region


def region_json(r: Region, mark: str | None = None) -> dict[str, Any]:
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
        "slice_index": r.slice_index,
        "z_mm": r.z_mm,
        "instance_number": r.instance_number,
        "finding": r.finding,
        "mark": mark,
    }


def past_the_end(page: int, total: int, per_page: int) -> bool:
    """Page 1 always exists (it may be empty); a later page only if it has rows."""
    return page > 1 and (page - 1) * per_page >= total


def _series_json(x: admin_study.SeriesInfo) -> dict[str, Any]:
    return {
        "id": x.id,
        "series_uid": x.series_uid,
        "modality": x.modality,
        "series_number": x.series_number,
        "description": x.description,
        "calling_aes": x.calling_aes,
        "instances": [
            {"id": i.id, "sop_uid": i.sop_uid, "number": i.number, "slice": i.position}
            for i in x.slices
        ],
    }


def _finding_json(f: admin_study.FindingView) -> dict[str, Any]:
    return {
        "number": f.number,
        "series_uid": f.series.series_uid,
        "first_slice": f.first.position,
        "last_slice": f.last.position,
        "p_value": f.p_value,
        "checks": f.checks,
        "regions": [r.id for r in f.regions],
    }


def _history_json(d: admin_study.StudyDetail) -> dict[str, Any]:
    """Verdicts, deliveries, marks and requested regions of the study."""
    return {
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
        "deliveries": [
            {
                "id": x.id,
                "verdict_id": x.verdict_id,
                "destination": x.destination,
                "state": x.state,
                "attempts": x.attempts,
                "last_error": x.last_error,
                "created_at": x.created_at.isoformat(),
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


def study_json(d: admin_study.StudyDetail) -> dict[str, Any]:
    s = d.study
    regions = [r for f in d.findings for r in f.regions] + d.unflagged
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
        "series": [_series_json(x) for x in d.series],
        "regions_checked": d.regions_checked,
        "regions_flagged": d.regions_flagged,
        "findings": [_finding_json(f) for f in d.findings],
        "regions": [region_json(r, d.region_marks.get(r.id)) for r in regions],
        "provenance": {
            "senders": d.provenance.senders,
            "associations": d.provenance.associations,
            "replaced": d.provenance.replaced,
        },
        **_history_json(d),
    }


def load_study(ctx: ReportContext, study_id: int) -> admin_study.StudyDetail:
    with ctx.db.reading() as session:
        detail = admin_study.study_detail(session, study_id)
    if detail is None:
        raise HTTPException(404, f"no study {study_id}")
    return detail


def api_router(ctx: ReportContext) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["api"])
    viewer = Depends(ctx.auth.viewer)
    actor = Depends(ctx.auth.actor)

    @router.get("/dashboard", summary="Counts today and per day, what waits, models, disk")
    def api_dashboard(user: CurrentUser = viewer) -> dict[str, Any]:
        return ctx.dashboard()

    @router.get("/studies", summary="Studies, filtered, sorted and paginated")
    def api_studies(
        query: Annotated[StudyQuery, Query()], user: CurrentUser = viewer
    ) -> dict[str, Any]:
        f = ctx.study_filter(query)
        with ctx.db.reading() as session:
            rows, total = admin_views.list_studies_page(session, f)
        if past_the_end(f.page, total, f.per_page):
            raise HTTPException(404, f"page {f.page} is past the last page")
        return {
            "total": total,
            "page": f.page,
            "per_page": f.per_page,
            "studies": [
                {**r.__dict__, "last_received_at": r.last_received_at.isoformat()} for r in rows
            ],
        }

    @router.get("/studies/{study_id}", summary="One study: series, findings, regions, provenance")
    def api_study(study_id: StudyId, user: CurrentUser = viewer) -> dict[str, Any]:
        return study_json(load_study(ctx, study_id))

    @router.get("/models", summary="Loaded models, the registry and training runs")
    def api_models(user: CurrentUser = viewer) -> dict[str, Any]:
        return ctx.models_overview()

    @router.post("/models/{version_id}/promote", summary="Make a version production (admin)")
    def api_promote(
        version_id: VersionId, body: PromoteBody | None = None, user: CurrentUser = actor
    ) -> dict[str, str]:
        return {"result": acts.promote(ctx, version_id, body or PromoteBody(), user)}

    @router.post("/models/rollback", summary="Restore the previous production version (admin)")
    def api_rollback(body: RollbackBody, user: CurrentUser = actor) -> dict[str, str]:
        return {"result": acts.rollback(ctx, body, user)}

    @router.post("/models/retrain", summary="Start a retraining run now (admin)")
    def api_retrain(user: CurrentUser = actor) -> dict[str, str]:
        return {"result": acts.retrain(ctx, user)}

    @router.get("/audit", summary="The audit trail, newest first")
    def api_audit(
        query: Annotated[AuditQuery, Query()], user: CurrentUser = viewer
    ) -> dict[str, Any]:
        f = query.to_filter()
        with ctx.db.reading() as session:
            events, total = admin_views.audit_page(session, f)
        if past_the_end(f.page, total, f.per_page):
            raise HTTPException(404, f"page {f.page} is past the last page")
        return {
            "total": total,
            "page": f.page,
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
    def api_rescore(study_id: StudyId, user: CurrentUser = actor) -> dict[str, str]:
        return {"result": acts.rescore(ctx, study_id, user)}

    @router.post("/studies/{study_id}/resend", summary="Send the SR again (admin)")
    def api_resend(study_id: StudyId, user: CurrentUser = actor) -> dict[str, str]:
        return {"result": acts.resend(ctx, study_id, user)}

    @router.post("/studies/{study_id}/marks", summary="Mark study/region genuine or tampered")
    def api_mark(study_id: StudyId, body: MarkBody, user: CurrentUser = actor) -> dict[str, str]:
        return {"result": acts.mark(ctx, study_id, body, user)}

    @router.post("/studies/{study_id}/regions", summary="Ask for a region to be checked")
    def api_region(
        study_id: StudyId, body: RegionBody, user: CurrentUser = actor
    ) -> dict[str, str]:
        return {"result": acts.add_region(ctx, study_id, body, user)}

    return router


def openapi(router: APIRouter) -> dict[str, Any]:
    return get_openapi(
        title="TamperScan admin API",
        version="1",
        description="Session-cookie authenticated; POST needs the X-CSRF-Token header.",
        routes=router.routes,
    )
