"""Typed request parameters of the admin report: ids, filters and bodies, validated before use.

Every id fits SQLite's signed 64-bit integer and every page number a sane offset, so a route
answers 422 (out of range, wrong type) or 404 (no such row, page past the end), never 500.
Filters are pydantic models read from the query string (``Annotated[Model, Query()]``); bodies
are the same models for the HTML forms (``Form()``) and the JSON API.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.admin_views import (
    DELIVERY_FILTERS,
    FLAGGED,
    JOB_FILTERS,
    PAGE_SIZES,
    SORTS,
    AuditFilter,
    StudyFilter,
)
from storage.models import VERDICT_OUTCOMES

MAX_ID = 2**63 - 1  # SQLite INTEGER, PostgreSQL BIGINT
MAX_PAGE = 1_000_000
MAX_PIXEL = 65_535  # DICOM Rows / Columns are 16-bit

StudyId = Annotated[int, Path(ge=1, le=MAX_ID, description="study id")]
InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="instance id")]
RegionId = Annotated[int, Path(ge=1, le=MAX_ID, description="region id")]
VersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]

VerdictChoice = Literal[(*VERDICT_OUTCOMES, FLAGGED, "none")]  # type: ignore[valid-type]
SortChoice = Literal[tuple(SORTS)]  # type: ignore[valid-type]
DeliveryChoice = Literal[DELIVERY_FILTERS]  # type: ignore[valid-type]
JobChoice = Literal[JOB_FILTERS]  # type: ignore[valid-type]


class StudyQuery(BaseModel):
    """The studies list's filters, sort and page (``/studies`` and ``/api/studies``)."""

    model_config = ConfigDict(populate_by_name=True)

    verdict: VerdictChoice | Literal[""] | None = None
    date_from: date | Literal[""] | None = Field(None, alias="from")
    date_to: date | Literal[""] | None = Field(None, alias="to")
    modality: str | None = Field(None, max_length=16)
    calling_ae: str | None = Field(None, max_length=16)
    patient: str | None = Field(None, max_length=64)
    delivery: DeliveryChoice | Literal[""] | None = None
    job: JobChoice | Literal[""] | None = None
    sort: SortChoice = "received"
    order: Literal["asc", "desc"] = "desc"
    page: int = Field(1, ge=1, le=MAX_PAGE)
    per_page: int = 50

    @field_validator("per_page")
    @classmethod
    def _page_size(cls, value: int) -> int:
        if value not in PAGE_SIZES:
            raise ValueError(f"one of {', '.join(map(str, PAGE_SIZES))}")
        return value

    def to_filter(self, overdue_after_s: float, stuck_after_s: float) -> StudyFilter:
        return StudyFilter(
            verdict=self.verdict or None,
            date_from=self.date_from or None,
            date_to=self.date_to or None,
            modality=self.modality or None,
            calling_ae=self.calling_ae or None,
            patient=self.patient or None,
            delivery=self.delivery or None,
            job=self.job or None,
            sort=self.sort,
            descending=self.order != "asc",
            page=self.page,
            per_page=self.per_page,
            overdue_after_s=overdue_after_s,
            stuck_after_s=stuck_after_s,
        )


class AuditQuery(BaseModel):
    """The audit trail's filters and page (``/audit``, ``/audit.csv``, ``/api/audit``)."""

    model_config = ConfigDict(populate_by_name=True)

    action: str | None = Field(None, max_length=64)
    actor: str | None = Field(None, max_length=64)
    target: str | None = Field(None, max_length=128)
    date_from: date | Literal[""] | None = Field(None, alias="from")
    date_to: date | Literal[""] | None = Field(None, alias="to")
    page: int = Field(1, ge=1, le=MAX_PAGE)

    def to_filter(self, per_page: int = 100) -> AuditFilter:
        return AuditFilter(
            action=self.action or None,
            actor=self.actor or None,
            target=self.target or None,
            date_from=self.date_from or None,
            date_to=self.date_to or None,
            page=self.page,
            per_page=per_page,
        )


class MarkBody(BaseModel):
    """Mark the study, or one of its regions, confirmed genuine or tampered."""

    label: Literal["genuine", "tampered"]
    region_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    note: str | None = Field(None, max_length=2000)


class RegionBody(BaseModel):
    """A location on one slice of the study to check at every later scoring."""

    instance_id: int = Field(ge=1, le=MAX_ID)
    x: int = Field(ge=0, le=MAX_PIXEL)
    y: int = Field(ge=0, le=MAX_PIXEL)
    radius_px: float = Field(12.0, ge=1, le=256)


class PromoteBody(BaseModel):
    reason: str = Field("", max_length=2000)


class RollbackBody(BaseModel):
    detector: str = Field(min_length=1, max_length=16)
    modality: str = Field(min_length=1, max_length=8)


class ImageQuery(BaseModel):
    """How to render a slice: thumbnail size, overlay, window preset."""

    size: int | None = Field(None, ge=16, le=2048)
    overlay: bool = False
    window: Literal["auto", "lung", "soft", "bone", "brain"] = "auto"
