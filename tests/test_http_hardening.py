"""HTTP edges on a real uvicorn: proxy headers trusted only from configured proxies, image
routes that render or refuse every accepted instance, and a STOW-RS client that hangs up."""

from __future__ import annotations

import logging
import random
import re
import socket
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from scp.dispatch import multipart_related
from storage.models import AuditEvent, Instance
from tamperscan.service import Service
from tests.admin_helpers import PASSWORDS, add_test_users
from tests.dicom_helpers import TEST_FILES, ct_dataset, make_scu
from tests.test_report import file_bytes
from tests.test_stow import post


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def _url(service: Service, path: str) -> str:
    return f"http://127.0.0.1:{service.http.port}{path}"


def test_x_forwarded_for_from_loopback_does_not_pass_allowed_hosts(service_factory: Any) -> None:
    service = service_factory(dicomweb={"allowed_hosts": ["192.0.2.0/24"]})
    ds = ct_dataset(generate_uid(), generate_uid())
    body, content_type = multipart_related([file_bytes(ds)])
    response = post(service, body, content_type, **{"X-Forwarded-For": "192.0.2.10"})
    assert response.status_code == 403
    with service.db.reading() as session:
        refusal = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stow.rejected")
        ).one()
        assert refusal.target == "127.0.0.1"  # the socket's peer, not the header's claim
        assert session.scalars(select(Instance)).all() == []


def test_a_configured_proxy_is_believed(service_factory: Any) -> None:
    service = service_factory(
        dicomweb={"allowed_hosts": ["192.0.2.0/24"]},
        admin={"port": 0, "trusted_proxies": ["127.0.0.1/32"]},
    )
    ds = ct_dataset(generate_uid(), generate_uid())
    body, content_type = multipart_related([file_bytes(ds)])
    response = post(service, body, content_type, **{"X-Forwarded-For": "192.0.2.10"})
    assert response.status_code == 200, response.text
    with service.db.reading() as session:
        [instance] = session.scalars(select(Instance)).all()
        assert instance.peer_address == "192.0.2.10"


def test_rotating_x_forwarded_for_does_not_escape_the_login_throttle(
    service_factory: Any,
) -> None:
    service = service_factory(admin={"port": 0, "login_max_failures": 3})
    add_test_users(service.db)
    client = requests.Session()
    statuses = []
    for n in range(5):
        token = _csrf(client.get(_url(service, "/login"), timeout=10).text)
        response = client.post(
            _url(service, "/login"),
            data={"username": f"nobody{n}", "password": "wrong", "csrf_token": token},
            headers={"X-Forwarded-For": f"198.51.100.{n + 1}"},
            allow_redirects=False,
            timeout=10,
        )
        statuses.append(response.status_code)
    assert statuses[-1] == 429 and 429 not in statuses[:3]  # one client: 127.0.0.1


def _one_entry_lut_ct(study: str, series: str) -> Dataset:
    ds = ct_dataset(study, series, index=1)
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.LUTDescriptor = [1, 0, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = [5]
    ds.ModalityLUTSequence = [item]
    return ds


def _odd_but_valid(tmp_path: Path) -> list[Path]:
    """Instances the receiver accepts that a simple renderer trips over."""
    study, series = generate_uid(), generate_uid()
    datasets = [_one_entry_lut_ct(study, series)]
    odd = ct_dataset(study, series, index=2)
    odd.WindowCenter, odd.WindowWidth = ["40", "1E308"], ["0", "1E308"]
    datasets.append(odd)
    mono1 = ct_dataset(study, series, index=3)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    datasets.append(mono1)
    flat = ct_dataset(study, series, index=4)
    flat.PixelData = bytes(len(flat.PixelData))
    datasets.append(flat)
    paths = []
    for ds in datasets:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    names = ["CT_small.dcm", "693_J2KI.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"]
    names += ["examples_palette.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm"]
    return paths + [TEST_FILES / name for name in names]


def test_image_routes_render_or_refuse_every_accepted_instance(
    service: Service, tmp_path: Path
) -> None:
    paths = _odd_but_valid(tmp_path)
    ae = make_scu()
    for path in paths:
        meta = pydicom.filereader.read_file_meta_info(path)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
    try:
        assert [int(assoc.send_c_store(p).Status) for p in paths] == [0] * len(paths)
    finally:
        assoc.release()
    add_test_users(service.db)
    client = requests.Session()
    token = _csrf(client.get(_url(service, "/login"), timeout=10).text)
    client.post(
        _url(service, "/login"),
        data={"username": "victor", "password": PASSWORDS["victor"], "csrf_token": token},
        timeout=10,
    )
    with service.db.reading() as session:
        rows = session.execute(select(Instance.id, Instance.study_id)).all()
    assert len(rows) == len(paths)
    answers = {}
    for instance_id, study_id in rows:
        for query in ("", "?size=96", "?overlay=1"):
            url = _url(service, f"/studies/{study_id}/instances/{instance_id}.png{query}")
            answers[(instance_id, query)] = client.get(url, timeout=30).status_code
    assert set(answers.values()) <= {200, 422}, answers
    assert 200 in answers.values()


def test_a_stow_client_hanging_up_mid_body_is_logged_quietly(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=xyz\r\n'
        b"Content-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.http.port), timeout=10) as sock:
        sock.sendall(head + b"--xyz\r\nContent-Type: application/dicom\r\n\r\n" + bytes(4096))
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        "disconnected" in r.getMessage() for r in caplog.records
    ):
        time.sleep(0.1)
    assert any(
        "disconnected before the body was complete" in r.getMessage() for r in caplog.records
    )
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # And the endpoint still works.
    ds = ct_dataset(generate_uid(), generate_uid(), seed=random.Random(3).randint(0, 99))
    body, content_type = multipart_related([file_bytes(ds)])
    assert post(service, body, content_type).status_code == 200
