"""Helpers for the admin report tests: a migrated service with users and a flagged phantom study.

The flagged verdict is recorded through the same storage calls the scoring worker makes
(``claim_job`` / ``finish_job``), with a heatmap PNG where the scorer saves them, so the pages
show exactly what a real detector result looks like without training a model in every test.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from sqlalchemy import select

from admin.auth import hash_password
from detector.lab.phantoms import write_phantoms
from scp.validate import inspect_dataset
from storage.db import Database
from storage.instances import InstanceStore, Origin
from storage.jobs import RegionRecord, claim_job, enqueue_stable_studies, finish_job
from storage.models import Instance, Series, Study, utcnow
from storage.users import add_user

PASSWORDS = {"alice": "admin-password-1", "victor": "viewer-password-1"}


def migrated_service(tmp: Path) -> Any:
    """A migrated (not started) service on ``tmp`` with the two test users."""
    from tamperscan.service import Service
    from tests.conftest import make_settings

    service = Service(make_settings(tmp))
    service.settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    service.db.migrate()
    add_test_users(service.db)
    return service


def add_test_users(db: Database) -> None:
    with db.session() as session:
        add_user(session, "alice", hash_password(PASSWORDS["alice"]), "admin", utcnow(), "test")
        add_user(session, "victor", hash_password(PASSWORDS["victor"]), "viewer", utcnow(), "test")


def store_phantom_study(store: InstanceStore, out_dir: Path, slices: int = 4) -> int:
    """A synthetic CT study (tamper lab phantom) stored as if a PACS had sent it."""
    write_phantoms("CT", studies=1, slices=slices, out_dir=out_dir, seed=5, size=128)
    study_id = 0
    for path in sorted(out_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
        origin = Origin(channel="dimse", calling_ae="CT01", peer_address="127.0.0.1")
        study_id = store.store(path.read_bytes(), meta, origin).study_id
    return study_id


def record_flagged_verdict(db: Database, data_dir: Path, study_id: int) -> int:
    """Queue, claim and finish the study's job with one flagged region (with heatmap)."""
    now = utcnow()
    with db.session() as session:
        enqueue_stable_studies(session, now, 0.0, 0.0)
        job = claim_job(session, "test", 60, now)
        assert job is not None and job.study_id == study_id
        series_uid, sop_uid = session.execute(
            select(Series.series_uid, Instance.sop_instance_uid)
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
            .order_by(Instance.instance_number)
        ).all()[1]
    yy, xx = np.mgrid[0:32, 0:32]
    heat = np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 40.0)
    rel = Path("heatmaps") / str(study_id) / "v1" / f"{sop_uid}_40_60.png"
    (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((heat * 255).astype(np.uint8)).save(data_dir / rel)
    scores = {"inpaint": {"raw": 0.91, "p": 0.0004, "model": "0123456789abcdef"}}
    regions = [
        RegionRecord(
            series_uid, sop_uid, 40, 60, "proposal", 6.0, scores, 0.0004, True, rel.as_posix()
        ),
        RegionRecord(
            series_uid,
            sop_uid,
            90,
            60,
            "window",
            8.0,
            {"inpaint": {"raw": 0.1, "p": 0.6, "model": "0123456789abcdef"}},
            0.6,
        ),
    ]
    details = {
        "models": [{"name": "inpaint", "modality": "CT", "version": "0123456789abcdef"}],
        "false_alarm_rate": 0.01,
        "suspicious_rate": 0.05,
        "study_p_value": 0.0008,
        "regions_checked": 2,
        "notes": [],
    }
    with db.session() as session:
        verdict = finish_job(
            session,
            job,
            "tampered",
            "1 of 2 regions flagged; study p = 0.0008",
            now,
            0.0008,
            details,
            regions,
        )
        assert session.get(Study, study_id) is not None
        return verdict.id


def store_tampered_study(
    store: InstanceStore, work: Path, slices: int = 64, size: int = 128, seed: int = 7
) -> tuple[int, list[tuple[str, int, int, float]]]:
    """A phantom CT series with a real tamper-lab injection, stored as a PACS would send it.

    Returns the study id and the injected discs as (SOP Instance UID, x, y, radius px), one per
    slice the injected lesion spans.
    """
    from detector.lab.attacks import tamper_dataset

    write_phantoms("CT", studies=1, slices=slices, out_dir=work / "genuine", seed=seed, size=size)
    result = tamper_dataset(work / "genuine", work / "tampered", ["injection"], 1, seed)
    discs = []
    for region in result.records[0].regions:
        sop = str(pydicom.dcmread(work / "tampered" / region.path).SOPInstanceUID)
        discs.append((sop, region.x, region.y, region.radius_px))
    study_id = 0
    for path in sorted((work / "tampered").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
        origin = Origin(channel="dimse", calling_ae="CT01", peer_address="10.1.2.3")
        study_id = store.store(path.read_bytes(), meta, origin).study_id
    return study_id, discs


def record_scored_verdict(
    db: Database,
    data_dir: Path,
    study_id: int,
    discs: list[tuple[str, int, int, float]],
    number_findings: bool = True,
    checked_per_slice: int = 2,
) -> int:
    """Record what the scorer records for a study: every slice checked at a few places, the
    given discs flagged with heatmaps, slice index / instance number on every region, and
    (``number_findings``) the 3-D finding numbers from ``storage.findings``."""
    from storage.findings import finding_numbers

    now = utcnow()
    with db.session() as session:
        enqueue_stable_studies(session, now, 0.0, 0.0)
        job = claim_job(session, "test", 60, now)
        assert job is not None and job.study_id == study_id
        rows = session.execute(
            select(Series.series_uid, Instance.sop_instance_uid, Instance.instance_number)
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
            .order_by(Instance.instance_number)
        ).all()
    flagged_at = {sop: (x, y, r) for sop, x, y, r in discs}
    rng = np.random.default_rng(3)
    regions: list[RegionRecord] = []
    model = {"model": "0123456789abcdef"}
    for index, (series_uid, sop, number) in enumerate(rows):
        place = {"slice_index": index, "z_mm": 2.0 * index, "instance_number": number}
        for k in range(checked_per_slice):
            p = float(rng.uniform(0.2, 0.95))
            scores = {
                "inpaint": {"raw": 0.1, "p": p, **model},
                "noise": {"raw": 0.2, "p": min(1.0, p + 0.05)},
            }
            x, y = 30 + 60 * k, 100
            regions.append(RegionRecord(series_uid, sop, x, y, "window", 8.0, scores, p, **place))
        if sop in flagged_at:
            x, y, radius = flagged_at[sop]
            side = int(max(16, 4 * radius))
            yy, xx = np.mgrid[0:side, 0:side]
            heat = np.exp(-((xx - side / 2) ** 2 + (yy - side / 2) ** 2) / (2 * radius**2))
            rel = Path("heatmaps") / str(study_id) / "v1" / f"{sop}_{x}_{y}.png"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((heat / heat.max() * 255).astype(np.uint8)).save(data_dir / rel)
            p = 0.0002
            scores = {
                "inpaint": {"raw": 0.93, "p": p, **model},
                "btd": {"raw": 0.71, "p": 0.003, **model},
                "noise": {"raw": 0.6, "p": 0.01, "sigma_ratio": 2.5},
            }
            regions.append(
                RegionRecord(
                    series_uid,
                    sop,
                    x,
                    y,
                    "proposal",
                    radius,
                    scores,
                    p,
                    True,
                    rel.as_posix(),
                    **place,
                )
            )
    if number_findings:
        flagged = [i for i, r in enumerate(regions) if r.flagged]
        numbers = finding_numbers([regions[i] for i in flagged])
        for i, n in zip(flagged, numbers, strict=True):
            regions[i] = replace(regions[i], finding=n)
    details = {
        "models": [{"name": "inpaint", "modality": "CT", "version": "0123456789abcdef"}],
        "false_alarm_rate": 0.01,
        "suspicious_rate": 0.05,
        "study_p_value": 0.0004,
        "regions_checked": len(regions),
        "notes": [],
    }
    flagged_count = sum(r.flagged for r in regions)
    with db.session() as session:
        verdict = finish_job(
            session,
            job,
            "tampered",
            f"{flagged_count} of {len(regions)} regions flagged; study p = 0.0004",
            now,
            0.0004,
            details,
            regions,
        )
        return verdict.id


def resend_changed(store: InstanceStore, path: Path, calling_ae: str, peer: str) -> None:
    """Send one stored file again with changed bytes (a comment added), from another sender."""
    ds = pydicom.dcmread(path)
    ds.ImageComments = "edited"
    out = path.with_suffix(".edited.dcm")
    ds.save_as(out, enforce_file_format=True)
    meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
    store.store(
        out.read_bytes(), meta, Origin(channel="dimse", calling_ae=calling_ae, peer_address=peer)
    )
    out.unlink()


def add_pending_delivery(db: Database, age_s: float, error: str = "no association") -> None:
    """A report delivery of every current verdict, queued ``age_s`` ago and retried once."""
    from datetime import timedelta

    from storage.deliveries import enqueue_missing, mark_attempt_failed
    from storage.models import Delivery

    then = utcnow() - timedelta(seconds=age_s)
    with db.session() as session:
        enqueue_missing(session, ["PACS"], then)
        for delivery in session.scalars(select(Delivery)).all():
            mark_attempt_failed(session, delivery.id, error, then, 10, 30.0, 600.0)
