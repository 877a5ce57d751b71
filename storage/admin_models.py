"""The model registry as the admin report shows it: versions with their gate, slots, runs.

Read-only; promotion and rollback are acts (``storage.admin_actions``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.admin_actions import running_run_id
from storage.models import MODEL_PRODUCTION, ModelVersion, TrainingRun, Verdict
from storage.registry import rollback_target

GATE_KEYS = ("auc", "false_alarm_rate", "tampered", "genuine", "genuine_patches")


def _gate(measured: Any) -> dict[str, Any] | None:
    """The gate measurement kept in a version's metrics (see ``detector.retrain.GateMetrics``)."""
    if not isinstance(measured, dict):
        return None
    return {k: measured.get(k) for k in GATE_KEYS}


def _count(manifest: dict[str, Any] | None, key: str) -> int | None:
    items = (manifest or {}).get(key)
    return len(items) if isinstance(items, list) else None


def version_row(v: ModelVersion) -> dict[str, Any]:
    """One registry version as the page and the API show it: metrics summarised, the manifest's
    instance lists counted (they hold thousands of sha256s)."""
    metrics = v.metrics or {}
    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
    return {
        "id": v.id,
        "detector": v.detector,
        "modality": v.modality,
        "state": v.state,
        "created_at": v.created_at,
        "promoted_at": v.promoted_at,
        "retired_at": v.retired_at,
        "sha256": v.sha256,
        "checkpoint_path": v.checkpoint_path,
        "run_id": v.run_id,
        "parent_id": v.parent_id,
        "reason": v.reason,
        "gate": _gate(metrics.get("gate")),
        "production_gate": _gate(metrics.get("production")),
        "production_version": metrics.get("production_version"),
        "train": {k: train.get(k) for k in ("steps", "seconds", "init", "loss_first", "loss_last")},
        "train_instances": _count(v.manifest, "train"),
        "gate_instances": _count(v.manifest, "gate"),
        "patients": (v.manifest or {}).get("patients"),
    }


def registry_overview(
    session: Session, versions_limit: int = 200, runs_limit: int = 50
) -> dict[str, Any]:
    """Versions (newest first), the production slot of each detector and modality with the
    version a rollback would restore, and the training runs with the versions they produced."""
    versions = list(
        session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(versions_limit))
    )
    slots = []
    for current in session.scalars(
        select(ModelVersion)
        .where(ModelVersion.state == MODEL_PRODUCTION)
        .order_by(ModelVersion.modality, ModelVersion.detector)
    ):
        target = rollback_target(session, current.detector, current.modality, current.id)
        slots.append(
            {
                "detector": current.detector,
                "modality": current.modality,
                "production": current.id,
                "rollback_to": target.id if target is not None else None,
            }
        )
    runs = list(
        session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(runs_limit))
    )
    produced: dict[int, list[int]] = {}
    if runs:
        for run_id, version_id in session.execute(
            select(ModelVersion.run_id, ModelVersion.id)
            .where(ModelVersion.run_id.in_([r.id for r in runs]))
            .order_by(ModelVersion.id)
        ):
            produced.setdefault(run_id, []).append(version_id)
    return {
        "versions": [version_row(v) for v in versions],
        "slots": slots,
        "runs": [
            {
                "id": r.id,
                "trigger": r.trigger,
                "actor": r.actor,
                "state": r.state,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "error": r.error,
                "versions": produced.get(r.id, []),
                "summary": r.summary,
            }
            for r in runs
        ],
        "running_run": running_run_id(session),
    }


def last_training_run(session: Session) -> dict[str, Any] | None:
    """The newest run, for the dashboard's "last retrain" line."""
    run = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1)).first()
    if run is None:
        return None
    return {
        "id": run.id,
        "state": run.state,
        "trigger": run.trigger,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
    }


def model_versions_seen(session: Session, limit: int = 2000) -> list[dict[str, Any]]:
    """Which model versions decided the newest verdicts, as recorded in the verdicts."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for created_at, details in session.execute(
        select(Verdict.created_at, Verdict.details)
        .where(Verdict.details.is_not(None))
        .order_by(Verdict.id.desc())
        .limit(limit)
    ):
        for m in (details or {}).get("models", []) or []:
            key = (str(m.get("name")), str(m.get("modality")), str(m.get("version")))
            entry = seen.setdefault(
                key,
                {
                    "name": key[0],
                    "modality": key[1],
                    "version": key[2],
                    "verdicts": 0,
                    "last_used": created_at,
                },
            )
            entry["verdicts"] += 1
    return list(seen.values())
