"""The report a verdict becomes: a TID 1500 Measurement Report in a Comprehensive 3D SR.

IHE AI Results encodes findings this way, so a PACS files it in the patient's study and SR-aware
viewers show it. One SR per verdict, in the original study (its own series), with:

- a whole-study group (TID 1501): the verdict, the false-alarm rate it was decided at, the
  number of regions checked, the study score;
- one planar ROI group (TID 1410) per 3-D finding (flagged regions on adjacent slices are one
  finding, shown by its strongest region and labelled with its instance range; every checked
  region too when configured):
  the region on its source image (POINT, or CIRCLE when a radius is known), the finding
  (tampered / not tampered), each detector's raw score and calibrated probability (each with
  the detector's algorithm identification) and the fused score;
- a qualitative evaluations container with the usage statement ("not for diagnostic use")
  and, for a verdict that was not scored, the reason;
- a device observer whose UID is derived from the models used, so it changes with every model
  version; VerificationFlag UNVERIFIED; a Predecessor Documents Sequence naming the SR of the
  previous verdict of the same study, when there was one.

The UIDs of a verdict's report are fixed the first time it is built and stored on the verdict,
and the file is kept under ``<data_dir>/reports``: every (re)delivery sends the same object.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid

from scp import codes
from scp.report_input import (
    ModelId,
    RegionInput,
    ReportError,
    ReportInput,
    as_float,
    load_input,
    report_path,
)
from scp.settings import ReportSettings
from storage.db import Database
from storage.files import write_atomically
from storage.models import NOT_SCORED, Study, Verdict

log = logging.getLogger(__name__)

MANUFACTURER = "TamperScan project"
DEVICE_NAME = "TamperScan"
FUSION_ALGORITHM = "TamperScan fusion"
USAGE_TEXT = (
    "NOT FOR DIAGNOSTIC USE. Automated image-manipulation screening by TamperScan; "
    "unverified by a person. A positive result means the images may have been altered "
    "after acquisition and should be checked against the original."
)
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def software_version() -> str:
    try:
        return metadata.version("tamperscan")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def device_uid(models: Sequence[ModelId]) -> str:
    """A UID for the device observer that changes whenever any model (or our version) does."""
    parts = [f"{DEVICE_NAME} {software_version()}"]
    parts += [f"{m.name}|{m.version}|{m.uid or ''}" for m in models]
    return codes.derived_uid(*parts)


def _unitless(name: Code, value: float, algorithm: hd.sr.AlgorithmIdentification) -> Any:
    return hd.sr.Measurement(
        name=name, value=float(value), unit=codes.UNITLESS, algorithm_id=algorithm
    )


def _tracking(data: ReportInput, label: str, key: str) -> hd.sr.TrackingIdentifier:
    uid = codes.derived_uid(data.sr_sop_instance_uid, key)
    return hd.sr.TrackingIdentifier(uid=uid, identifier=label)


def _region_group(
    data: ReportInput, n: int, region: RegionInput, fusion: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    image = data.images[region.sop_instance_uid]
    source = hd.sr.SourceImageForRegion.from_source_image(image)
    if region.radius_px and region.radius_px > 0:
        graphic = np.array(
            [[region.x, region.y], [region.x + region.radius_px, region.y]], dtype=float
        )
        kind = hd.sr.GraphicTypeValues.CIRCLE
    else:
        graphic = np.array([[region.x, region.y]], dtype=float)
        kind = hd.sr.GraphicTypeValues.POINT
    measurements = []
    for detector in sorted(region.scores):
        values = region.scores[detector]
        algorithm = hd.sr.AlgorithmIdentification(
            name=detector, version=str(values.get("model") or "unknown")
        )
        if as_float(values.get("raw")) is not None:
            measurements.append(_unitless(codes.RAW_SCORE, float(values["raw"]), algorithm))
        if as_float(values.get("p")) is not None:
            measurements.append(
                _unitless(codes.CALIBRATED_PROBABILITY, float(values["p"]), algorithm)
            )
    if region.fused is not None:
        measurements.append(_unitless(codes.FUSED_SCORE, region.fused, fusion))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(
            data,
            f"finding {region.finding} ({region.slices})" if region.finding else f"region {n}",
            f"region-{region.region_id}",
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=kind, graphic_data=graphic, source_image=source
        ),
        finding_type=codes.MANIPULATION_DETECTION,
        algorithm_id=fusion,
        measurements=measurements or None,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.MANIPULATION_ASSESSMENT,
                codes.TAMPERED if region.flagged else codes.NOT_TAMPERED,
            )
        ],
    )


def build_sr(data: ReportInput, settings: ReportSettings) -> hd.sr.Comprehensive3DSR:
    """The SR for ``data``; its UIDs must already be set (they never change afterwards)."""
    if not (data.sr_series_uid and data.sr_sop_instance_uid):
        raise ValueError("the report's UIDs must be fixed before it is built")
    versions = ", ".join(f"{m.name} {m.version}" for m in data.models) or "no model"
    fusion = hd.sr.AlgorithmIdentification(
        name=FUSION_ALGORITHM,
        version=software_version(),
        parameters=[f"{m.name}={m.version}" for m in data.models] or None,
    )
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(data.models),
            name=DEVICE_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=versions[:64],
        ),
    )
    study_measurements = [
        _unitless(codes.REGIONS_CHECKED, data.regions_checked, fusion),
    ]
    if data.false_alarm_rate is not None:
        study_measurements.insert(
            0, _unitless(codes.FALSE_ALARM_RATE, data.false_alarm_rate, fusion)
        )
    if data.score is not None:
        study_measurements.append(_unitless(codes.VERDICT_SCORE, data.score, fusion))
    whole_study = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(data, "whole study", "study"),
        finding_type=codes.MANIPULATION_DETECTION,
        algorithm_id=fusion,
        measurements=study_measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.MANIPULATION_ASSESSMENT,
                codes.OUTCOME_CODES.get(data.outcome, codes.NOT_SCORED),
            )
        ],
    )
    groups: list[Any] = [whole_study]
    groups += [_region_group(data, n, r, fusion) for n, r in enumerate(data.regions, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.MANIPULATION_DETECTION,
        imaging_measurements=groups,
    )
    root = report[0]
    root.ContentSequence.append(_qualitative_container(data))
    when = data.created_at
    sr = hd.sr.Comprehensive3DSR(
        evidence=data.evidence,
        content=root,
        series_instance_uid=data.sr_series_uid,
        series_number=settings.series_number,
        sop_instance_uid=data.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=settings.institution_name or None,
        previous_versions=[data.predecessor] if data.predecessor is not None else None,
        series_description=f"TamperScan {data.outcome} - NOT FOR DIAGNOSTIC USE"[:64],
        manufacturer_model_name=DEVICE_NAME,
        software_versions=software_version(),
        coding_schemes=[codes.coding_scheme_identification()],
        content_date=when.date(),
        content_time=when.time().replace(tzinfo=None),
        series_date=when.date(),
        series_time=when.time().replace(tzinfo=None),
    )
    return sr


def _qualitative_container(data: ReportInput) -> hd.sr.ContainerContentItem:
    items: list[Any] = [
        hd.sr.TextContentItem(
            name=codes.USAGE_STATEMENT,
            value=USAGE_TEXT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    if data.outcome == NOT_SCORED:
        items.append(
            hd.sr.TextContentItem(
                name=codes.REASON_NOT_SCORED,
                value=data.reason or "no reason recorded",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


# -- files and fixed UIDs -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def fix_uids(db: Database, verdict_id: int) -> tuple[str, str]:
    """Give the verdict its report UIDs once (committed before any file is written)."""
    with db.session() as session:
        verdict = session.get(Verdict, verdict_id)
        if verdict is None:
            raise ReportError(f"no verdict {verdict_id}")
        if not verdict.sr_series_uid or not verdict.sr_sop_instance_uid:
            verdict.sr_series_uid = generate_uid()
            verdict.sr_sop_instance_uid = generate_uid()
        return verdict.sr_series_uid, verdict.sr_sop_instance_uid


def ensure_sr(
    db: Database, data_dir: Path, verdict_id: int, settings: ReportSettings
) -> tuple[ReportFile, ReportInput | None]:
    """The verdict's SR file, built on first use and kept; with its input when just built."""
    series_uid, sop_uid = fix_uids(db, verdict_id)
    reports_root = data_dir / "reports"
    with db.reading() as session:
        verdict = session.get(Verdict, verdict_id)
        assert verdict is not None
        study = session.get(Study, verdict.study_id)
        assert study is not None
        study_uid = study.study_uid
    sr_path = report_path(reports_root, study_uid, sop_uid)
    data: ReportInput | None = None
    if not sr_path.exists():
        data = load_input(
            db, data_dir / "instances", reports_root, verdict_id, settings.include_checked_regions
        )
        sr = build_sr(data, settings)
        write_atomically(sr_path, _encode(sr))
        log.info(
            "report built",
            extra={"verdict_id": verdict_id, "sop": sop_uid, "regions": len(data.regions)},
        )
    return ReportFile(sr_path, Comprehensive3DSRStorage, sop_uid, ExplicitVRLittleEndian), data


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
