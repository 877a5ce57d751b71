"""Which stored file an image route renders, and what the viewer draws on a slice.

Read-only; files are found through the index by id, never from a UID in a URL. The rendering
itself is ``admin.images`` / ``admin.crops`` (no database session there).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Instance, Region, RequestedRegion, Series, Verdict


@dataclass(frozen=True)
class SliceFile:
    path: str  # relative to the instance root
    modality: str
    sha256: str


def instance_file(session: Session, study_id: int, instance_id: int) -> SliceFile | None:
    """The file of one instance of one study, its modality and its sha256 (for ETags)."""
    row = session.execute(
        select(Instance.file_path, Series.modality, Instance.sha256)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.id == instance_id, Instance.study_id == study_id)
    ).one_or_none()
    return None if row is None else SliceFile(row[0], (row[1] or "").upper(), row[2])


def region_with_file(session: Session, region_id: int) -> tuple[Region, SliceFile] | None:
    """A region and the file of the slice it lies on."""
    region = session.get(Region, region_id)
    if region is None:
        return None
    row = session.execute(
        select(Instance.file_path, Series.modality, Instance.sha256)
        .join(Series, Series.id == Instance.series_id)
        .where(
            Instance.sop_instance_uid == region.sop_instance_uid,
            Instance.study_id == region.study_id,
        )
    ).one_or_none()
    return None if row is None else (region, SliceFile(row[0], (row[1] or "").upper(), row[2]))


@dataclass(frozen=True)
class OverlayRegions:
    """What the viewer draws on one slice, and a tag that changes whenever that does."""

    flagged: list[tuple[int, int, float]]
    checked: list[tuple[int, int, float]]
    requested: list[tuple[int, int, float]]
    tag: str


def slice_overlay(session: Session, study_id: int, instance_id: int) -> OverlayRegions:
    """Regions of the current verdict and admin-requested regions on one slice of a study."""
    sop = (
        select(Instance.sop_instance_uid)
        .where(Instance.id == instance_id, Instance.study_id == study_id)
        .scalar_subquery()
    )
    verdict_id = session.scalar(
        select(Verdict.id).where(Verdict.study_id == study_id, Verdict.is_current.is_(True))
    )
    flagged: list[tuple[int, int, float]] = []
    checked: list[tuple[int, int, float]] = []
    if verdict_id is not None:
        for x, y, r, is_flagged in session.execute(
            select(Region.x, Region.y, Region.radius_px, Region.flagged).where(
                Region.verdict_id == verdict_id, Region.sop_instance_uid == sop
            )
        ):
            (flagged if is_flagged else checked).append((x, y, r or 8.0))
    requested = [
        (r.x, r.y, r.radius_px)
        for r in session.scalars(
            select(RequestedRegion).where(
                RequestedRegion.study_id == study_id, RequestedRegion.sop_instance_uid == sop
            )
        )
    ]
    last_request = session.scalar(
        select(func.max(RequestedRegion.id)).where(RequestedRegion.study_id == study_id)
    )
    return OverlayRegions(flagged, checked, requested, f"v{verdict_id}r{last_request}")
