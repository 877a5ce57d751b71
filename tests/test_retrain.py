"""Retraining end to end with tiny models and phantom studies: candidates, the gate, the
registry, a killed run, and the schedule (with a controllable clock, never by sleeping)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apscheduler.executors.base
import apscheduler.schedulers.base
import apscheduler.triggers.date
import pytest
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import select, text

from detector.lab.phantoms import write_phantoms
from detector.retrain import GateMetrics, RetrainBusy, Retrainer, decide
from detector.settings import RetrainSettings
from storage.db import Database
from storage.instances import InstanceStore
from storage.models import AuditEvent, ModelVersion, TrainingRun
from tamperscan.scheduler import RetrainScheduler
from tests.dicom_helpers import REPO
from tests.retrain_helpers import Clock, give_verdict, store_folder

TINY: dict[str, Any] = dict(
    trusted_calling_aets=["CT01"],
    modalities=["CT"],
    detectors=["inpaint"],
    max_steps=4,
    batch_size=8,
    patch_size=32,
    model_dim=8,
    calibration_patches=64,
    gate_count=2,
    holdout_fraction=0.5,
    gate_attacks=["injection", "adversarial-noise"],
    gate_genuine_patches=48,
    min_auc=0.0,  # a 4-step model detects nothing; the floor is tested in test_decide_...
    calibration_tolerance=0.15,  # 48 gate patches: P(rate > 0.10 | true 0.05) is about 0.2
    device="cpu",
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("retrain-phantoms")
    return write_phantoms("CT", studies=4, slices=8, out_dir=out, seed=21, size=128)


@pytest.fixture
def installation(tmp_path: Path, phantoms: list[Path]) -> tuple[Database, Path, Clock]:
    """Four clean CT studies from a trusted modality, quarantine passed."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    clock = Clock()
    store = InstanceStore(db, tmp_path / "data", clock=clock)
    for folder in phantoms:
        give_verdict(db, store_folder(store, folder, "CT01"), "clean", clock())
    clock.advance(days=8)
    return db, tmp_path / "data", clock


def test_first_run_promotes_then_a_regressing_candidate_is_rejected(
    installation: tuple[Database, Path, Clock],
) -> None:
    db, data_dir, clock = installation
    report = Retrainer(db, data_dir, RetrainSettings(**TINY), clock=clock).run("cli")
    assert report.state == "succeeded", report
    [first] = report.promoted
    with db.reading() as session:
        version = session.get(ModelVersion, first)
        run = session.get(TrainingRun, report.run_id)
    assert version is not None and run is not None
    assert version.state == "production" and version.parent_id is None
    assert (data_dir / "models" / version.checkpoint_path).is_file()
    gate = version.metrics["gate"]
    assert 0 <= gate["auc"] <= 1 and gate["tampered"] > 0 and gate["genuine_patches"] == 48
    assert version.metrics["production"] is None
    assert "from scratch" in version.metrics["train"]["init"]
    # The run recorded exactly which instances it trained on and held out.
    manifest = run.manifest["CT"]
    assert len(manifest["train"]) + len(manifest["gate"]) == 32  # 4 patients x 8 slices
    assert set(manifest["train"]).isdisjoint(manifest["gate"])
    assert version.manifest["train"] == manifest["train"]

    # Second run: fine-tuned from production, judged against it on the same gate. A margin
    # no candidate can meet stands in for a regression; the candidate is kept, rejected.
    strict = RetrainSettings(**{**TINY, "max_auc_drop": -1.0})
    second = Retrainer(db, data_dir, strict, clock=clock).run("schedule")
    assert second.state == "succeeded" and second.promoted == []
    with db.reading() as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        actions = session.scalars(select(AuditEvent.action)).all()
    assert [v.state for v in versions] == ["production", "rejected"]
    rejected = versions[1]
    assert rejected.parent_id == first and "AUC fell" in (rejected.reason or "")
    # Both measured on the same gate (this run's held-out patients and attacks).
    assert rejected.metrics["production"]["tampered"] == rejected.metrics["gate"]["tampered"]
    assert rejected.metrics["production_version"] == first
    assert "fine-tuned from version" in rejected.metrics["train"]["init"]
    assert actions.count("model.promote") == 1 and actions.count("model.reject") == 1


def test_decide_keeps_regressions_and_broken_calibration_out() -> None:
    s = RetrainSettings()
    prod = GateMetrics(0.80, 0.05, 10, 10, 100)
    assert decide(GateMetrics(0.79, 0.05, 10, 10, 100), prod, s)[0]
    assert not decide(GateMetrics(0.70, 0.05, 10, 10, 100), prod, s)[0]
    assert not decide(GateMetrics(0.90, 0.08, 10, 10, 100), prod, s)[0]  # more false alarms
    ok, why = decide(GateMetrics(0.95, 0.20, 10, 10, 100), None, s)
    assert not ok and "calibration does not hold" in why
    assert not decide(GateMetrics(float("nan"), 0.0, 0, 10, 100), None, s)[0]
    ok, why = decide(GateMetrics(0.3, 0.0, 10, 10, 100), None, s)  # worse than chance
    assert not ok and "below min_auc" in why


def test_too_small_a_pool_skips_and_a_held_lock_refuses(
    installation: tuple[Database, Path, Clock],
) -> None:
    db, data_dir, clock = installation
    settings = RetrainSettings(**{**TINY, "min_patients": 5})
    report = Retrainer(db, data_dir, settings, clock=clock).run("cli")
    assert report.state == "succeeded" and "at least 5" in report.summary["CT"]["skipped"]
    from storage.registry import start_run

    with db.session() as session:
        start_run(session, trigger="cli", now=clock(), lease_s=600, budget={})
    with pytest.raises(RetrainBusy, match="already in progress"):
        Retrainer(db, data_dir, settings, clock=clock).run("cli")


# --------------------------------------------------------------------------- the schedule


class _ManualScheduler(BaseScheduler):
    """APScheduler without its thread: the test decides when due jobs are looked for."""

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def wakeup(self) -> None:
        pass

    def tick(self) -> None:
        self._process_jobs()  # what the background thread does at each wake-up


def _fake_now(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    class FakeDateTime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock.now.astimezone(tz) if tz else clock.now.replace(tzinfo=None)

    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", FakeDateTime)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", FakeDateTime)
    monkeypatch.setattr(apscheduler.triggers.date, "datetime", FakeDateTime)


def test_schedule_fires_coalesces_missed_runs_and_skips_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    _fake_now(monkeypatch, clock)
    runs: list[tuple[str, str | None, datetime]] = []
    settings = RetrainSettings(cron="0 2 * * *", misfire_grace_hours=12)
    sched = RetrainScheduler(
        db,
        settings,
        lambda trigger, actor: runs.append((trigger, actor, clock())),
        timezone=UTC,
        executor=DebugExecutor(),
        scheduler_class=_ManualScheduler,
    )
    sched.start()
    try:
        assert sched.next_run_time() == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
        with db.reading() as session:  # the job store is the service database
            assert session.execute(text("SELECT id FROM apscheduler_jobs")).scalars().all() == [
                "retrain"
            ]
        clock.now = datetime(2026, 3, 2, 1, 59, tzinfo=UTC)
        sched.scheduler.tick()  # type: ignore[attr-defined]
        assert runs == []
        clock.now = datetime(2026, 3, 2, 2, 0, 1, tzinfo=UTC)
        sched.scheduler.tick()  # type: ignore[attr-defined]
        assert [r[0] for r in runs] == ["schedule"]
        assert sched.next_run_time() == datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
        # Down for three nights, back at 03:00: one run, not three.
        clock.now = datetime(2026, 3, 6, 3, 0, tzinfo=UTC)
        sched.scheduler.tick()  # type: ignore[attr-defined]
        assert len(runs) == 2
        # Back only at 15:00 (13 h late, grace 12 h): skipped, the next night still fires.
        clock.now = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
        sched.scheduler.tick()  # type: ignore[attr-defined]
        assert len(runs) == 2
        assert sched.next_run_time() == datetime(2026, 3, 8, 2, 0, tzinfo=UTC)
        # The admin action runs the same job function at once.
        sched.run_now("admin", "alice")
        sched.scheduler.tick()  # type: ignore[attr-defined]
        assert runs[-1][:2] == ("admin", "alice")
    finally:
        sched.shutdown()


# --------------------------------------------------------------------------- a killed run

_KILLED_RUN = """
import sys, time
from pathlib import Path
from detector.retrain import Retrainer
from detector.settings import RetrainSettings
from storage.db import Database
from tests.retrain_helpers import Clock
from tests.test_retrain import TINY
clock = Clock(); clock.advance(days=8)
marker = Path(sys.argv[2])
def hang():
    marker.write_text("training")
    time.sleep(600)
db = Database(sys.argv[1])
settings = RetrainSettings(**TINY)
Retrainer(db, Path(sys.argv[3]), settings, clock=clock, between_steps=hang).run("cli")
"""


def test_a_run_killed_midway_is_failed_at_the_next_start(
    installation: tuple[Database, Path, Clock], tmp_path: Path
) -> None:
    db, data_dir, clock = installation
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, db.url, str(marker), str(data_dir)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the run never reached its first training step"
    finally:
        proc.kill()
        proc.wait()
    with db.reading() as session:
        [run] = session.scalars(select(TrainingRun)).all()
        assert run.state == "running" and run.manifest["CT"]["train"]  # data recorded first
        assert session.scalars(select(ModelVersion)).all() == []
    # The next start finds the dead owner, fails the run, frees the lock and runs normally.
    settings = RetrainSettings(**{**TINY, "min_patients": 50})
    report = Retrainer(db, data_dir, settings, clock=clock).run("cli")
    assert report.state == "succeeded"
    with db.reading() as session:
        runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
    assert [r.state for r in runs] == ["failed", "succeeded"]
    assert "process is gone" in (runs[0].error or "")


# --------------------------------------------------------------------------- sharing the device


def test_training_waits_for_scoring_and_swaps_happen_between_studies() -> None:
    import threading

    from detector.activity import ScoringActivity

    activity = ScoringActivity()
    events: list[str] = []
    scoring_started, finish_scoring = threading.Event(), threading.Event()

    def score() -> None:
        with activity.scoring():
            scoring_started.set()
            finish_scoring.wait(5)
            events.append("scored")

    def train_step() -> None:
        activity.yield_to_scoring()
        events.append("trained")

    def swap() -> None:
        with activity.exclusive():
            events.append("swapped")

    worker = threading.Thread(target=score)
    worker.start()
    assert scoring_started.wait(5)
    others = [threading.Thread(target=train_step), threading.Thread(target=swap)]
    for t in others:
        t.start()
    time.sleep(0.2)  # give them the chance to jump the queue (they must not)
    assert events == []
    finish_scoring.set()
    for t in [worker, *others]:
        t.join(5)
    assert events[0] == "scored" and sorted(events[1:]) == ["swapped", "trained"]
