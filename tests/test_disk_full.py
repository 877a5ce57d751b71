"""The data disk fills up mid-study: a real, small tmpfs as the data folder (needs root).

The watermark is off (``min_free_mb = 0``) so the real ENOSPC path is exercised: the instance
that does not fit is answered 0xA700, leaves no file and no index row, and the slices that
did fit stay intact; with the disk completely full (the database on it too) the service
still answers (0xA700, C-ECHO); once space returns the same instance is stored and indexed.
CI runs as root; elsewhere the test is skipped (and on CI a skip fails the run).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from storage.files import TEMP_SUFFIX
from storage.models import Instance
from tamperscan.service import Service
from tests.dicom_helpers import ct_dataset, dataset_bytes, make_scu

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)"
)

DISK_MB = 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"  # the data folder conftest's service uses
    data.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(data)],
        check=True,
    )
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on ``disk``."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\xff" * 65536)
                f.flush()
        except OSError:
            pass
    # tmpfs counts whole pages: shrink the filler to leave the wanted room
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_bytes))
    return filler


def _store(service: Service, datasets: list[pydicom.Dataset], tmp_path: Path) -> list[int]:
    ae = make_scu("CT01")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    statuses = []
    try:
        for ds in datasets:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            statuses.append(int(assoc.send_c_store(path).Status))
    finally:
        assoc.release()
    return statuses


def _indexed(service: Service) -> set[str]:
    with service.db.reading() as session:
        return set(session.scalars(select(Instance.sop_instance_uid)).all())


def _echo(service: Service) -> int:
    ae = make_scu("CT01")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_a_full_disk_refuses_with_a700_keeps_the_index_clean_and_recovers(
    small_disk: Path, service_factory: Any, tmp_path: Path
) -> None:
    service = service_factory(storage={"min_free_mb": 0}, worker={"enabled": False})
    study, series = generate_uid(), generate_uid()
    slices = [ct_dataset(study, series, index=n, size=512) for n in range(1, 4)]  # 512 KiB
    sent = tmp_path / "sent"
    sent.mkdir()
    # The first slice fits; then only ~200 KiB remain: the second does not.
    assert _store(service, slices[:1], sent) == [0]
    filler = _fill(small_disk, leave_bytes=200 * 1024)
    assert _store(service, slices[1:2], sent) == [0xA700]
    assert _indexed(service) == {slices[0].SOPInstanceUID}
    files = [p for p in service.store.root.rglob("*") if p.is_file()]
    assert len(files) == 1 and not list(service.store.root.rglob(f"*{TEMP_SUFFIX}"))

    # Completely full, database included: still answered, still nothing half-written.
    filler.unlink()
    _fill(small_disk, leave_bytes=0)
    assert _store(service, slices[1:2], sent) == [0xA700]
    assert _echo(service) == 0
    assert _indexed(service) == {slices[0].SOPInstanceUID}
    assert not list(service.store.root.rglob(f"*{TEMP_SUFFIX}"))

    # Space returns: the same instances are stored, byte for byte.
    (small_disk / "filler").unlink()
    assert _store(service, slices[1:], sent) == [0, 0]
    assert _indexed(service) == {ds.SOPInstanceUID for ds in slices}
    with service.db.reading() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3
        rows = session.scalars(select(Instance)).all()
        for row in rows:  # the dataset as sent (the file meta is ours)
            stored = dataset_bytes(service.store.path_of(row))
            assert stored == dataset_bytes(sent / f"{row.sop_instance_uid}.dcm")
