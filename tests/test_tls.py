"""DICOM over TLS, and mutual TLS, with certificates made by openssl for the test."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.models import AuditEvent
from tests.dicom_helpers import ct_dataset, make_scu
from tests.pdu_helpers import wait_until


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text(extension + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.pem"),
        )
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def _client_context(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca_pem"]))
    if with_cert:
        context.load_cert_chain(str(pki["client_pem"]), str(pki["client_key"]))
    return context


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = make_scu()
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(ct_dataset("1.2", "1.2.3").SOPClassUID)
    tls = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN", tls_args=tls)
    if not assoc.is_established:
        return False
    try:
        ok = assoc.send_c_echo().Status == 0
        ok = ok and assoc.send_c_store(ct_dataset(generate_uid(), generate_uid())).Status == 0
        return bool(ok)
    finally:
        assoc.release()


def test_tls_server(service_factory: Any, pki: dict[str, Path]) -> None:
    service = service_factory(
        scp__tls={
            "enabled": True,
            "cert_file": str(pki["server_pem"]),
            "key_file": str(pki["server_key"]),
        }
    )
    assert _echo(service.scp.port, _client_context(pki, with_cert=False))
    assert not _echo(service.scp.port, None), "plain TCP must not reach a TLS port"


def test_mutual_tls_requires_a_client_certificate(
    service_factory: Any, pki: dict[str, Path]
) -> None:
    service = service_factory(
        scp__tls={
            "enabled": True,
            "cert_file": str(pki["server_pem"]),
            "key_file": str(pki["server_key"]),
            "client_ca_file": str(pki["ca_pem"]),
        }
    )
    assert _echo(service.scp.port, _client_context(pki, with_cert=True))
    assert not _echo(service.scp.port, _client_context(pki, with_cert=False))


def test_silent_connections_do_not_stall_the_tls_handshakes_of_others(
    service_factory: Any, pki: dict[str, Path]
) -> None:
    # pynetdicom does the handshake on its accepting thread: one silent client stopped every
    # accept. The guard does it on the connection's own thread, under the request deadline.
    service = service_factory(
        scp={"association_request_timeout_s": 2.0},
        scp__tls={
            "enabled": True,
            "cert_file": str(pki["server_pem"]),
            "key_file": str(pki["server_key"]),
        },
    )
    silent = [socket.create_connection(("127.0.0.1", service.scp.port)) for _ in range(3)]
    try:
        assert _echo(service.scp.port, _client_context(pki, with_cert=False))
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed at the deadline
    finally:
        for sock in silent:
            sock.close()

    def reasons() -> list[str]:
        with service.db.session() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "connection.refused")
            ).all()
            return [str((e.detail or {}).get("reason")) for e in events]

    assert wait_until(lambda: len(reasons()) == 3)
    assert reasons() == ["TLS handshake not done within 2 s"] * 3
