"""STOW-RS in: the same checks and durable ingest as C-STORE, answered per instance."""

from __future__ import annotations

import time
from typing import Any

import requests
from pydicom.uid import generate_uid
from sqlalchemy import select

from scp.dispatch import multipart_related
from storage.models import Instance, Study, Verdict
from tamperscan.service import Service
from tests.dicom_helpers import ct_dataset
from tests.test_report import file_bytes

FAILED, REFERENCED, FAILURE_REASON, SOP_UID = "00081198", "00081199", "00081197", "00081155"


def post(
    service: Service, body: bytes, content_type: str, path: str = "/studies", **headers: str
) -> requests.Response:
    return requests.post(
        f"http://127.0.0.1:{service.http.port}/dicom-web{path}",
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json", **headers},
        timeout=30,
    )


def sop_uids(answer: dict[str, Any], tag: str) -> list[str]:
    return [item[SOP_UID]["Value"][0] for item in answer.get(tag, {}).get("Value", [])]


def failures(answer: dict[str, Any]) -> dict[str, int]:
    return {
        (item.get(SOP_UID, {}).get("Value") or [""])[0]: item[FAILURE_REASON]["Value"][0]
        for item in answer.get(FAILED, {}).get("Value", [])
    }


def stored_uids(service: Service) -> set[str]:
    with service.db.reading() as session:
        return set(session.scalars(select(Instance.sop_instance_uid)).all())


def test_multi_instance_post_is_stored_and_scored(service_factory: Any) -> None:
    service = service_factory()
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(study, series, index=n) for n in range(1, 4)]
    body, content_type = multipart_related([file_bytes(ds) for ds in datasets])
    response = post(service, body, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert sop_uids(answer, REFERENCED) == [ds.SOPInstanceUID for ds in datasets]
    assert FAILED not in answer
    assert stored_uids(service) == {ds.SOPInstanceUID for ds in datasets}
    # Stored byte for byte, as C-STORE stores.
    with service.db.reading() as session:
        row = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == datasets[0].SOPInstanceUID)
        ).one()
        assert service.store.path_of(row).read_bytes() == file_bytes(datasets[0])
    # Sending the same again is a duplicate, still a success.
    assert post(service, body, content_type).status_code == 200
    # The request counts as a finished transfer: the study settles and gets a verdict.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with service.db.reading() as session:
            verdict = session.scalars(
                select(Verdict)
                .join(Study, Study.id == Verdict.study_id)
                .where(Study.study_uid == study)
            ).first()
        if verdict is not None:
            break
        time.sleep(0.2)
    # Scored by the forensic checks (no model needed); tiny synthetic slices give no region.
    assert verdict is not None and verdict.outcome in ("clean", "not_scored"), verdict.reason


def test_broken_parts_fail_alone_with_reasons(service_factory: Any) -> None:
    service = service_factory()
    study, series = generate_uid(), generate_uid()
    good = ct_dataset(study, series, index=1)
    truncated_ds = ct_dataset(study, series, index=2)
    truncated = file_bytes(truncated_ds)[:-1000]  # cut inside the pixel data: undecodable
    no_uid_ds = ct_dataset(study, series, index=3)
    no_uid_uid = no_uid_ds.SOPInstanceUID
    del no_uid_ds.SeriesInstanceUID
    wrong_class = ct_dataset(study, series, index=4)
    # The file meta says MR while the dataset says CT (same length: the meta comes first).
    ct, mr = b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.840.10008.5.1.4.1.1.4\x00"
    mismatched = file_bytes(wrong_class).replace(ct, mr, 1)
    body, content_type = multipart_related(
        [
            file_bytes(good),
            truncated,
            file_bytes(no_uid_ds),
            b"not dicom at all",
            mismatched,
        ]
    )
    response = post(service, body, content_type)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert sop_uids(answer, REFERENCED) == [good.SOPInstanceUID]
    reasons = failures(answer)
    assert reasons[truncated_ds.SOPInstanceUID] == 0xC210
    assert reasons[no_uid_uid] == 0xA900
    assert reasons[""] == 0xC210
    assert reasons[wrong_class.SOPInstanceUID] == 0xA900
    warnings = response.headers.get("warning", "")
    assert "element_length: (7FE0,0010) declares" in warnings and "Series Instance UID" in warnings
    # Nothing of a broken instance was kept: no row, no file.
    assert stored_uids(service) == {good.SOPInstanceUID}
    files = list((service.store.root).rglob("*.dcm"))
    assert len(files) == 1


def test_all_failed_is_409_and_study_path_must_match(service_factory: Any) -> None:
    service = service_factory()
    ds = ct_dataset(generate_uid(), generate_uid())
    body, content_type = multipart_related([file_bytes(ds)])
    response = post(service, body, content_type, path=f"/studies/{generate_uid()}")
    assert response.status_code == 409
    assert failures(response.json()) == {ds.SOPInstanceUID: 0xA900}
    assert stored_uids(service) == set()
    response = post(service, body, content_type, path=f"/studies/{ds.StudyInstanceUID}")
    assert response.status_code == 200


def test_malformed_requests_are_refused(service_factory: Any) -> None:
    service = service_factory()
    ds = ct_dataset(generate_uid(), generate_uid())
    body, content_type = multipart_related([file_bytes(ds)])
    assert post(service, file_bytes(ds), "application/dicom").status_code == 415
    wrong_boundary = content_type.replace("boundary=", "boundary=other-")
    response = post(service, body, wrong_boundary)
    assert response.status_code == 400 and "multipart" in response.json()["detail"]
    assert stored_uids(service) == set()


def test_bearer_token_and_allowed_hosts(service_factory: Any) -> None:
    service = service_factory(dicomweb={"bearer_token": "s3cret"})
    ds = ct_dataset(generate_uid(), generate_uid())
    body, content_type = multipart_related([file_bytes(ds)])
    missing = post(service, body, content_type)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert post(service, body, content_type, Authorization="Bearer wrong").status_code == 401
    assert post(service, body, content_type, Authorization="Bearer s3cret").status_code == 200

    other = service_factory(dicomweb={"allowed_hosts": ["10.0.0.0/8"]})
    assert post(other, body, content_type).status_code == 403
