"""Flagged regions on adjacent slices that belong to one lesion-sized volume become one finding.

A tumour injected by CT-GAN or a diffusion model spans several slices, so the scorer flags it
once per slice. Readers (the SR, the admin page) want one finding with its slice range, not four
cards. Grouping is pure: no database session here; callers pass region-like objects.

Rule: two flagged regions of the same series join when their slices are at most ``max_gap``
slices apart (the same slice included: overlapping proposals) and their centres lie within
the larger of their radii (or ``min_join_px``) in the slice plane; a group stops growing
along the slice normal at ``max_extent_mm``, so two lesions stacked far apart stay two
findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class RegionLike(Protocol):
    """What grouping reads of a region (``storage.models.Region`` and ``RegionRecord`` fit)."""

    series_uid: str
    x: int
    y: int
    radius_px: float | None
    slice_index: int | None
    z_mm: float | None


@dataclass(frozen=True)
class Finding:
    """One 3-D finding: its member regions (indices into the input) and where it lies."""

    number: int
    members: tuple[int, ...]
    series_uid: str
    first_slice: int | None
    last_slice: int | None
    x: int  # centre of the member on the middle slice
    y: int
    radius_px: float


def _radius(r: RegionLike, min_join_px: float) -> float:
    return max(float(r.radius_px or 0.0), min_join_px)


def _joins(a: RegionLike, b: RegionLike, max_gap: int, min_join_px: float) -> bool:
    if a.series_uid != b.series_uid or a.slice_index is None or b.slice_index is None:
        return False
    gap = abs(a.slice_index - b.slice_index)
    if gap > max_gap:
        return False
    reach = max(_radius(a, min_join_px), _radius(b, min_join_px))
    return (a.x - b.x) ** 2 + (a.y - b.y) ** 2 <= reach**2


def group_findings(
    regions: Sequence[RegionLike],
    max_gap: int = 2,
    min_join_px: float = 8.0,
    max_extent_mm: float = 60.0,
) -> list[Finding]:
    """Group regions (all assumed flagged) into findings, numbered from 1 in slice order.

    Regions are visited in (series, slice) order and each joins the first open finding it
    touches whose extent along the normal stays within ``max_extent_mm`` once it is added.
    """
    order = sorted(
        range(len(regions)),
        key=lambda i: (
            regions[i].series_uid,
            regions[i].slice_index or 0,
            regions[i].y,
            regions[i].x,
        ),
    )
    groups: list[list[int]] = []
    for i in order:
        r = regions[i]
        home = None
        for g in groups:
            if not any(_joins(regions[j], r, max_gap, min_join_px) for j in g):
                continue
            zs = [regions[j].z_mm for j in g] + [r.z_mm]
            known = [z for z in zs if z is not None]
            if known and max(known) - min(known) > max_extent_mm:
                continue
            home = g
            break
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    findings = []
    for number, g in enumerate(groups, start=1):
        slices = [regions[j].slice_index for j in g if regions[j].slice_index is not None]
        mid = sorted(g, key=lambda j: regions[j].slice_index or 0)[len(g) // 2]
        findings.append(
            Finding(
                number=number,
                members=tuple(g),
                series_uid=regions[g[0]].series_uid,
                first_slice=min(slices) if slices else None,
                last_slice=max(slices) if slices else None,
                x=regions[mid].x,
                y=regions[mid].y,
                radius_px=max(float(regions[j].radius_px or 0.0) for j in g),
            )
        )
    return findings


def finding_numbers(regions: Sequence[RegionLike], **kwargs: float) -> list[int]:
    """The finding number of each region, in input order (helper for the scorer)."""
    numbers = [0] * len(regions)
    for f in group_findings(regions, **kwargs):  # type: ignore[arg-type]
        for j in f.members:
            numbers[j] = f.number
    return numbers
