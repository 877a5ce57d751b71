"""Group commit over real loopback associations and a real SQLite index.

Concurrent associations share the committer; every acknowledged instance must be on disk and
indexed exactly once, and one instance that fails (its write, its row) fails alone.
"""

from __future__ import annotations

import errno
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

import storage.committer
from scp.validate import OUT_OF_RESOURCES
from storage.audit import audit
from storage.committer import GroupCommitter, Pending
from storage.db import Database
from storage.models import AuditEvent, Instance
from tamperscan.service import Service
from tests.dicom_helpers import ct_dataset, dataset_bytes, make_scu

ASSOCIATIONS = 4
PER_ASSOCIATION = 40


def _send_all(service: Service, batches: list[list[Dataset]]) -> list[list[int]]:
    """One association per list, all at once; the status of every C-STORE, in order."""
    statuses: list[list[int]] = [[] for _ in batches]
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            ae = make_scu(f"SCU{n}")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
            assert assoc.is_established
            try:
                for ds in batches[n]:
                    statuses[n].append(int(assoc.send_c_store(ds).Status))
            finally:
                assoc.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return statuses


def _datasets(study: str) -> list[list[Dataset]]:
    return [
        [ct_dataset(study, generate_uid(), i + 1, size=32, seed=n) for i in range(PER_ASSOCIATION)]
        for n in range(ASSOCIATIONS)
    ]


def test_concurrent_associations_all_durable_and_indexed_once(service: Service) -> None:
    assert service.store.committer is not None and service.store.committer.running
    sent = _datasets(generate_uid())
    statuses = _send_all(service, sent)
    assert all(status == 0x0000 for per in statuses for status in per)
    with service.db.reading() as session:
        rows = session.scalars(select(Instance)).all()
    by_uid = {row.sop_instance_uid: row for row in rows}
    assert len(rows) == len(by_uid) == ASSOCIATIONS * PER_ASSOCIATION
    for ds in (ds for per in sent for ds in per):
        row = by_uid[ds.SOPInstanceUID]
        on_disk = service.store.path_of(row)
        assert dataset_bytes(on_disk) == dataset_bytes(_encoded(ds))
    assert not list(service.store.root.rglob("*.partial"))
    # Shared transactions: fewer commits than instances (timing decides how many fewer).
    assert 1 <= service.store.committer.batches <= ASSOCIATIONS * PER_ASSOCIATION


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_failed_write_fails_only_that_instance(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _datasets(generate_uid())
    doomed = sent[2][7].SOPInstanceUID
    real_write = storage.committer.write_unsynced_name

    def write(target: Path, data: bytes) -> None:
        if target.name.startswith(doomed + "."):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real_write(target, data)

    monkeypatch.setattr(storage.committer, "write_unsynced_name", write)
    statuses = _send_all(service, sent)
    assert statuses[2][7] == OUT_OF_RESOURCES
    assert sum(status != 0x0000 for per in statuses for status in per) == 1
    with service.db.reading() as session:
        uids = set(session.scalars(select(Instance.sop_instance_uid)).all())
        refused = session.scalars(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "instance.rejected", AuditEvent.target == doomed)
        ).one()
    assert doomed not in uids
    assert len(uids) == ASSOCIATIONS * PER_ASSOCIATION - 1
    assert refused == 1
    assert not list(service.store.root.rglob(f"{doomed}.*"))


def test_a_failed_row_falls_back_to_one_by_one(tmp_path: Path) -> None:
    """A batch whose transaction fails is indexed one by one: only the bad row is refused."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    committer = GroupCommitter(db)
    removed: list[str] = []

    def pending(name: str, fails: bool) -> Pending:
        def index(session: Any) -> str:
            if fails:
                raise IntegrityError("INSERT", {}, Exception("constraint (injected)"))
            audit(session, actor="test", action="row", target=name, detail={})
            return name

        return Pending(tmp_path / "f" / name, name.encode(), index, lambda: removed.append(name))

    batch = [pending("a", False), pending("b", True), pending("c", False)]
    committer.commit(batch)
    assert [p.outcome for p in batch] == ["a", None, "c"]
    assert isinstance(batch[1].error, IntegrityError)
    assert all(p.done.is_set() for p in batch)
    assert removed == ["b"]
    assert (tmp_path / "f" / "a").read_bytes() == b"a"
    with db.reading() as session:
        targets = session.scalars(select(AuditEvent.target).where(AuditEvent.action == "row"))
        assert sorted(targets) == ["a", "c"]
