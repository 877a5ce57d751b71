"""What every admin router shares: the database, the settings, the login layer, the templates.

No routes here (``admin.api``, ``admin.pages``, ``admin.actions``, ``admin.slices``) and no SQL
(``storage.admin_*``): this module reads through storage and renders templates.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from admin.auth import Auth
from admin.forms import StudyQuery
from admin.settings import AdminSettings
from storage import admin_metrics, admin_models
from storage.admin_views import StudyFilter
from storage.db import Database
from storage.models import MARK_LABELS, VERDICT_OUTCOMES, utcnow

HERE = Path(__file__).parent
ReadinessCheck = Callable[[], tuple[bool, str]]


def fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def fmt_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_age(seconds: float | None) -> str:
    """A waiting time a person reads at a glance: 45 s, 18 min, 3.2 h, 2.0 days."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class ReportContext:
    db: Database
    data_dir: Path
    settings: AdminSettings
    auth: Auth
    models: Callable[[], list[dict[str, Any]]] = list
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    retrain_now: Callable[[str], None] | None = None
    disk_watermark_mb: int = 500
    templates: Jinja2Templates = field(init=False)

    def __post_init__(self) -> None:
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters.update(time=fmt_time, p=fmt_p, bytes=fmt_bytes, age=fmt_age)
        env.globals.update(outcomes=VERDICT_OUTCOMES, mark_labels=MARK_LABELS)

    @property
    def instance_root(self) -> Path:
        return self.data_dir / "instances"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            user=self.auth.current_user(request),
            csrf=self.auth.csrf_token(request),
            message=request.query_params.get("msg"),
            error=request.query_params.get("err"),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def study_filter(self, query: StudyQuery) -> StudyFilter:
        """A validated ``forms.StudyQuery`` as the storage filter, with [admin] thresholds."""
        f = query.to_filter(self.settings.delivery_overdue_s, self.settings.job_stuck_s)
        f.now = utcnow()
        return f

    # -- what the dashboard and the models page read ---------------------------------------

    def disk(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.data_dir if self.data_dir.exists() else Path("/"))
        watermark = self.disk_watermark_mb * 1024 * 1024
        level = "ok"
        if usage.free < watermark:
            level = "alert"  # the receiver refuses C-STORE with 0xA700 now
        elif usage.free < 2 * watermark:
            level = "warn"
        return {
            "total": usage.total,
            "used": usage.used,
            "free": usage.free,
            "watermark": watermark,
            "level": level,
        }

    def dashboard(self) -> dict[str, Any]:
        with self.db.reading() as session:
            data = admin_metrics.dashboard(
                session,
                utcnow(),
                overdue_after_s=self.settings.delivery_overdue_s,
                stuck_after_s=self.settings.job_stuck_s,
            )
            data["last_retrain"] = admin_models.last_training_run(session)
        data["disk"] = self.disk()
        data["models"] = self.models()
        served = {str(m.get("modality", "")).upper() for m in data["models"]}
        data["missing_models"] = sorted(m for m in data["arriving"] if m not in served)
        return data

    def models_overview(self) -> dict[str, Any]:
        with self.db.reading() as session:
            seen = admin_models.model_versions_seen(session)
            registry = admin_models.registry_overview(session)
        return {
            "loaded": self.models(),
            "seen_in_verdicts": seen,
            "registry": registry,
            "retrain_available": self.retrain_now is not None,
        }
