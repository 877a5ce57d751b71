"""The Storage SCP over real loopback associations, against an in-process service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from storage.models import AuditEvent, Instance, Study
from tamperscan.service import Service
from tests.dicom_helpers import TEST_FILES, ct_dataset, dataset_bytes, make_scu, transfer_syntax_of

FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "693_J2KI.dcm",  # 512x512 CT, JPEG 2000
    "J2K_pixelrep_mismatch.dcm",  # 512x512 CT, JPEG 2000 lossless
]


@pytest.fixture(autouse=True)
def _send_files_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Send files exactly as they are on disk, without pydicom decoding and re-encoding them.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def associate(
    service: Service,
    ae_title: str = "TESTSCU",
    contexts: list[Any] | None = None,
    called: str = "TAMPERSCAN",
) -> Any:
    ae = make_scu(ae_title)
    for abstract, syntax in contexts or []:
        ae.add_requested_context(abstract, syntax)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", service.scp.port, ae_title=called)


def context_of(path: Path) -> tuple[str, str]:
    meta = pydicom.filereader.read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), transfer_syntax_of(path)


def stored_instance(service: Service, sop_uid: str) -> Instance | None:
    with service.db.session() as session:
        return session.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_uid)
        ).one_or_none()


def test_every_transfer_syntax_arrives_byte_identical_and_indexed(service: Service) -> None:
    paths = [TEST_FILES / name for name in FILES]
    assoc = associate(service, contexts=[context_of(p) for p in paths])
    assert assoc.is_established
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, path.name
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            row = stored_instance(service, ds.SOPInstanceUID)
            assert row is not None, path.name
            on_disk = service.store.path_of(row)
            # Several MR_small variants share one SOP Instance UID: each new version is
            # indexed and the earlier version's file is kept under its own hash.
            assert dataset_bytes(on_disk) == dataset_bytes(path), path.name
            assert row.transfer_syntax_uid == transfer_syntax_of(path)
            assert row.size_bytes == on_disk.stat().st_size
            assert row.calling_ae == "TESTSCU"
            assert row.peer_address == "127.0.0.1"
    finally:
        assoc.release()


def test_echo(service: Service) -> None:
    assoc = associate(service)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_unknown_calling_ae_is_rejected_and_audited(service_factory: Any) -> None:
    service = service_factory(scp={"allowed_calling_aets": ["PACS"]})
    assoc = associate(service, ae_title="INTRUDER")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
    allowed = associate(service, ae_title="PACS")
    assert allowed.is_established
    allowed.release()
    with service.db.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "association.rejected")
        ).all()
    assert [e.actor for e in events] == ["INTRUDER"]


def test_unknown_host_is_refused_at_accept_and_audited(service_factory: Any) -> None:
    service = service_factory(scp={"allowed_hosts": ["10.99.0.0/16"]})
    assoc = associate(service)
    # Closed before an association exists (scp/guard.py): no A-ASSOCIATE-RJ, no thread.
    assert not assoc.is_established and not assoc.is_rejected
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with service.db.session() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "connection.refused")
            ).all()
            reasons = [e.detail["reason"] for e in events if e.detail]
        if reasons:
            break
        time.sleep(0.05)
    assert reasons == ["host 127.0.0.1 not in scp.allowed_hosts"]


def test_wrong_called_ae_is_rejected(service: Service) -> None:
    assoc = associate(service, called="SOMEONE_ELSE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x07


def _send_dataset(
    service: Service, ds: pydicom.Dataset, tmp_path: Path, context: tuple[str, str] | None = None
) -> int:
    path = tmp_path / f"{generate_uid()}.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)  # keep the file meta exactly as the test set it
    assoc = associate(service, contexts=[context or context_of(path)])
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def _instances(service: Service) -> int:
    with service.db.session() as session:
        return int(session.scalar(select(func.count(Instance.id))))


def _files(service: Service) -> list[Path]:
    return (
        [p for p in service.store.root.rglob("*") if p.is_file()]
        if service.store.root.exists()
        else []
    )


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), 0xA900),
        (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.abc.4"), 0xC000),
        (lambda ds: setattr(ds, "StudyInstanceUID", "../../etc"), 0xC000),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1." + "2" * 80), 0xC000),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), 0xC000),
    ],
    ids=["missing-study-uid", "invalid-series-uid", "path-in-uid", "uid-too-long", "short-pixels"],
)
def test_malformed_datasets_get_failure_status_and_nothing_written(
    service: Service, tmp_path: Path, change: Any, status: int
) -> None:
    ds = ct_dataset(generate_uid(), generate_uid())
    change(ds)
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert _send_dataset(service, ds, tmp_path) == status
    assert _instances(service) == 0
    assert _files(service) == []
    with service.db.session() as session:
        assert (
            session.scalar(
                select(func.count(AuditEvent.id)).where(AuditEvent.action == "instance.rejected")
            )
            == 1
        )


def test_sop_class_not_matching_the_context_is_refused(service: Service, tmp_path: Path) -> None:
    ds = ct_dataset(generate_uid(), generate_uid())
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage  # announced as MR, the data says CT
    assert _send_dataset(service, ds, tmp_path) == 0xA900
    assert _instances(service) == 0


def test_undecodable_bytes_are_refused(service: Service, tmp_path: Path) -> None:
    ds = ct_dataset(generate_uid(), generate_uid())
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    offset = len(raw) - len(dataset_bytes(path))
    # Garble the dataset: an element header claiming more bytes than follow.
    path.write_bytes(raw[:offset] + b"\x08\x00\x18\x00UI\xff\xff" + b"1.2" + raw[offset + 40 :])
    assoc = associate(service, contexts=[context_of(path)])
    status = int(assoc.send_c_store(path).Status)
    assoc.release()
    assert status & 0xF000 in (0xC000, 0xA000)
    assert _instances(service) == 0
    assert _files(service) == []


def test_disk_below_watermark_answers_out_of_resources(
    service_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_factory(storage={"min_free_mb": 10**9})  # a petabyte: never there
    ds = ct_dataset(generate_uid(), generate_uid())
    assert _send_dataset(service, ds, tmp_path) == 0xA700
    assert _instances(service) == 0
    assert any("free-space watermark" in r.getMessage() for r in caplog.records)


def test_same_uid_same_bytes_is_one_instance(service: Service, tmp_path: Path) -> None:
    ds = ct_dataset(generate_uid(), generate_uid())
    assert _send_dataset(service, ds, tmp_path) == 0x0000
    assert _send_dataset(service, ds, tmp_path) == 0x0000
    assert _instances(service) == 1
    assert len(_files(service)) == 1


def test_same_uid_new_bytes_keeps_newest_and_records_it(service: Service, tmp_path: Path) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = ct_dataset(study, series, sop_uid=sop, seed=1)
    second = ct_dataset(study, series, sop_uid=sop, seed=2)
    assert _send_dataset(service, first, tmp_path) == 0x0000
    assert _send_dataset(service, second, tmp_path) == 0x0000
    assert _instances(service) == 1
    row = stored_instance(service, sop)
    assert row is not None and row.replaced_count == 1
    assert pydicom.dcmread(service.store.path_of(row)).PixelData == second.PixelData
    assert len(_files(service)) == 2  # the replaced bytes stay on disk for forensics
    with service.db.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "instance.replaced")
        ).one()
        assert event.target == sop
        study_row = session.scalars(select(Study)).one()
        assert study_row.patient_id == "TEST-0001"


def test_association_limit_from_config(service_factory: Any) -> None:
    service = service_factory(scp={"max_associations": 1})
    first = associate(service)
    assert first.is_established
    second = associate(service)
    assert second.is_rejected  # rejected-transient, local limit exceeded
    assert second.acceptor.primitive.result == 0x02
    first.release()
    third = associate(service)
    assert third.is_established
    third.release()
