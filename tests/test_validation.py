"""The strict check of every received instance: each malformation family refused with its
status over C-STORE and STOW-RS and audited, nothing of it stored; real files accepted; the
configured leniency list relaxes only what it names."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import _config
from sqlalchemy import func, select

from detector.lab.phantoms import write_phantoms
from scp.dispatch import multipart_related
from storage.models import AuditEvent, Instance
from tamperscan.config import ConfigError
from tamperscan.service import Service
from tests.conftest import make_settings
from tests.dicom_helpers import TEST_FILES, make_scu
from tests.malformed import (
    CANNOT_UNDERSTAND,
    SYNTAXES,
    Case,
    base_dataset,
    elements,
    file_of,
    raw,
    valid_case,
)
from tests.malformed_families import FAMILIES, tags_out_of_order, trailing_bytes
from tests.test_stow import failures, post

REAL_FILES = sorted(
    {*TEST_FILES.glob("MR_small*.dcm"), TEST_FILES / "CT_small.dcm", TEST_FILES / "693_J2KI.dcm"}
)


@pytest.fixture(autouse=True)
def raw_sends() -> Iterator[None]:
    """Make pynetdicom send a file's bytes as they are (by default it re-encodes them)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def send(service: Service, cases: list[Case], tmp_path: Path) -> list[int]:
    """C-STORE each case as its raw bytes on one association; the statuses answered."""
    ae = make_scu()
    for syntax in SYNTAXES:
        ae.add_requested_context(CTImageStorage, [syntax])
    for path in REAL_FILES:
        meta = pydicom.filereader.read_file_meta_info(path)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    statuses = []
    try:
        for n, case in enumerate(cases):
            path = tmp_path / f"case{n}.dcm"
            path.write_bytes(case.data)
            answer = assoc.send_c_store(path)
            statuses.append(int(answer.Status) if "Status" in answer else -1)
    finally:
        assoc.release()
    return statuses


def counts(service: Service) -> tuple[int, int]:
    with service.db.reading() as session:
        instances = session.scalar(select(func.count(Instance.id)))
        refused = session.scalar(
            select(func.count(AuditEvent.id)).where(AuditEvent.action == "instance.rejected")
        )
    return int(instances or 0), int(refused or 0)


def test_every_family_is_refused_over_c_store_with_its_status(
    service: Service, tmp_path: Path
) -> None:
    rng = random.Random(13)
    cases = [family(rng) for family in FAMILIES for _ in range(3)]
    statuses = send(service, cases, tmp_path)
    wrong = [
        (c.family, f"0x{s:04X}")
        for c, s in zip(cases, statuses, strict=True)
        if s not in c.expected
    ]
    assert wrong == []
    assert counts(service) == (0, len(cases))  # nothing stored, every refusal audited
    assert not [p for p in service.store.root.rglob("*") if p.is_file()]


def test_a_uid_ending_in_a_newline_is_refused(service: Service, tmp_path: Path) -> None:
    ds = base_dataset(random.Random(4))
    uid = str(ds.SOPInstanceUID)
    tags = sorted(ds.keys())
    parts = elements(ds)
    parts[tags.index(0x00080018)] = raw(0x00080018, b"UI", uid.encode() + b"\n\x00\n\x00")
    data = file_of(b"".join(parts), ExplicitVRLittleEndian, uid)
    case = Case("uid", data, ExplicitVRLittleEndian, uid, frozenset({CANNOT_UNDERSTAND}))
    assert send(service, [case], tmp_path) == [CANNOT_UNDERSTAND]
    assert counts(service) == (0, 1)
    assert not service.store.root.exists() or not any(service.store.root.iterdir())


def test_real_files_and_phantoms_are_accepted(service: Service, tmp_path: Path) -> None:
    phantoms = write_phantoms("CT", studies=1, slices=2, out_dir=tmp_path / "ct", seed=3, size=64)
    phantoms += write_phantoms("MR", studies=1, slices=2, out_dir=tmp_path / "mr", seed=3, size=64)
    files = REAL_FILES + sorted((tmp_path / "ct").rglob("*.dcm"))
    files += sorted((tmp_path / "mr").rglob("*.dcm"))
    ae = make_scu()
    contexts = set()
    for path in files:
        meta = pydicom.filereader.read_file_meta_info(path)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for abstract, syntax in sorted(contexts):
        ae.add_requested_context(abstract, [syntax])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    try:
        statuses = [(path.name, int(assoc.send_c_store(path).Status)) for path in files]
    finally:
        assoc.release()
    assert statuses == [(path.name, 0) for path in files]
    valid = valid_case(random.Random(1))
    assert send(service, [valid], tmp_path) == [0]
    distinct = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert counts(service) == (len(distinct) + 1, 0)  # the MR_small files share one UID


def test_stow_rs_refuses_the_same_families(service: Service) -> None:
    rng = random.Random(7)
    cases = [family(rng) for family in FAMILIES]
    # A group 0002 element first in the dataset: over DIMSE a sender's reader takes it for
    # file meta, over STOW-RS the File Meta Information Group Length shows it is not.
    ds = base_dataset(rng)
    leading = raw(0x00020013, b"SH", b"EVIL") + b"".join(elements(ds))
    data = file_of(leading, ExplicitVRLittleEndian, ds.SOPInstanceUID)
    cases.append(
        Case(
            "file_meta_first",
            data,
            ExplicitVRLittleEndian,
            ds.SOPInstanceUID,
            frozenset({CANNOT_UNDERSTAND}),
        )
    )
    body, content_type = multipart_related([c.data for c in cases])
    response = post(service, body, content_type)
    assert response.status_code == 409, response.text
    answered = response.json()["00081198"]["Value"]
    assert len(answered) == len(cases)
    assert all(
        item["00081197"]["Value"][0] in c.expected for item, c in zip(answered, cases, strict=True)
    )
    assert failures(response.json())  # reasons are keyed by UID where the UID was valid
    assert counts(service) == (0, len(cases))


def test_relaxed_checks_are_the_only_ones_relaxed(service_factory: Any, tmp_path: Path) -> None:
    service = service_factory(validation={"relax": ["tag_order", "trailing_bytes"]})
    rng = random.Random(11)
    order = tags_out_of_order(rng)
    ds = base_dataset(rng)
    tail = b"".join(elements(ds)) + b"\x01\x02\x03"  # fewer bytes than an element header
    short_tail = Case(
        "trailing_bytes",
        file_of(tail, ExplicitVRLittleEndian, ds.SOPInstanceUID),
        ExplicitVRLittleEndian,
        ds.SOPInstanceUID,
        frozenset({0}),
    )
    relaxed = (tags_out_of_order, trailing_bytes)
    others = [family(rng) for family in FAMILIES if family not in relaxed]
    statuses = send(service, [order, short_tail, *others], tmp_path)
    assert statuses[:2] == [0, 0]
    assert all(s in c.expected for s, c in zip(statuses[2:], others, strict=True))


@pytest.mark.parametrize("name", ["uid", "element_length", "pixel_data_short", "nonsense"])
def test_strict_checks_cannot_be_relaxed(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="relax"):
        make_settings(tmp_path, validation={"relax": [name]})
