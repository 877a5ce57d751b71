"""Helpers for the admin report tests: a migrated service with users and a flagged phantom study.

The flagged verdict is recorded through the same storage calls the scoring worker makes
(``claim_job`` / ``finish_job``), with a heatmap PNG where the scorer saves them, so the pages
show exactly what a real detector result looks like without training a model in every test.
"""

from __future__ import annotations

from pathlib import Path

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
