"""The data disk fills up mid-study: real, small tmpfs mounts (needs root).

With the watermark off (``min_free_mb = 0``) an instance larger than the free space is
refused before it is written; one that hits ENOSPC while it is written (here: a study folder
on its own tiny tmpfs, so the free-space check sees the roomy parent) is refused after; one
whose file fits but whose index row cannot be committed (the database on the full disk) is
refused and its file removed. Each is answered 0xA700 and leaves no file, no temporary file
and no index row; the slices that fitted stay intact; C-ECHO still works; once space returns
the same instances are stored and indexed, byte for byte. CI runs as root; elsewhere the
tests are skipped (and on CI a skip fails the run).
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


def _mount(folder: Path, size_kb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k,mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Folders to unmount at the end (after the service stopped), innermost first."""
    mounted: list[Path] = []
    yield mounted
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path, mounts: list[Path]) -> Path:
    data = tmp_path / "data"  # the data folder conftest's service uses
    _mount(data, DISK_MB * 1024)
    mounts.append(data)
    return data


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on ``disk``."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\xff" * 65536)
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


def _check_consistent(service: Service) -> None:
    """Every indexed file exists and no temporary file is left."""
    assert not list(service.store.root.rglob(f"*{TEMP_SUFFIX}"))
    with service.db.reading() as session:
        rows = session.scalars(select(Instance)).all()
    on_disk = {p for p in service.store.root.rglob("*.dcm")}
    assert {service.store.path_of(r) for r in rows} == on_disk


def _check_stored_as_sent(service: Service, sent: Path) -> None:
    with service.db.reading() as session:
        rows = session.scalars(select(Instance)).all()
    for row in rows:  # the dataset as sent (the file meta is ours)
        stored = dataset_bytes(service.store.path_of(row))
        assert stored == dataset_bytes(sent / f"{row.sop_instance_uid}.dcm")


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
    filler = _fill(small_disk, leave_bytes=0)
    assert _store(service, slices[1:2], sent) == [0xA700]
    assert _echo(service) == 0
    assert _indexed(service) == {slices[0].SOPInstanceUID}
    _check_consistent(service)

    # Room for the file and not a byte more: the index commit may fail (the database's WAL
    # cannot grow). Whatever the answer, it matches what is indexed and on disk.
    size = len(sent.joinpath(f"{slices[1].SOPInstanceUID}.dcm").read_bytes())
    os.truncate(filler, max(0, filler.stat().st_size - (size // 4096 + 6) * 4096))
    [status] = _store(service, slices[1:2], sent)
    assert status in (0, 0xA700)
    assert (slices[1].SOPInstanceUID in _indexed(service)) == (status == 0)
    _check_consistent(service)

    # Space returns: the same instances are stored, byte for byte.
    filler.unlink()
    assert _store(service, slices[1:], sent) == [0, 0]
    assert _indexed(service) == {ds.SOPInstanceUID for ds in slices}
    with service.db.reading() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3
    _check_consistent(service)
    _check_stored_as_sent(service, sent)


def test_enospc_while_writing_answers_a700_and_leaves_nothing(
    tmp_path: Path, mounts: list[Path], service_factory: Any
) -> None:
    service = service_factory(storage={"min_free_mb": 0}, worker={"enabled": False})
    study, series = generate_uid(), generate_uid()
    slices = [ct_dataset(study, series, index=n, size=512) for n in range(1, 4)]  # 512 KiB
    folder = service.store.root / study  # the free-space check measures the roomy parent
    _mount(folder, 768)
    mounts.append(folder)
    sent = tmp_path / "sent"
    sent.mkdir()
    assert _store(service, slices, sent) == [0, 0xA700, 0xA700]
    assert _indexed(service) == {slices[0].SOPInstanceUID}
    _check_consistent(service)
    subprocess.run(["mount", "-o", "remount,size=4m", str(folder)], check=True)
    assert _store(service, slices[1:], sent) == [0, 0]
    assert _indexed(service) == {ds.SOPInstanceUID for ds in slices}
    _check_consistent(service)
    _check_stored_as_sent(service, sent)
