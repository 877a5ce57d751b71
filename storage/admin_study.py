"""One study as the admin report shows it: findings in 3-D, slices, checked regions, provenance.

Read-only. Findings come from the ``Region.finding`` numbers the scorer records; flagged regions
of older verdicts without numbers are grouped here with ``storage.findings.group_findings``.
Slice numbers are positions in the series ordered by Instance Number (1 = first), the order
the viewer scrolls in; each slice keeps its Instance Number beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.findings import group_findings
from storage.models import (
    Association,
    AuditEvent,
    Delivery,
    Instance,
    Job,
    Mark,
    Region,
    RequestedRegion,
    Series,
    Study,
    Verdict,
)


@dataclass
class SliceInfo:
    id: int  # instance id (what image URLs carry)
    position: int  # 1-based slice number in the viewer's order
    number: int | None  # Instance Number
    sop_uid: str
    sha: str  # sha256 prefix: image URLs change when the bytes do
    series_id: int = 0
    flagged: bool = False
    regions: int = 0


@dataclass
class SeriesInfo:
    id: int
    series_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    slices: list[SliceInfo]
    calling_aes: list[str]


@dataclass
class FindingView:
    """One 3-D finding: its regions ordered by slice and the one shown on the card."""

    number: int
    series: SeriesInfo
    regions: list[Region]
    shown: Region  # lowest p, preferring a heatmap, then the centre slice
    first: SliceInfo
    last: SliceInfo
    shown_slice: SliceInfo
    p_value: float | None
    # Per check: lowest p and highest raw over the members, the model, other recorded values.
    checks: dict[str, dict[str, Any]]


@dataclass
class Provenance:
    senders: list[dict[str, Any]]  # per calling AE and peer address
    associations: list[dict[str, Any]]
    replaced: list[dict[str, Any]]  # instance.replaced audit events of this study's instances


@dataclass
class StudyDetail:
    study: Study
    series: list[SeriesInfo]
    verdicts: list[Verdict]
    current: Verdict | None
    findings: list[FindingView]
    unflagged: list[Region]  # checked, not flagged: lowest p first, at most ``max_unflagged``
    regions_checked: int
    regions_flagged: int
    deliveries: list[Delivery]
    jobs: list[Job]
    marks: list[Mark]
    requested: list[RequestedRegion]
    provenance: Provenance
    region_marks: dict[int, str] = field(default_factory=dict)
    slices: dict[str, SliceInfo] = field(default_factory=dict)  # SOP Instance UID -> slice
    # Instance id -> [x, y, radius, flagged] of every region of the current verdict on it.
    overlays: dict[int, list[list[Any]]] = field(default_factory=dict)


def _series(session: Session, study_id: int) -> list[SeriesInfo]:
    rows = session.scalars(
        select(Series).where(Series.study_id == study_id).order_by(Series.series_number, Series.id)
    ).all()
    instances = session.execute(
        select(
            Instance.id,
            Instance.series_id,
            Instance.sop_instance_uid,
            Instance.instance_number,
            Instance.calling_ae,
            Instance.sha256,
        )
        .where(Instance.study_id == study_id)
        .order_by(Instance.series_id, Instance.instance_number, Instance.id)
    ).all()
    by_series: dict[int, list[Any]] = {}
    for row in instances:
        by_series.setdefault(row.series_id, []).append(row)
    out = []
    for s in rows:
        members = by_series.get(s.id, [])
        out.append(
            SeriesInfo(
                id=s.id,
                series_uid=s.series_uid,
                modality=s.modality,
                series_number=s.series_number,
                description=s.description,
                slices=[
                    SliceInfo(r.id, i, r.instance_number, r.sop_instance_uid, r.sha256[:12], s.id)
                    for i, r in enumerate(members, start=1)
                ],
                calling_aes=sorted({r.calling_ae for r in members if r.calling_ae}),
            )
        )
    return out


@dataclass
class _Placed:
    """A region with its slice position filled in where the scorer left it empty."""

    series_uid: str
    x: int
    y: int
    radius_px: float | None
    slice_index: int | None
    z_mm: float | None


def _position(slices: dict[str, SliceInfo], r: Region) -> int | None:
    found = slices.get(r.sop_instance_uid)
    return found.position if found is not None else None


def _findings(
    flagged: list[Region], slices: dict[str, SliceInfo], series: dict[str, SeriesInfo]
) -> list[FindingView]:
    groups: dict[int, list[Region]] = {}
    loose = [r for r in flagged if r.finding is None]
    for r in flagged:
        if r.finding is not None:
            groups.setdefault(r.finding, []).append(r)
    if loose:
        placed = [
            _Placed(
                r.series_uid,
                r.x,
                r.y,
                r.radius_px,
                r.slice_index
                if r.slice_index is not None
                else (
                    slices[r.sop_instance_uid].position if r.sop_instance_uid in slices else None
                ),
                r.z_mm,
            )
            for r in loose
        ]
        start = max(groups, default=0)
        for f in group_findings(placed):
            groups[start + f.number] = [loose[i] for i in f.members]
    out = []
    for number in sorted(groups):
        members = [r for r in groups[number] if r.sop_instance_uid in slices]
        if not members:
            continue
        members.sort(key=lambda r: (slices[r.sop_instance_uid].position, r.id))
        middle = (len(members) - 1) / 2  # among equals, the lesion's centre slice
        shown = min(
            enumerate(members),
            key=lambda ir: (
                ir[1].heatmap_path is None,
                ir[1].p_value if ir[1].p_value is not None else 2.0,
                abs(ir[0] - middle),
            ),
        )[1]
        checks: dict[str, dict[str, Any]] = {}
        for r in members:
            for name, sc in (r.scores or {}).items():
                if not isinstance(sc, dict):
                    continue
                entry = checks.setdefault(
                    name, {"p": None, "raw": None, "model": sc.get("model"), "more": {}}
                )
                if r is shown:  # whatever else the check recorded, as the shown region has it
                    entry["more"] = {k: v for k, v in sc.items() if k not in ("p", "raw", "model")}
                p, raw = sc.get("p"), sc.get("raw")
                if isinstance(p, int | float) and (entry["p"] is None or p < entry["p"]):
                    entry["p"] = float(p)
                if isinstance(raw, int | float) and (entry["raw"] is None or raw > entry["raw"]):
                    entry["raw"] = float(raw)
        ps = [r.p_value for r in members if r.p_value is not None]
        out.append(
            FindingView(
                number=len(out) + 1,
                series=series[members[0].series_uid],
                regions=members,
                shown=shown,
                first=slices[members[0].sop_instance_uid],
                last=slices[members[-1].sop_instance_uid],
                shown_slice=slices[shown.sop_instance_uid],
                p_value=min(ps) if ps else None,
                checks=checks,
            )
        )
    out.sort(key=lambda f: (f.p_value if f.p_value is not None else 2.0, f.number))
    return out


def provenance(session: Session, study_id: int) -> Provenance:
    """Who sent the study's instances, when and over which associations; which came back
    with different bytes (a tamper signal in itself)."""
    senders = [
        {
            "calling_ae": ae,
            "peer": peer,
            "instances": int(n),
            "first": first,
            "last": last,
            "replaced": int(replaced or 0),
        }
        for ae, peer, n, first, last, replaced in session.execute(
            select(
                Instance.calling_ae,
                Instance.peer_address,
                func.count(),
                func.min(Instance.received_at),
                func.max(Instance.received_at),
                func.sum(Instance.replaced_count),
            )
            .where(Instance.study_id == study_id)
            .group_by(Instance.calling_ae, Instance.peer_address)
        )
    ]
    associations = [
        {
            "id": a.id,
            "calling_ae": a.calling_ae,
            "called_ae": a.called_ae,
            "peer": f"{a.peer_host}:{a.peer_port}",
            "tls": a.tls,
            "started_at": a.started_at,
            "ended_at": a.ended_at,
            "outcome": a.outcome,
            "instances": int(n),
        }
        for a, n in session.execute(
            select(Association, func.count(Instance.id))
            .join(Instance, Instance.association_id == Association.id)
            .where(Instance.study_id == study_id)
            .group_by(Association.id)
            .order_by(Association.id)
            .limit(200)
        )
    ]
    sops = select(Instance.sop_instance_uid).where(Instance.study_id == study_id)
    replaced = [
        {
            "at": e.at,
            "actor": e.actor,
            "sop_uid": e.target,
            "old_sha256": (e.detail or {}).get("old_sha256"),
            "new_sha256": (e.detail or {}).get("new_sha256"),
            "peer": (e.detail or {}).get("peer"),
        }
        for e in session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "instance.replaced", AuditEvent.target.in_(sops))
            .order_by(AuditEvent.id)
            .limit(500)
        )
    ]
    return Provenance(senders, associations, replaced)


@dataclass
class _Checked:
    """The current verdict's regions as the page needs them."""

    flagged: list[Region] = field(default_factory=list)
    unflagged: list[Region] = field(default_factory=list)
    count: int = 0
    overlays: dict[int, list[list[Any]]] = field(default_factory=dict)


def _checked(
    session: Session, verdict: Verdict | None, slices: dict[str, SliceInfo], max_unflagged: int
) -> _Checked:
    """Flagged regions, the most suspicious unflagged ones, and every region's circle per
    slice; marks the slices that have regions and those that have flagged ones."""
    out = _Checked()
    if verdict is None:
        return out
    mine = Region.verdict_id == verdict.id
    out.count = int(session.scalar(select(func.count()).where(mine)) or 0)
    out.flagged = list(session.scalars(select(Region).where(mine, Region.flagged.is_(True))))
    out.unflagged = list(
        session.scalars(
            select(Region)
            .where(mine, Region.flagged.is_(False))
            .order_by(Region.p_value.is_(None), Region.p_value, Region.id)
            .limit(max_unflagged)
        )
    )
    for sop, x, y, radius, is_flagged in session.execute(
        select(Region.sop_instance_uid, Region.x, Region.y, Region.radius_px, Region.flagged).where(
            mine
        )
    ):
        found = slices.get(sop)
        if found is None:
            continue
        found.regions += 1
        found.flagged = found.flagged or bool(is_flagged)
        out.overlays.setdefault(found.id, []).append([x, y, radius or 8.0, int(bool(is_flagged))])
    return out


def study_detail(session: Session, study_id: int, max_unflagged: int = 200) -> StudyDetail | None:
    study = session.get(Study, study_id)
    if study is None:
        return None
    series = _series(session, study_id)
    slices = {sl.sop_uid: sl for s in series for sl in s.slices}
    verdicts = list(
        session.scalars(
            select(Verdict).where(Verdict.study_id == study_id).order_by(Verdict.id.desc())
        ).all()
    )
    current = next((v for v in verdicts if v.is_current), None)
    checked = _checked(session, current, slices, max_unflagged)
    verdict_ids = [v.id for v in verdicts] or [-1]
    marks = list(session.scalars(select(Mark).where(Mark.study_id == study_id).order_by(Mark.id)))
    return StudyDetail(
        study=study,
        series=series,
        verdicts=verdicts,
        current=current,
        findings=_findings(checked.flagged, slices, {s.series_uid: s for s in series}),
        unflagged=checked.unflagged,
        regions_checked=checked.count,
        regions_flagged=len(checked.flagged),
        deliveries=list(
            session.scalars(
                select(Delivery).where(Delivery.verdict_id.in_(verdict_ids)).order_by(Delivery.id)
            )
        ),
        jobs=list(
            session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id.desc()))
        ),
        marks=marks,
        requested=list(
            session.scalars(
                select(RequestedRegion)
                .where(RequestedRegion.study_id == study_id)
                .order_by(RequestedRegion.id)
            )
        ),
        provenance=provenance(session, study_id),
        region_marks={m.region_id: m.label for m in marks if m.region_id is not None},
        slices=slices,
        overlays=checked.overlays,
    )
