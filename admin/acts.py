"""The admin's acts, one function each: run it in its own transaction, say what was done.

Shared by the JSON API and the HTML forms, which differ only in how they answer. Refusals are
``storage.admin_actions.ActionError`` (409 with the reason); each act is audited by the storage
function that performs it, in the same transaction.
"""

from __future__ import annotations

from admin.auth import CurrentUser
from admin.context import ReportContext
from admin.forms import MarkBody, PromoteBody, RegionBody, RollbackBody
from storage import admin_actions as a
from storage.models import utcnow


def rescore(ctx: ReportContext, study_id: int, user: CurrentUser) -> str:
    with ctx.db.session() as session:
        version = a.rescore_study(session, study_id, user.username, utcnow())
    return f"re-scoring queued as study version {version}"


def resend(ctx: ReportContext, study_id: int, user: CurrentUser) -> str:
    with ctx.db.session() as session:
        count = a.resend_report(session, study_id, user.username, utcnow())
    return f"report queued again for {count} destination(s)"


def mark(ctx: ReportContext, study_id: int, body: MarkBody, user: CurrentUser) -> str:
    with ctx.db.session() as session:
        made = a.add_mark(
            session, study_id, body.label, user.username, utcnow(), body.region_id, body.note
        )
        what = f"region {made.region_id}" if made.region_id else "study"
        return f"{what} marked confirmed {made.label}"


def add_region(ctx: ReportContext, study_id: int, body: RegionBody, user: CurrentUser) -> str:
    with ctx.db.session() as session:
        requested = a.add_requested_region(
            session,
            study_id,
            body.instance_id,
            body.x,
            body.y,
            body.radius_px,
            user.username,
            utcnow(),
        )
        return (
            f"region at ({requested.x}, {requested.y}) will be checked at every scoring; "
            "re-score the study to check it now"
        )


def promote(ctx: ReportContext, version_id: int, body: PromoteBody, user: CurrentUser) -> str:
    """Registry refusals arrive as ``ActionError``. Serving notices a new production version by
    polling the registry (``detector.serving.ProductionModels``), not from here."""
    reason = body.reason.strip() or f"promoted by {user.username}"
    with ctx.db.session() as session:
        version = a.promote_version(
            session, version_id, user.username, utcnow(), reason, ctx.models_dir
        )
        return (
            f"version {version.id} is now the production {version.detector} model for "
            f"{version.modality}; scoring switches to it at the next model reload"
        )


def rollback(ctx: ReportContext, body: RollbackBody, user: CurrentUser) -> str:
    with ctx.db.session() as session:
        restored = a.rollback_slot(session, body.detector, body.modality, user.username, utcnow())
        return (
            f"rolled back: version {restored.id} is the production {restored.detector} "
            f"model for {restored.modality} again"
        )


def retrain(ctx: ReportContext, user: CurrentUser) -> str:
    if ctx.retrain_now is None:
        raise a.ActionError("retraining is disabled in this service ([retrain] enabled = false)")
    with ctx.db.session() as session:
        a.request_retrain(session, user.username)
        ctx.retrain_now(user.username)  # raising rolls the audit event back
    return "retraining started; its run appears under Training runs"
