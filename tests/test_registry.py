"""The registry: one production model per slot, atomic audited promotion and rollback, and a
run lock that a killed run cannot keep."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import AuditEvent, ModelVersion, RetrainLock, TrainingRun
from storage.registry import (
    RegistryError,
    RunHolder,
    add_version,
    fail_dead_runs,
    finish_run,
    production,
    promote,
    rollback,
    start_run,
)
from tests.retrain_helpers import Clock


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """Once on SQLite, once on PostgreSQL (``database_url`` in conftest.py)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def _version(db: Database, clock: Clock, name: str) -> int:
    with db.session() as session:
        return add_version(
            session,
            detector="inpaint",
            modality="CT",
            checkpoint_path=name,
            sha256="0" * 64,
            now=clock(),
        ).id


def test_promotion_retires_the_previous_and_rollback_restores_it(db: Database) -> None:
    clock = Clock()
    first, second = _version(db, clock, "a.ckpt"), _version(db, clock, "b.ckpt")
    with db.session() as session:
        promote(session, first, "admin", clock(), "first")
    clock.advance(seconds=1)
    with db.session() as session:
        promote(session, second, "admin", clock(), "better")
    with db.reading() as session:
        states = dict(session.execute(select(ModelVersion.id, ModelVersion.state)).all())
        assert states == {first: "retired", second: "production"}
    with db.session() as session:
        assert rollback(session, "CT", "inpaint", "admin", clock()).id == first
    with db.reading() as session:
        assert production(session, "inpaint", "CT").id == first  # type: ignore[union-attr]
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["model.promote", "model.promote", "model.rollback"]
    with db.session() as session, pytest.raises(RegistryError, match="no production btd"):
        rollback(session, "CT", "btd", "admin", clock())


def test_a_failed_promotion_changes_nothing(db: Database) -> None:
    clock = Clock()
    good, bad = _version(db, clock, "a.ckpt"), _version(db, clock, "b.ckpt")
    with db.session() as session:
        promote(session, good, "admin", clock(), "first")
    with pytest.raises(RuntimeError), db.session() as session:
        promote(session, bad, "admin", clock(), "second")
        raise RuntimeError("crash before commit")
    with db.reading() as session:
        assert production(session, "inpaint", "CT").id == good  # type: ignore[union-attr]
        assert session.get(ModelVersion, bad).state == "candidate"  # type: ignore[union-attr]


def test_never_two_runs_and_a_dead_run_is_failed_at_the_next_start(db: Database) -> None:
    clock = Clock()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket

    dead_owner = f"{socket.gethostname()}:{int(dead.stdout)}"
    with db.session() as session:
        run = start_run(
            session, trigger="cli", now=clock(), lease_s=600, budget={}, owner=dead_owner
        )
        assert isinstance(run, TrainingRun)
        run_id = run.id
        add_version(
            session,
            detector="inpaint",
            modality="CT",
            checkpoint_path="x.ckpt",
            sha256="0" * 64,
            now=clock(),
            run_id=run_id,
        )
    with db.session() as session:  # a second run is refused while the first holds the lock
        other = start_run(session, trigger="schedule", now=clock(), lease_s=600, budget={})
        assert other == RunHolder(run_id, dead_owner)
    with db.session() as session:
        assert fail_dead_runs(session, clock()) == [run_id]
    with db.reading() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None and run.state == "failed" and "process is gone" in run.error
        assert session.scalars(select(ModelVersion.state)).all() == ["rejected"]
        assert session.get(RetrainLock, "retrain").run_id is None  # type: ignore[union-attr]
    with db.session() as session:
        again = start_run(session, trigger="cli", now=clock(), lease_s=600, budget={})
        assert isinstance(again, TrainingRun)
        finish_run(session, again.id, clock(), {})


def test_a_live_run_is_kept_until_its_lease_lapses(db: Database) -> None:
    clock = Clock()
    with db.session() as session:
        run = start_run(
            session, trigger="cli", now=clock(), lease_s=60, budget={}, owner="another-host:123"
        )
        assert isinstance(run, TrainingRun)
    with db.session() as session:
        assert fail_dead_runs(session, clock()) == []
    clock.advance(seconds=61)
    with db.session() as session:
        assert fail_dead_runs(session, clock()) == [run.id]
