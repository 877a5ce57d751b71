"""The genuine pool keeps poisoned, unconfirmed and fresh studies out of retraining."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.lab.phantoms import write_phantoms
from storage.db import Database
from storage.instances import InstanceStore
from storage.models import CLEAN, NOT_SCORED, SUSPICIOUS, TAMPERED
from storage.pool import select_pool
from tests.retrain_helpers import Clock, give_verdict, mark, store_folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("pool-phantoms")
    return write_phantoms("CT", studies=4, slices=3, out_dir=out, seed=5, size=64)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'index.db'}")
    database.migrate()
    return database


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, tmp_path: Path, clock: Clock) -> InstanceStore:
    return InstanceStore(db, tmp_path / "data", clock=clock)


def pool(db: Database, clock: Clock, **kw: object) -> list:
    args: dict = dict(
        modality="CT",
        now=clock(),
        trusted_calling_aets=["CT01"],
        quarantine_days=7,
        max_per_patient=100,
    )
    args.update(kw)
    with db.reading() as session:
        return select_pool(session, **args)


def test_only_clean_trusted_unmarked_quarantined_studies_enter(
    db: Database, store: InstanceStore, clock: Clock, phantoms: list[Path]
) -> None:
    clean, suspicious, marked, untrusted = (
        store_folder(store, f, ae)
        for f, ae in zip(phantoms, ["CT01", "CT01", "CT01", "PACS"], strict=True)
    )
    for sid, outcome in [
        (clean, CLEAN),
        (suspicious, SUSPICIOUS),
        (marked, CLEAN),
        (untrusted, CLEAN),
    ]:
        give_verdict(db, sid, outcome, clock())
    mark(db, marked, "tampered", clock())

    assert pool(db, clock) == []  # quarantine: everything is fresh
    clock.advance(days=6.9)
    assert pool(db, clock) == []
    clock.advance(days=0.2)
    admitted = pool(db, clock)
    assert {p.study_uid for p in admitted} == {_uid(db, clean)}
    assert len(admitted) == 3 and len({p.sha256 for p in admitted}) == 3

    # An admin's "genuine" admits the untrusted study; a later "tampered" mark removes it.
    mark(db, untrusted, "genuine", clock())
    assert {p.study_uid for p in pool(db, clock)} == {_uid(db, clean), _uid(db, untrusted)}
    mark(db, untrusted, "tampered", clock())
    assert {p.study_uid for p in pool(db, clock)} == {_uid(db, clean)}

    # A tampered verdict later on (re-scored) takes the clean study out at once.
    give_verdict(db, clean, TAMPERED, clock())
    assert pool(db, clock) == []


def test_genuine_mark_does_not_override_a_suspicious_verdict(
    db: Database, store: InstanceStore, clock: Clock, phantoms: list[Path]
) -> None:
    sid = store_folder(store, phantoms[0], "CT01")
    give_verdict(db, sid, SUSPICIOUS, clock())
    mark(db, sid, "genuine", clock())
    clock.advance(days=8)
    assert pool(db, clock) == []


def test_not_scored_counts_only_for_the_first_model_and_only_without_a_model(
    db: Database, store: InstanceStore, clock: Clock, phantoms: list[Path]
) -> None:
    no_model = store_folder(store, phantoms[0], "CT01")
    failed = store_folder(store, phantoms[1], "CT01")
    give_verdict(db, no_model, NOT_SCORED, clock(), reason="no model for CT")
    give_verdict(db, failed, NOT_SCORED, clock(), reason="scoring failed after 3 attempts: x")
    clock.advance(days=8)
    assert pool(db, clock) == []
    assert {p.study_uid for p in pool(db, clock, bootstrap=True)} == {_uid(db, no_model)}


def test_new_instance_reopens_quarantine_and_caps_and_duplicates(
    db: Database, store: InstanceStore, clock: Clock, phantoms: list[Path]
) -> None:
    a = store_folder(store, phantoms[0], "CT01")
    give_verdict(db, a, CLEAN, clock())
    clock.advance(days=8)
    assert len(pool(db, clock)) == 3
    assert len(pool(db, clock, max_per_patient=2)) == 2
    # The same files again (duplicate) change nothing; a verdict for an older version does not
    # count once the study changed.
    store_folder(store, phantoms[0], "CT01")
    assert len(pool(db, clock)) == 3
    assert pool(db, clock, trusted_calling_aets=[]) == []


def _uid(db: Database, study_id: int) -> str:
    from storage.models import Study

    with db.reading() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study.study_uid
