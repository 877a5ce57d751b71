"""The SR (and key image) a verdict becomes: valid per dciodvfy, and it says what we decided."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from scp import codes
from scp.dispatch import ensure_report
from scp.report import device_uid
from scp.report_input import ModelId, load_input
from scp.settings import ReportSettings
from scp.validate import inspect_dataset
from storage.db import Database
from storage.instances import InstanceStore, Origin
from storage.models import Region, Verdict
from tests.dicom_helpers import ct_dataset

WHEN = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
MODELS = [
    {"name": "btd", "version": "ct-2026.05", "uid": "1.2.3.4.5"},
    {"name": "inpainting", "version": "ct-2026.04"},
]


def file_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_study(db: Database, data_dir: Path, count: int = 3, size: int = 64) -> list[Dataset]:
    """Real instances through the real ingest path; returns the datasets stored."""
    store = InstanceStore(db, data_dir)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    stored = []
    for n in range(1, count + 1):
        ds = ct_dataset(study_uid, series_uid, index=n, size=size)
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260504", "101010", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC1", ""
        ds.ImagePositionPatient = [0.0, 0.0, float(n)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.FrameOfReferenceUID = frame_uid
        data = file_bytes(ds)
        meta = inspect_dataset(ds, ds.file_meta.TransferSyntaxUID)
        store.store(data, meta, Origin(channel="test"))
        stored.append(ds)
    return stored


def add_verdict(
    db: Database,
    study_uid: str,
    outcome: str,
    regions: list[dict[str, object]] = (),  # type: ignore[assignment]
    reason: str | None = None,
    details: dict[str, object] | None = None,
    version: int = 1,
) -> int:
    """A verdict (made current) with its regions, as the worker records them."""
    from sqlalchemy import select, update

    from storage.models import Study

    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        session.execute(
            update(Verdict).where(Verdict.study_id == study.id).values(is_current=False)
        )
        verdict = Verdict(
            study_id=study.id,
            study_version=version,
            outcome=outcome,
            reason=reason,
            score=details.get("score") if details else None,  # type: ignore[arg-type]
            is_current=True,
            created_at=WHEN,
            details=details,
        )
        session.add(verdict)
        session.flush()
        for spec in regions:
            session.add(Region(verdict_id=verdict.id, study_id=study.id, source="proposal", **spec))
        return verdict.id


def flagged_regions(datasets: list[Dataset]) -> list[dict[str, object]]:
    first, second = datasets[0], datasets[-1]
    return [
        {
            "series_uid": first.SeriesInstanceUID,
            "sop_instance_uid": first.SOPInstanceUID,
            "x": 20,
            "y": 31,
            "radius_px": 6.5,
            "scores": {
                "btd": {"raw": 0.0314, "p": 0.0021, "model": "ct-2026.05"},
                "inpainting": {"raw": 12.5, "p": 0.0105, "model": "ct-2026.04"},
            },
            "p_value": 0.0004,
            "flagged": True,
        },
        {
            "series_uid": second.SeriesInstanceUID,
            "sop_instance_uid": second.SOPInstanceUID,
            "x": 40,
            "y": 12,
            "radius_px": None,
            "scores": {"btd": {"raw": 0.0299, "p": 0.004, "model": "ct-2026.05"}},
            "p_value": 0.003,
            "flagged": True,
        },
        {
            "series_uid": second.SeriesInstanceUID,
            "sop_instance_uid": second.SOPInstanceUID,
            "x": 5,
            "y": 5,
            "radius_px": 4.0,
            "scores": {"btd": {"raw": 0.01, "p": 0.61, "model": "ct-2026.05"}},
            "p_value": 0.61,
            "flagged": False,
        },
    ]


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (warnings are allowed)."""
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'data' / 'tamperscan.db'}")
    database.migrate()
    return database


def content_items(ds: Dataset) -> list[Dataset]:
    """Every content item of the SR tree, depth first."""
    found: list[Dataset] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            found.append(item)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def named(items: list[Dataset], code: object) -> list[Dataset]:
    value = code.value  # type: ignore[attr-defined]
    return [
        i
        for i in items
        if "ConceptNameCodeSequence" in i
        and i.ConceptNameCodeSequence[0].CodeValue == value
        and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == codes.SCHEME
    ]


def test_tampered_report_carries_verdict_regions_and_models(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir)
    details = {"false_alarm_rate": 0.01, "regions_checked": 57, "models": MODELS, "score": 0.0004}
    verdict_id = add_verdict(
        db, datasets[0].StudyInstanceUID, "tampered", flagged_regions(datasets), details=details
    )
    settings = ReportSettings(key_images=True)
    files = ensure_report(db, data_dir, verdict_id, settings)
    assert len(files) == 3  # SR + a key image per flagged region
    for f in files:
        assert f.path.is_file() and f.path.is_relative_to(data_dir / "reports")
        assert dciodvfy_errors(f.path) == [], f.path

    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(files[0].path))
    assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != datasets[0].SeriesInstanceUID
    assert sr.PatientID == "TEST-0001"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.SCHEME
    with db.reading() as session:
        verdict = session.get(Verdict, verdict_id)
        assert verdict is not None
        assert (verdict.sr_series_uid, verdict.sr_sop_instance_uid) == (
            sr.SeriesInstanceUID,
            sr.SOPInstanceUID,
        )

    items = content_items(sr)
    # Whole study: tampered, at 1% false alarm rate, 57 regions checked.
    study_group = sr.content.get_planar_roi_measurement_groups()
    assert len(study_group) == 2  # only flagged regions by default
    assessments = named(items, codes.MANIPULATION_ASSESSMENT)
    values = [a.ConceptCodeSequence[0].CodeValue for a in assessments]
    assert values == [codes.TAMPERED.value, codes.TAMPERED.value, codes.TAMPERED.value]
    far = named(items, codes.FALSE_ALARM_RATE)[0].MeasuredValueSequence[0]
    assert float(far.NumericValue) == pytest.approx(0.01)
    checked = named(items, codes.REGIONS_CHECKED)[0].MeasuredValueSequence[0]
    assert int(float(checked.NumericValue)) == 57

    # Regions on the right instances, POINT or CIRCLE, with every detector's numbers.
    regions = {}
    for group in study_group:
        region = group.roi
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        regions[ref.ReferencedSOPInstanceUID] = (region.GraphicType, list(region.GraphicData))
    assert regions[datasets[0].SOPInstanceUID] == ("CIRCLE", [20.0, 31.0, 26.5, 31.0])
    assert regions[datasets[-1].SOPInstanceUID] == ("POINT", [40.0, 12.0])
    raws = sorted(
        float(i.MeasuredValueSequence[0].NumericValue) for i in named(items, codes.RAW_SCORE)
    )
    assert raws == pytest.approx([0.0299, 0.0314, 12.5])
    probabilities = named(items, codes.CALIBRATED_PROBABILITY)
    assert len(probabilities) == 3
    fused = sorted(
        float(i.MeasuredValueSequence[0].NumericValue) for i in named(items, codes.FUSED_SCORE)
    )
    assert fused == pytest.approx([0.0004, 0.003])

    # Algorithm identification: every model version is named in the SR.
    algorithm_values = {
        (i.ConceptNameCodeSequence[0].CodeMeaning, str(i.get("TextValue", "")))
        for i in items
        if "ConceptNameCodeSequence" in i
        and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
    }
    assert ("Algorithm Name", "btd") in algorithm_values
    assert ("Algorithm Version", "ct-2026.05") in algorithm_values
    assert ("Algorithm Name", "inpainting") in algorithm_values
    assert ("Algorithm Version", "ct-2026.04") in algorithm_values
    usage = named(items, codes.USAGE_STATEMENT)[0].TextValue
    assert "NOT FOR DIAGNOSTIC USE" in usage
    observer_uid = [
        i.UID for i in items if "UID" in i and i.ConceptNameCodeSequence[0].CodeValue == "121012"
    ]
    assert observer_uid == [
        device_uid([ModelId(**m) for m in sorted(MODELS, key=lambda m: m["name"])])
    ]

    # Evidence lists the study's instances; the key image is a burned-in SC in the same study.
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {d.SOPInstanceUID for d in datasets}
    key = pydicom.dcmread(files[1].path)
    assert key.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert key.BurnedInAnnotation == "YES" and key.SamplesPerPixel == 3

    # Built once: a second call reuses the same files and UIDs.
    again = ensure_report(db, data_dir, verdict_id, settings)
    assert [f.path for f in again] == [f.path for f in files]


def test_device_observer_uid_changes_with_model_version() -> None:
    a = device_uid([ModelId("btd", "1")])
    assert a == device_uid([ModelId("btd", "1")])
    assert a != device_uid([ModelId("btd", "2")])
    assert a != device_uid([ModelId("btd", "1"), ModelId("inpainting", "1")])


def test_checked_regions_are_listed_when_configured(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir)
    verdict_id = add_verdict(
        db, datasets[0].StudyInstanceUID, "suspicious", flagged_regions(datasets)
    )
    files = ensure_report(db, data_dir, verdict_id, ReportSettings(include_checked_regions=True))
    assert dciodvfy_errors(files[0].path) == []
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(files[0].path))
    values = [
        i.ConceptCodeSequence[0].CodeValue
        for i in named(content_items(sr), codes.MANIPULATION_ASSESSMENT)
    ]
    assert values == [
        codes.SUSPICIOUS.value,
        codes.TAMPERED.value,
        codes.TAMPERED.value,
        codes.NOT_TAMPERED.value,
    ]
    # Regions checked derived from the Region rows when details do not say.
    checked = named(content_items(sr), codes.REGIONS_CHECKED)[0].MeasuredValueSequence[0]
    assert int(float(checked.NumericValue)) == 3


def test_not_scored_report_says_why_and_rescoring_supersedes(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir, count=2)
    study_uid = datasets[0].StudyInstanceUID
    first = add_verdict(db, study_uid, "not_scored", reason="no model for CT")
    first_files = ensure_report(db, data_dir, first, ReportSettings())
    assert dciodvfy_errors(first_files[0].path) == []
    sr = pydicom.dcmread(first_files[0].path)
    items = content_items(sr)
    assessment = named(items, codes.MANIPULATION_ASSESSMENT)[0]
    assert assessment.ConceptCodeSequence[0].CodeValue == codes.NOT_SCORED.value
    assert named(items, codes.REASON_NOT_SCORED)[0].TextValue == "no model for CT"
    assert "PredecessorDocumentsSequence" not in sr

    second = add_verdict(
        db,
        study_uid,
        "clean",
        details={"false_alarm_rate": 0.05, "regions_checked": 10, "models": MODELS[:1]},
        version=2,
    )
    second_files = ensure_report(db, data_dir, second, ReportSettings())
    assert dciodvfy_errors(second_files[0].path) == []
    newer = pydicom.dcmread(second_files[0].path)
    predecessor = newer.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == study_uid
    ref = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert newer.SOPInstanceUID != sr.SOPInstanceUID


def test_region_on_an_instance_outside_the_study_is_an_error(db: Database, tmp_path: Path) -> None:
    from scp.report_input import ReportError

    data_dir = tmp_path / "data"
    datasets = store_study(db, data_dir, count=1)
    bad = flagged_regions(datasets)[:1]
    bad[0]["sop_instance_uid"] = "1.2.3.999"
    verdict_id = add_verdict(db, datasets[0].StudyInstanceUID, "tampered", bad)
    with pytest.raises(ReportError, match="not in the study"):
        load_input(db, data_dir / "instances", data_dir / "reports", verdict_id, False)
