"""The state machines of the pipeline as str-valued enums, and the column type that stores them.

The stored values are the enums' plain strings (what earlier versions stored), so no data
migrates; ``EnumText`` refuses an unknown value on write and hands rows back as members.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import String
from sqlalchemy.types import TypeDecorator


class StudyState(enum.StrEnum):
    """A study's place in the pipeline, in the order it normally passes through them."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    SCORING = "scoring"
    DONE = "done"
    FAILED = "failed"


class JobState(enum.StrEnum):
    """A scoring job. SUPERSEDED: a newer version of the study arrived before the job ran."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class VerdictOutcome(enum.StrEnum):
    TAMPERED = "tampered"
    SUSPICIOUS = "suspicious"
    CLEAN = "clean"
    NOT_SCORED = "not_scored"


class DeliveryState(enum.StrEnum):
    """A report on its way to one destination: pending (maybe backing off), delivered, failed."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class EnumText(TypeDecorator[str]):
    """A str-valued enum stored as its plain value: unknown values are refused on write and
    rows come back as enum members. The column stays VARCHAR, so stored values never change."""

    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[enum.StrEnum], length: int = 16) -> None:
        super().__init__(length)
        self.enum_class = enum_class

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> enum.StrEnum | None:
        return None if value is None else self.enum_class(value)
