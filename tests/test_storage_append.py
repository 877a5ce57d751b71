# ruff: noqa: F811 - the storage fixtures are imported by name and used as parameters
"""Ingest's fast path (storage/append.py): the next new instance of a receiving study is
indexed with two Core statements, writing exactly what the ORM path writes; every other case
(new study, late field, a study no longer receiving, a retry) goes the full way."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.append import append_instance, append_target
from storage.db import Database
from storage.instances import InstanceStore, StoreResult
from storage.models import QUEUED, RECEIVING, Instance, Study
from tests.test_storage import ORIGIN, Clock, clock, db, meta, store  # noqa: F401


@pytest.fixture
def full_path_calls(store: InstanceStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP UIDs that went through the ORM path (InstanceStore._index)."""
    calls: list[str] = []
    original = store._index

    def counted(session, meta, *args):  # noqa: ANN001, ANN202
        calls.append(meta.sop_instance_uid)
        return original(session, meta, *args)

    monkeypatch.setattr(store, "_index", counted)
    return calls


def _row(db: Database, sop: str) -> dict[str, object]:
    with db.reading() as session:
        inst = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one()
        return {
            c: getattr(inst, c)
            for c in (col.name for col in Instance.__table__.columns)
            if c not in ("id", "sop_instance_uid", "file_path", "received_at")
        }


def test_next_instance_takes_the_fast_path_and_writes_the_same_row(
    store: InstanceStore, db: Database, clock: Clock, full_path_calls: list[str]
) -> None:
    first = store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    clock.advance(5)
    second = store.store(b"a", meta("1.2.3.4.2"), ORIGIN)  # same bytes, another instance
    assert full_path_calls == ["1.2.3.4.1"]
    assert second.result is StoreResult.STORED and second.study_id == first.study_id
    assert _row(db, "1.2.3.4.2") == _row(db, "1.2.3.4.1")
    with db.reading() as session:
        study = session.get(Study, first.study_id)
        assert study.last_received_at == clock() and study.state == RECEIVING
        assert study.released_at is None
        paths = session.scalars(select(Instance.file_path).order_by(Instance.id)).all()
    assert all((store.root / p).is_file() for p in paths) and len(set(paths)) == 2
    assert store.store(b"a", meta("1.2.3.4.2"), ORIGIN).result is StoreResult.DUPLICATE


def test_every_other_case_goes_the_full_way(
    store: InstanceStore, db: Database, full_path_calls: list[str]
) -> None:
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    store.store(b"b", meta("1.2.3.4.1"), ORIGIN)  # other bytes: a replacement
    store.store(b"c", meta("1.2.3.4.9", series="1.2.3.5"), ORIGIN)  # a new series
    late = replace(meta("1.2.3.4.2"), patient_id="P7")  # a field the study lacks
    store.store(b"d", late, ORIGIN)
    assert full_path_calls == ["1.2.3.4.1", "1.2.3.4.1", "1.2.3.4.9", "1.2.3.4.2"]
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        assert study.patient_id == "P7"
        study.state = QUEUED  # the assembler queued it
    store.store(b"e", meta("1.2.3.4.3"), ORIGIN)
    assert full_path_calls[-1] == "1.2.3.4.3"
    with db.reading() as session:
        study = session.scalars(select(Study)).one()
        assert (study.state, study.version) == (RECEIVING, 2)  # re-opened by the full path


def test_a_study_that_stopped_receiving_after_the_lookup_is_not_appended_to(
    store: InstanceStore, db: Database, clock: Clock
) -> None:
    store.store(b"a", meta("1.2.3.4.1"), ORIGIN)
    with db.reading() as session:
        target = append_target(session, meta("1.2.3.4.2"))
    assert target is not None
    with db.session() as session:
        session.scalars(select(Study)).one().state = QUEUED
    with db.session() as session:
        added = append_instance(
            session, target, meta("1.2.3.4.2"), ORIGIN, Path("x.dcm"), "0" * 64, 1, clock()
        )
    assert added is None
    with db.reading() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
