"""End to end with a real PACS: Orthanc pushes a study to TamperScan, the SR comes back.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) runs as a plain process on loopback with
TamperScan as one of its DICOM modalities and one of its DICOMweb servers. Two round trips:
C-STORE in and C-STORE back; STOW-RS in (Orthanc's DICOMweb client to our endpoint) and
STOW-RS back (to Orthanc's DICOMweb endpoint).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from sqlalchemy import select

from detector.lab.phantoms import write_phantoms
from scp import codes
from storage.models import Instance, Region, Series, Study, Verdict
from tamperscan.config import load_config
from tamperscan.service import Service
from tests.dicom_helpers import free_port, wait_for_port, write_config
from tests.test_report import content_items, dciodvfy_errors, named

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists(),
        reason="needs Debian packages orthanc and orthanc-dicomweb (.ci/system-deps)",
    ),
]


class Orthanc:
    def __init__(self, folder: Path, tamperscan_dicom: int, tamperscan_http: int) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "TamperScanTest",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomModalities": {"tamperscan": ["TAMPERSCAN", "127.0.0.1", tamperscan_dicom]},
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": {
                    "tamperscan": [f"http://127.0.0.1:{tamperscan_http}/dicom-web/"],
                },
            },
        }
        self.folder = folder
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.start()

    def start(self) -> None:
        """Start (or start again, same ports and storage) the Orthanc process."""
        self.log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            ["Orthanc", str(self.folder / "orthanc.json")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.http_port, process=self.process)
        wait_for_port(self.dicom_port, process=self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response

    def post(self, path: str, **kwargs: Any) -> Any:
        response = requests.post(self.url + path, timeout=60, **kwargs)
        assert response.ok, f"{path}: HTTP {response.status_code} {response.text[:300]}"
        return response.json()

    def upload(self, folder: Path) -> str:
        """Put a study into Orthanc as a modality would; returns Orthanc's study id."""
        study_id = ""
        for path in sorted(folder.glob("*.dcm")):
            study_id = self.post("/instances", data=path.read_bytes())["ParentStudy"]
        return study_id

    def sr_instances(self, study_id: str) -> list[pydicom.Dataset]:
        found = []
        for series in self.get(f"/studies/{study_id}/series"):
            if series["MainDicomTags"].get("Modality") != "SR":
                continue
            for instance in series["Instances"]:
                data = self.get(f"/instances/{instance}/file").content
                found.append(pydicom.dcmread(BytesIO(data)))
        return found

    def wait_for_srs(self, study_id: str, count: int, timeout: float = 40) -> list[pydicom.Dataset]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.sr_instances(study_id)
            if len(found) >= count:
                return found
            time.sleep(0.3)
        raise AssertionError(
            f"{count} SR(s) expected in Orthanc study {study_id}, found {len(found)}"
        )


@pytest.fixture
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    [folder] = write_phantoms("CT", studies=1, slices=4, out_dir=out, seed=5, size=128)
    return folder


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Any]:
    """Start Orthanc and TamperScan, each knowing the other's ports."""
    started: list[Any] = []

    def start(channel: str) -> tuple[Orthanc, Service]:
        scp_port, http_port = free_port(), free_port()
        orthanc = Orthanc(tmp_path / "orthanc", scp_port, http_port)
        started.append(orthanc)
        delivery: dict[str, Any] = {"backoff_initial_s": 0.5, "poll_interval_s": 0.2}
        path = write_config(
            tmp_path / "config.toml",
            scp_port,
            tmp_path / "data",
            admin={"port": http_port},
            delivery=delivery,
            reports={"key_images": True},
        )
        with path.open("a") as f:
            if channel == "dimse":
                f.write(
                    '\n[[delivery.dicom]]\nname = "orthanc"\nae_title = "ORTHANC"\n'
                    f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
                )
            else:
                f.write(
                    '\n[[delivery.dicomweb]]\nname = "orthanc-web"\n'
                    f'url = "{orthanc.url}/dicom-web"\n'
                )
        service = Service(load_config(path, environ={}))
        service.start()
        started.append(service)
        return orthanc, service

    yield start
    for thing in reversed(started):
        thing.stop()


def check_scored_sr(sr: pydicom.Dataset, phantom: Path) -> None:
    """The SR of a study scored with no trained model: the forensic checks decided."""
    source = pydicom.dcmread(next(phantom.glob("*.dcm")), stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.VerificationFlag == "UNVERIFIED"
    items = content_items(sr)
    value = named(items, codes.MANIPULATION_ASSESSMENT)[0].ConceptCodeSequence[0].CodeValue
    assert value != codes.NOT_SCORED.value  # a fresh install scores from its first study
    words = " ".join(str(e.value) for e in sr.iterall() if e.VR in ("LO", "SH", "UT", "ST"))
    assert "noise-consistency" in words


def test_orthanc_pushes_by_c_store_and_receives_the_sr(
    setup: Any, phantom_study: Path, tmp_path: Path
) -> None:
    orthanc, service = setup("dimse")
    study_id = orthanc.upload(phantom_study)
    orthanc.post(
        "/modalities/tamperscan/store", json={"Resources": [study_id], "Synchronous": True}
    )
    [sr] = orthanc.wait_for_srs(study_id, 1)
    check_scored_sr(sr, phantom_study)
    sr_file = tmp_path / "from-orthanc.dcm"
    sr.save_as(sr_file)
    assert dciodvfy_errors(sr_file) == []

    # The study is re-scored with a finding (as the detectors will record it): a new SR with
    # the region on its source image, superseding the first, and a key image, reach Orthanc.
    with service.db.session() as session:
        study = session.scalars(select(Study).where(Study.study_uid == sr.StudyInstanceUID)).one()
        old = session.scalars(select(Verdict).where(Verdict.is_current.is_(True))).one()
        old.is_current = False
        target = session.scalars(select(Instance).where(Instance.study_id == study.id)).first()
        assert target is not None
        verdict = Verdict(
            study_id=study.id,
            study_version=old.study_version,
            outcome="tampered",
            is_current=True,
            created_at=old.created_at,
            details={
                "false_alarm_rate": 0.01,
                "regions_checked": 12,
                "models": [{"name": "btd", "version": "ct-test-1"}],
            },
        )
        session.add(verdict)
        session.flush()
        session.add(
            Region(
                verdict_id=verdict.id,
                study_id=study.id,
                series_uid=session.get(Series, target.series_id).series_uid,  # type: ignore[union-attr]
                sop_instance_uid=target.sop_instance_uid,
                x=64,
                y=60,
                radius_px=8.0,
                source="proposal",
                scores={"btd": {"raw": 0.05, "p": 0.001, "model": "ct-test-1"}},
                p_value=0.001,
                flagged=True,
            )
        )
        target_uid = target.sop_instance_uid
    srs = orthanc.wait_for_srs(study_id, 2)
    [newer] = [s for s in srs if s.SOPInstanceUID != sr.SOPInstanceUID]
    assert (
        newer.PredecessorDocumentsSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == sr.SOPInstanceUID
    )
    items = content_items(newer)
    value = named(items, codes.MANIPULATION_ASSESSMENT)[0].ConceptCodeSequence[0].CodeValue
    assert value == codes.TAMPERED.value
    regions = [i for i in items if i.get("ValueType") == "SCOORD"]
    assert (
        regions
        and regions[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == target_uid
    )
    # The key image goes out after the SR in the same delivery: wait for it to land too.
    deadline = time.monotonic() + 30
    while True:
        modalities = {
            s["MainDicomTags"].get("Modality") for s in orthanc.get(f"/studies/{study_id}/series")
        }
        if {"CT", "SR", "OT"} <= modalities or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {"CT", "SR", "OT"} <= modalities  # the key image series arrived too


def test_orthanc_pushes_by_stow_rs_and_receives_the_sr_by_stow_rs(
    setup: Any, phantom_study: Path
) -> None:
    orthanc, service = setup("dicomweb")
    study_id = orthanc.upload(phantom_study)
    orthanc.post(
        "/dicom-web/servers/tamperscan/stow", json={"Resources": [study_id], "Synchronous": True}
    )
    with service.db.reading() as session:
        origins = set(session.scalars(select(Instance.calling_ae)).all())
        assert session.scalars(select(Instance)).all(), "nothing arrived over STOW-RS"
    assert origins == {None}  # STOW-RS, not DICOM
    [sr] = orthanc.wait_for_srs(study_id, 1)
    check_scored_sr(sr, phantom_study)
    # Orthanc's own DICOMweb answers for it (QIDO-RS), in the same study.
    found = orthanc.get(f"/dicom-web/studies/{sr.StudyInstanceUID}/series?Modality=SR")
    assert [s["0020000E"]["Value"][0] for s in found] == [sr.SeriesInstanceUID]
