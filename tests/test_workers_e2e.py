"""Three ``tamperscan worker`` processes on one PostgreSQL database and one data folder score
30 studies and send their reports; one worker is SIGKILLed in the middle of a job. Every study
still ends with exactly one current verdict and one delivered SR, no job is lost and none is
scored (recorded) twice: counted in the database, in the workers' logs and at the PACS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from detector.lab.phantoms import write_phantoms
from detector.training import TrainOptions, train
from scp.validate import inspect_dataset
from storage.assembly import StudyAssembler
from storage.db import Database
from storage.instances import InstanceStore, Origin
from storage.models import Delivery, Job, JobState, Verdict, utcnow
from storage.settings import AssemblySettings
from tests.dicom_helpers import REPO, free_port, write_config
from tests.test_delivery import StoreSCP

STUDIES = 30


def _store_studies(db: Database, data_dir: Path, phantoms: Path) -> None:
    """30 studies from 3 phantom studies: every copy gets its own study/series/SOP UIDs."""
    store = InstanceStore(db, data_dir)
    sources = [
        sorted(d.rglob("*.dcm")) for d in sorted(p for p in phantoms.iterdir() if p.is_dir())
    ]
    origin = Origin(channel="dimse", calling_ae="CT01", peer_address="127.0.0.1")
    for n in range(STUDIES):
        study_uid, series_uid = generate_uid(), generate_uid()
        for path in sources[n % len(sources)]:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            copy = data_dir.parent / "copy.dcm"
            ds.save_as(copy, enforce_file_format=True)
            meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
            store.store(copy.read_bytes(), meta, origin)
    later = utcnow() + timedelta(minutes=5)  # every study has settled by then
    assembler = StudyAssembler(db, AssemblySettings(), clock=lambda: later)
    assert len(assembler.tick()) == STUDIES


def _worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TAMPERSCAN_CONFIG"}
    env["OMP_NUM_THREADS"] = "1"  # three workers on two cores: no thread oversubscription
    return subprocess.Popen(
        [sys.executable, "-m", "tamperscan.cli", "worker", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )


def _events(log: Path, message: str) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == message:
                events.append(event)
    return events


@pytest.mark.slow
def test_three_workers_one_killed_mid_job_every_study_once(
    postgres_server: object, tmp_path: Path
) -> None:
    phantoms = tmp_path / "phantoms"
    write_phantoms("CT", studies=3, slices=3, out_dir=phantoms, seed=11, size=128)
    model = tmp_path / "ct-inpaint.ckpt"
    train(
        TrainOptions(
            detector="inpaint", modality="CT", data=str(phantoms), model_path=str(model),
            epochs=1, batch_size=16, patch_size=32, model_dim=8, hole_size=16, max_steps=4,
            calibration_patches=64, holdout_fraction=0.34, progress=False, device="cpu",
        )
    )  # fmt: skip
    url = postgres_server.new_database()  # type: ignore[attr-defined]
    data_dir = tmp_path / "shared"
    db = Database(url)
    _store_studies(db, data_dir, phantoms)
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    pacs.start()
    config = write_config(
        tmp_path / "worker.toml",
        0,
        data_dir,
        storage={"database_url": url},
        worker={"lease_s": 6.0, "poll_interval_s": 0.2, "delivery_lease_s": 6.0},
        # The tiny learned model only: about a second a study, so the kill lands mid-job.
        detector={"models": [str(model)], "device": "cpu", "window_stride_px": 32, "checks": []},
        delivery={"poll_interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 1.0},
        logging={"format": "json"},
    )
    with config.open("a") as f:
        f.write(
            f'\n[[delivery.dicom]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
            f"port = {pacs.port}\n"
        )
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    workers = [_worker(config, log) for log in logs]
    try:
        victim = workers[0]
        prefix = f"{socket.gethostname()}:{victim.pid}:"
        deadline = time.monotonic() + 60
        held: list[int] = []
        while time.monotonic() < deadline and not held:
            with db.reading() as session:
                held = list(
                    session.scalars(
                        select(Job.id).where(
                            Job.state == JobState.RUNNING, Job.lease_owner.startswith(prefix)
                        )
                    )
                )
            if not held:
                time.sleep(0.05)
        assert held, "the victim never started a job:\n" + logs[0].read_text()
        victim.send_signal(signal.SIGKILL)  # mid-job: its lease must run out, then move on
        victim.wait(timeout=10)

        deadline = time.monotonic() + 90
        delivered = 0
        while time.monotonic() < deadline and delivered < STUDIES:
            with db.reading() as session:
                delivered = session.scalar(
                    select(func.count(Delivery.id)).where(Delivery.state == "delivered")
                )
            time.sleep(0.3)
        assert delivered == STUDIES, "\n".join(log.read_text()[-3000:] for log in logs)

        with db.reading() as session:
            jobs = session.scalars(select(Job)).all()
            verdicts = session.scalars(select(Verdict)).all()
            deliveries = session.scalars(select(Delivery)).all()
        # No job lost: all done; only the jobs the victim held ran a second time.
        assert len(jobs) == STUDIES and {j.state for j in jobs} == {JobState.DONE}
        assert {j.id for j in jobs if j.attempts > 1} <= set(held)
        assert all(j.attempts == 2 for j in jobs if j.id in held)
        # Exactly one verdict per study, current, scored (not given up) by a live worker.
        per_study = Counter(v.study_id for v in verdicts)
        assert len(per_study) == STUDIES and set(per_study.values()) == {1}
        assert all(v.is_current and v.outcome != "not_scored" for v in verdicts)
        # Counted a second way: the workers logged 30 recorded verdicts between them.
        recorded = [e for log in logs for e in _events(log, "verdict recorded")]
        assert len(recorded) == STUDIES
        assert len({e["study_id"] for e in recorded}) == STUDIES
        assert not any(_events(log, "lease taken over; result dropped") for log in logs[1:])
        # One delivery per verdict, and the PACS holds one SR per study, the verdict's own.
        assert sorted(d.verdict_id for d in deliveries) == sorted(v.id for v in verdicts)
        received = pacs.received()
        sr_per_study = Counter(ds.StudyInstanceUID for ds in received)
        assert len(sr_per_study) == STUDIES and set(sr_per_study.values()) == {1}
        assert {ds.SOPInstanceUID for ds in received} == {v.sr_sop_instance_uid for v in verdicts}
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=40)
            except subprocess.TimeoutExpired:
                worker.kill()
        pacs.stop()
        db.dispose()


def test_worker_refuses_to_start_without_the_shared_data_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path / "worker.toml", 0, tmp_path / "not-mounted")
    result = subprocess.run(
        [sys.executable, "-m", "tamperscan.cli", "worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "TAMPERSCAN_CONFIG"},
    )
    assert result.returncode == 1
    assert "not-mounted does not exist: mount the folder serve writes to" in result.stderr
